"""The control CLI's mistakes a person sees: timestamps without an offset, no broker."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from refstream.cli import main
from refstream.commands.payouts import default_run_id, parse_ts


def test_timestamps_are_iso_8601_with_an_offset_or_unix_seconds() -> None:
    assert parse_ts("2026-02-15T00:00:00+00:00") == 1771113600
    assert parse_ts("2026-02-15T01:00:00+01:00") == 1771113600
    assert parse_ts("2026-02-15T00:00:00Z") == 1771113600
    assert parse_ts("1771113600") == 1771113600
    # the run id follows --as-of, so the same command twice is the same run
    assert default_run_id(parse_ts("2026-02-15T00:00:00Z")) == default_run_id(1771113600)


@pytest.mark.parametrize("text, hint", [
    ("2026-02-15", "2026-02-15T00:00:00+00:00"),  # no offset: which midnight?
    ("next tuesday", "ISO 8601 with an offset"),
])
def test_a_timestamp_refstream_cannot_read_is_named_with_the_fix(text: str, hint: str) -> None:
    result = CliRunner().invoke(main, ["payouts", "run", "--as-of", text])
    assert result.exit_code == 2
    assert hint in result.output


def test_payouts_run_without_a_broker_says_what_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    result = CliRunner().invoke(main, ["payouts", "run", "--as-of", "1771113600"])
    assert result.exit_code == 1
    assert "was not appended" in result.output and "refstream kafka up" in result.output


def test_resolve_needs_a_verdict_and_a_reason() -> None:
    result = CliRunner().invoke(main, ["review", "resolve", "case_1", "--reason", "ok"])
    assert result.exit_code == 2 and "--approve or --reject" in result.output
    result = CliRunner().invoke(main, ["review", "resolve", "case_1", "--approve", "--reason", "  "])
    assert result.exit_code == 2 and "--reason is empty" in result.output
