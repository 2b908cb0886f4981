"""Exports are inflated with ISA-L (`isal.igzip`): the same records as the stdlib's gzip,
and a damaged file fails with the message it failed with when zlib inflated it."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from projections.logsource import FileSource, SourceError, open_export
from tests.replay.scenario import records, write_export


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "log.jsonl"
    write_export(path, records())
    return path


def _stdlib_failure(data: bytes) -> str:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as fh:
            while fh.read(1 << 20):
                pass
    except (gzip.BadGzipFile, EOFError) as exc:
        return str(exc)
    raise AssertionError("the stdlib read the damaged data")


def test_an_export_inflates_to_the_bytes_the_stdlib_gives(plain, tmp_path):
    path = tmp_path / "log.jsonl.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    with open_export(path) as fh:
        assert fh.read() == plain.read_bytes()
    assert [r for b in FileSource(path, in_child=False) for r in b] == [
        r for b in FileSource(plain, in_child=False) for r in b
    ]


@pytest.mark.parametrize("damage", ["crc", "length", "cut"])
def test_a_damaged_gzip_export_fails_with_the_stdlibs_words(plain, tmp_path, damage):
    data = bytearray(gzip.compress(plain.read_bytes()))
    if damage == "crc":
        data[-8] ^= 0x01  # the trailer's CRC-32
    elif damage == "length":
        data[-1] ^= 0x01  # the trailer's length
    else:
        data = data[:-40]
    path = tmp_path / "damaged.jsonl.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError) as caught:
        list(FileSource(path, in_child=False))
    message = str(caught.value)
    assert "the gzip data is damaged or cut short near line" in message
    assert f"({_stdlib_failure(bytes(data))})" in message
