"""Mistakes an analyst can make get one clear message (problem and fix), exit 1, no traceback."""

from __future__ import annotations

import gzip
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from refstream.cli import main
from tests.replay.scenario import CURRENT_RULES, records, write_export


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, [*args, "--no-progress"], env=env)


def assert_clear_failure(result: Result, *phrases: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # click's error exit, not a crash
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output, result.output


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(CURRENT_RULES)
    return path


def test_a_missing_file_names_the_path_and_how_to_make_one(rules, tmp_path):
    missing = tmp_path / "nope.jsonl.gz"
    result = run("replay", "--rules", str(rules), "--source", str(missing))
    assert_clear_failure(result, str(missing), "no such file", "refstream export")


def test_a_file_that_is_not_an_export_is_refused(rules, tmp_path):
    other = tmp_path / "notes.jsonl"
    other.write_text('{"hello": "world"}\n')
    assert_clear_failure(run("replay", "--rules", str(rules), "--source", str(other)),
                         "not a refstream export header")


def test_a_cut_short_gzip_export_is_named_as_damaged(rules, tmp_path):
    full = tmp_path / "full.jsonl"
    write_export(full, records())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(full.read_bytes())[:-40])
    assert_clear_failure(run("replay", "--rules", str(rules), "--source", str(cut)), "damaged or cut short")


def test_a_damaged_line_is_named_by_its_number(rules, tmp_path):
    path = tmp_path / "log.jsonl"
    write_export(path, records())
    lines = path.read_bytes().splitlines()
    lines[3] = lines[3][:20]
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert_clear_failure(run("replay", "--rules", str(rules), "--source", str(path)), "line 4")


def test_a_broker_that_cannot_be_reached_fails_within_a_bounded_time(rules):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"REFSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "REFSTREAM_ENV": "sandbox"}
    started = time.monotonic()
    result = run("replay", "--rules", str(rules), env=env)
    assert_clear_failure(result, f"Kafka at 127.0.0.1:{port} refused the connection", "refstream kafka up",
                         "--source FILE")
    assert time.monotonic() - started < 30
    assert_clear_failure(run("export", "--out", "x.jsonl", env=env), "Cannot export the log: Kafka at")


def test_a_rules_mistake_is_explained_with_its_line_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(CURRENT_RULES.replace("reward_percent = 25", "reward_percent = 250"))
    log = tmp_path / "log.jsonl"
    write_export(log, records())
    result = run("replay", "--rules", str(bad), "--source", str(log))
    assert_clear_failure(result, f"{bad}:5 [campaign.reward_percent]", "refstream rules check")
    # the compared rules are checked the same way
    good = tmp_path / "good.toml"
    good.write_text(CURRENT_RULES)
    absent = tmp_path / "absent.toml"
    result = run("replay", "--rules", str(good), "--compare", str(absent), "--source", str(log))
    assert_clear_failure(result, str(absent), "cannot read the rules file")


def test_a_time_without_offset_is_a_usage_error_with_the_fix(rules, tmp_path):
    log = tmp_path / "log.jsonl"
    write_export(log, records())
    result = run("replay", "--rules", str(rules), "--source", str(log), "--as-of", "2026-02-15T00:00")
    assert result.exit_code == 2
    assert "no UTC offset" in result.output and "2026-02-15T00:00Z" in result.output


def test_an_output_folder_that_does_not_exist_is_named_before_folding(rules, tmp_path):
    log = tmp_path / "log.jsonl"
    write_export(log, records())
    target = tmp_path / "missing" / "report.csv"
    result = run("replay", "--rules", str(rules), "--source", str(log), "--out", str(target))
    assert_clear_failure(result, f"the folder {target.parent} does not exist", "--out")
    result = run("replay", "--rules", str(rules), "--source", str(log), "--html", str(target))
    assert_clear_failure(result, "--html")
