"""`refstream replay --jobs N` gives byte for byte the report of `--jobs 1`
(projections/parallel.py): tables, CSV and JSON, with and without --compare, on the
hand-computed scenario and on a generated programme log with monthly payout runs."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.gen import Log
from projections.logsource import LogRecord, encode_record, export_header
from refstream.cli import main
from schemas.topics import Topics
from tests.replay.scenario import CURRENT_RULES, PROPOSED_RULES, records, write_export


def replay(*args: str) -> bytes:
    result = CliRunner().invoke(main, ["replay", "--no-progress", *args])
    assert result.exit_code == 0, result.output
    return result.stdout_bytes


def programme_export(path: Path, customers: int) -> None:
    """The benchmark's generated log (bench/gen.py) as an export file."""
    log = Log(customers=customers, referrers=customers // 10)
    offsets = {"stripe-events": 0, "control": 0}
    with gzip.open(path, "wb") as fh:
        fh.write(export_header(Topics("sandbox")) + b"\n")
        for n, (source, key, raw) in enumerate(log.iter_log()):
            kind = "stripe-events" if source == "stripe" else "control"
            fh.write(encode_record(LogRecord(kind, 0, offsets[kind], n, key.encode(), (), raw)) + b"\n")
            offsets[kind] += 1


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("parallel")
    paths = {"scenario": tmp / "scenario.jsonl", "programme": tmp / "programme.jsonl.gz",
             "current": tmp / "current.toml", "proposed": tmp / "proposed.toml"}
    write_export(paths["scenario"], records())
    programme_export(paths["programme"], 1200)
    paths["current"].write_text(CURRENT_RULES)
    paths["proposed"].write_text(PROPOSED_RULES)
    return paths


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_jobs_2_gives_the_report_of_jobs_1_in_every_format(logs: dict[str, Path], fmt: str) -> None:
    args = ["--rules", str(logs["proposed"]), "--compare", str(logs["current"]), "--source",
            str(logs["scenario"]), "--format", fmt, "--as-of", "2026-09-30T00:00:00Z"]
    one = replay(*args, "--jobs", "1")
    assert one.count(b"\n") > 3
    assert replay(*args, "--jobs", "2") == one


def test_jobs_2_and_3_give_the_report_of_jobs_1_on_a_programme_log(logs: dict[str, Path]) -> None:
    args = ["--rules", str(logs["proposed"]), "--compare", str(logs["current"]), "--source",
            str(logs["programme"]), "--format", "json"]
    one = replay(*args, "--jobs", "1")
    assert one.count(b'"ucc"') > 50
    assert replay(*args, "--jobs", "2") == one
    assert replay(*args, "--jobs", "3") == one


def test_jobs_without_compare_and_with_the_default_as_of(logs: dict[str, Path]) -> None:
    args = ["--rules", str(logs["current"]), "--source", str(logs["programme"]), "--format", "csv"]
    assert replay(*args, "--jobs", "2") == replay(*args, "--jobs", "1")
