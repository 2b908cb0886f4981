"""Replay from the real broker: read-only, and the same answer as replaying an export."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from refstream.cli import main
from schemas.topics import Topics
from tests.replay.kafkalog import commit_as_group, committed_offsets, create_topics, end_offsets, write
from tests.replay.scenario import CURRENT_RULES, PROPOSED_RULES, records


def cli(bootstrap: str, topics: Topics, *args: str) -> str:
    result = CliRunner().invoke(
        main, [*args, "--no-progress", "--topic-prefix", topics.prefix],
        env={"REFSTREAM_KAFKA_BOOTSTRAP": bootstrap, "REFSTREAM_ENV": topics.env},
    )
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def scenario(bootstrap: str, topics: Topics, tmp_path: Path) -> dict[str, Path]:
    asyncio.run(create_topics(bootstrap, topics))
    asyncio.run(write(bootstrap, topics, records()))
    rules = {"current": tmp_path / "current.toml", "proposed": tmp_path / "proposed.toml"}
    rules["current"].write_text(CURRENT_RULES)
    rules["proposed"].write_text(PROPOSED_RULES)
    return rules


def test_replay_and_export_leave_every_group_offset_and_end_offset_unchanged(bootstrap, topics, scenario,
                                                                             tmp_path):
    # A live worker group has consumed part of the log; replay must not move it or join it.
    group = f"{topics.prefix}-worker"
    asyncio.run(commit_as_group(bootstrap, group, topics.stripe_events, {0: 1, 1: 0, 2: 1}))
    groups_before = asyncio.run(committed_offsets(bootstrap, topics.prefix))
    ends_before = asyncio.run(end_offsets(bootstrap, prefix=topics.prefix))
    assert groups_before[group]

    out = cli(bootstrap, topics, "replay", "--rules", str(scenario["proposed"]),
              "--compare", str(scenario["current"]), "--format", "json")
    cli(bootstrap, topics, "export", "--out", str(tmp_path / "log.jsonl.gz"))

    assert asyncio.run(committed_offsets(bootstrap, topics.prefix)) == groups_before  # none moved or added
    assert asyncio.run(end_offsets(bootstrap, prefix=topics.prefix)) == ends_before  # nothing written
    x = orjson.loads(out)["rows"][0]
    assert (x["ucc"], x["earned"], x["compare_earned"]) == ("ucc_X", 6500, 9000)


def test_export_then_file_replay_equals_kafka_replay(bootstrap, topics, scenario, tmp_path):
    export = tmp_path / "log.jsonl.gz"
    cli(bootstrap, topics, "export", "--out", str(export))
    outputs = {}
    for fmt in ("json", "csv", "table"):
        args = ["replay", "--rules", str(scenario["proposed"]), "--compare", str(scenario["current"]),
                "--as-of", "2026-09-30T00:00:00Z", "--format", fmt]
        from_kafka = cli(bootstrap, topics, *args)
        from_file = cli(bootstrap, topics, *args, "--source", str(export))
        assert from_file == from_kafka
        outputs[fmt] = from_kafka
    doc = orjson.loads(outputs["json"])
    assert doc["events"] == {"stripe": 8, "control": 1, "skipped": 0}
    assert doc["rows"][0]["delta_net"] == 5000 - 7750  # the hand-computed figure (test_changed_rules)


def test_an_export_replayed_twice_gives_byte_identical_csv_and_json(bootstrap, topics, scenario, tmp_path):
    export = tmp_path / "log.jsonl.gz"
    cli(bootstrap, topics, "export", "--out", str(export))
    for fmt in ("csv", "json"):
        outs = []
        for run in (1, 2):
            out = tmp_path / f"report-{run}.{fmt}"
            cli(bootstrap, topics, "replay", "--rules", str(scenario["proposed"]), "--compare",
                str(scenario["current"]), "--source", str(export), "--format", fmt, "--out", str(out))
            outs.append(out.read_bytes())
        assert outs[0] == outs[1]
        assert b"ucc_X" in outs[0]
