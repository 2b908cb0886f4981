"""A closed pipe ends every command quietly, as it ends Unix tools: `refstream export | head -1`
prints the first line and nothing else, with exit status 141 and no message on stderr."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from refstream.cli import CLOSED_PIPE_EXIT
from tests.replay.kafkalog import create_topics, stripe_record, write
from tests.replay.scenario import records, write_export

ROOT = Path(__file__).resolve().parents[1]
REFSTREAM = str(Path(sys.executable).parent / "refstream")


def into_closed_pipe(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Runs the command with stdout on a pipe whose reader is already gone."""
    read, write_end = os.pipe()
    os.close(read)
    try:
        return subprocess.run([REFSTREAM, *args], stdout=write_end, stderr=subprocess.PIPE, env=env, cwd=cwd,
                              stdin=subprocess.DEVNULL, timeout=120)
    finally:
        os.close(write_end)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "REFSTREAM_ENV": "sandbox", "REFSTREAM_DATA_DIR": str(tmp_path / "data"), **extra}
    env.pop("REFSTREAM_RULES", None)
    return env


def test_commands_without_a_broker_end_quietly_on_a_closed_pipe(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    write_export(log, records())
    env = _env(tmp_path, REFSTREAM_KAFKA_BOOTSTRAP="127.0.0.1:1")
    for args in (
        ["--help"],
        ["review", "--help"],
        ["rules", "check", str(ROOT / "examples" / "rules.toml")],
        ["replay", "--rules", str(ROOT / "examples" / "rules.toml"), "--source", str(log), "--no-progress"],
        ["kafka", "down", "--data-dir", str(tmp_path / "kafka")],
    ):
        result = into_closed_pipe(args, env, tmp_path)
        assert (result.returncode, result.stderr.decode()) == (CLOSED_PIPE_EXIT, ""), args


@pytest.mark.kafka
def test_review_list_into_a_closed_pipe_ends_quietly(bootstrap: str, topic_prefix: str,
                                                     tmp_path: Path) -> None:
    from refstream.commands.topics import create_topics as create_every_topic

    asyncio.run(create_every_topic(bootstrap, ["sandbox"], prefix=topic_prefix, partitions=1))
    env = _env(tmp_path, REFSTREAM_KAFKA_BOOTSTRAP=bootstrap)
    result = into_closed_pipe(["review", "list", "--topic-prefix", topic_prefix], env, tmp_path)
    assert (result.returncode, result.stderr.decode()) == (CLOSED_PIPE_EXIT, "")


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.kafka
def test_export_piped_into_head_prints_the_first_line_and_stops(bootstrap, topics, tmp_path) -> None:
    # several megabytes: far more than a pipe holds, so export is still writing when head exits
    body = b'{"id": "evt_%d", "object": "event", "type": "customer.created", "pad": "' + b"x" * 1000 + b'"}'
    stored = [stripe_record(body.replace(b"%d", str(i).encode()), customer=f"cus_{i % 50}",
                            event_id=f"evt_{i}", event_type="customer.created",
                            timestamp_ms=1_767_225_600_000 + i)
              for i in range(4000)]
    asyncio.run(create_topics(bootstrap, topics))
    asyncio.run(write(bootstrap, topics, stored))
    marker = f"REFSTREAM_TEST_RUN={uuid.uuid4().hex}"
    env = _env(tmp_path, REFSTREAM_KAFKA_BOOTSTRAP=bootstrap, **dict([marker.split("=")]))
    export = subprocess.Popen([REFSTREAM, "export", "--topic-prefix", topics.prefix, "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    assert export.stdout is not None and export.stderr is not None
    head = subprocess.run(["head", "-1"], stdin=export.stdout, capture_output=True, timeout=120)
    export.stdout.close()
    stderr = export.stderr.read().decode()
    assert export.wait(timeout=60) == CLOSED_PIPE_EXIT, stderr
    assert head.stdout.startswith(b'{"format":"refstream-export"') and head.stdout.count(b"\n") == 1
    assert stderr == ""  # no "Broken pipe", no "Free some space", no traceback
    assert _processes_with(marker) == []  # its reader process stopped with it
