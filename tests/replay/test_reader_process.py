"""Sources read in a child process by default: the same records, header and errors as
reading in the caller's process, and a replay that stops early leaves no reader behind."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from projections.logsource import FileSource, SourceError
from tests.replay.scenario import records, write_export


@pytest.fixture
def export_gz(tmp_path: Path) -> Path:
    plain = tmp_path / "log.jsonl"
    write_export(plain, records())
    path = tmp_path / "log.jsonl.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    return path


@pytest.mark.parametrize("headers", [True, False])
def test_a_file_read_in_a_child_process_gives_the_records_and_header_read_here(export_gz, headers):
    there = FileSource(export_gz, headers=headers)
    here = FileSource(export_gz, headers=headers, in_child=False)
    got = [rec for batch in there for rec in batch]
    assert got == [rec for batch in here for rec in batch]
    assert len(got) == len(records())
    assert there.header == here.header is not None


def test_what_replay_prepares_in_the_reader_process_is_what_it_prepares_here(export_gz):
    # replay parses in its own process; the reader sends each record's value (markers left out)
    from projections.replay import ControlValue, prepare

    there = FileSource(export_gz, headers=False)
    got = list(there.prepared(prepare))
    assert got == list(FileSource(export_gz, headers=False, in_child=False).prepared(prepare))
    assert got == [prepare(batch) for batch in FileSource(export_gz, in_child=False)]
    assert sum(count for count, _ in got) == len(records())
    assert any(type(v) is ControlValue for _, values in got for v in values)
    assert there.header is not None


def test_a_damaged_line_read_in_a_child_process_fails_with_the_same_message(tmp_path):
    path = tmp_path / "log.jsonl"
    write_export(path, records())
    lines = path.read_bytes().splitlines()
    lines[3] = lines[3][:20]
    path.write_bytes(b"\n".join(lines) + b"\n")
    messages = []
    for in_child in (True, False):
        with pytest.raises(SourceError) as caught:
            list(FileSource(path, in_child=in_child))
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert "line 4" in messages[0]


def test_stopping_early_stops_the_reader_process(export_gz, monkeypatch):
    import subprocess

    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        proc = popen(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    batches = iter(FileSource(export_gz))
    assert next(batches)
    batches.close()  # as when the fold fails or the analyst presses Ctrl-C
    assert len(started) == 1
    assert started[0].poll() is not None  # waited for: no reader left running
