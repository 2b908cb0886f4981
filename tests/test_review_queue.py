"""`refstream review list` reads the review queue from the review-cases topic (docs/cli.md#review):
how a case's records fold into one line, what the columns say, and the message when the topic
is missing. The Kafka side is tested in tests/pipeline/test_review_flow.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from refstream.cli import main
from refstream.commands import review
from schemas import commands, control
from schemas.commands import CaseState, case_state_id
from schemas.topics import Topics

T = Topics("sandbox", "refstream")
DAY = 86400
NOW = int(time.time())


def state(case_id: str, status: str, opened_at: int, *, decided_at: int | None = None,
          reason: str | None = None) -> tuple[str, bytes]:
    record = CaseState(case_state_id(case_id, status), case_id, commands.LATE_ATTRIBUTION, "ucc_R", "user:r",
                       status, {"customer_id": "cus_R"}, opened_at, decided_at, reason)
    return T.review_cases, commands.encode(record)


def decision(case_id: str, approve: bool) -> tuple[str, bytes]:
    return T.control, control.encode(control.ReviewDecision(case_id, "ucc_R", approve, "checked", NOW))


def test_a_case_that_ended_is_not_open_whichever_of_its_records_comes_first() -> None:
    opened, ended = state("c1", "open", NOW - DAY), state("c1", "approved", NOW - DAY, decided_at=NOW)
    for records in ([opened, ended], [ended, opened]):
        queue = review.queue_of(records, T)
        assert queue.open == [] and queue.status("c1") == "approved"


def test_an_appended_decision_takes_the_case_off_the_open_list_before_the_worker_applies_it() -> None:
    queue = review.queue_of([state("c1", "open", NOW - DAY), state("c2", "open", NOW - 2 * DAY),
                             decision("c1", False)], T)
    assert [c.case_id for c in queue.open] == ["c2"]
    assert queue.status("c1") == "rejecting"
    assert [c.case_id for c in queue.all] == ["c2", "c1"]  # oldest first


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> review.Queue:
    q = review.queue_of([
        state("case_old", "open", NOW - 40 * DAY - 60),
        state("case_new", "open", NOW - 5 * 3600 - 60),
        state("case_linked", "open", NOW - 3 * DAY), state("case_linked", "linked", NOW - 3 * DAY,
                                                           decided_at=NOW - DAY, reason="linked now"),
        state("case_pending", "open", NOW - 2 * DAY), decision("case_pending", True),
    ], T)

    async def load(bootstrap: str, t: Topics) -> review.Queue:
        return q

    monkeypatch.setattr(review, "load_queue", load)
    return q


def test_list_shows_each_open_case_with_its_age(queue: review.Queue) -> None:
    result = CliRunner().invoke(main, ["review", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["case", "kind", "ucc", "referral", "opened", "(UTC)", "age", "status"]
    assert [line.split()[0] for line in lines[1:3]] == ["case_old", "case_new"]  # oldest first
    assert lines[1].split()[-3:] == ["40", "d", "open"] and lines[2].split()[-3:] == ["5", "h", "open"]
    assert "2 open." in result.output


def test_list_all_shows_how_each_case_ended(queue: review.Queue) -> None:
    result = CliRunner().invoke(main, ["review", "list", "--all"])
    assert result.exit_code == 0, result.output
    status = {line.split()[0]: line.split()[-1] for line in result.output.splitlines()[1:]}
    assert status == {"case_old": "open", "case_new": "open", "case_linked": "linked",
                      "case_pending": "approving"}
    docs = [orjson.loads(line) for line in
            CliRunner().invoke(main, ["review", "list", "--all", "--json"]).output.splitlines()]
    linked = next(d for d in docs if d["case_id"] == "case_linked")
    assert (linked["status"], linked["decision"], linked["reason"]) == ("linked", None, "linked now")
    pending = next(d for d in docs if d["case_id"] == "case_pending")
    assert (pending["status"], pending["decision"], pending["decided_at"]) == ("approving", "approved", None)
    assert pending["details"] == {"customer_id": "cus_R"} and pending["kind"] == "late_attribution"


def test_a_missing_review_cases_topic_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    async def load(bootstrap: str, t: Topics) -> review.Queue:
        raise review.NoCasesTopic(t.review_cases)

    monkeypatch.setattr(review, "load_queue", load)
    for args in (["review", "list"], ["review", "resolve", "c1", "--approve", "--reason", "ok"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1
        assert "has no topic refstream.review-cases.sandbox" in result.output, result.output
        assert "topics create" in result.output


@pytest.mark.kafka
def test_a_worker_without_the_review_cases_topic_refuses_to_start_and_names_the_fix(
    bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """Topics created before the review-cases topic existed: the worker would open cases it
    cannot publish (and hold back every command of that partition), so it does not start."""
    from tests.replay.kafkalog import create_topics  # stripe-events and control only

    asyncio.run(create_topics(bootstrap, topics))
    env = {**os.environ, "REFSTREAM_KAFKA_BOOTSTRAP": bootstrap, "REFSTREAM_ENV": "sandbox",
           "REFSTREAM_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run([str(Path(sys.executable).parent / "refstream"), "worker", "--web-port", "6998",
                             "--topic-prefix", topics.prefix], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert f"has no topic {topics.review_cases}" in result.stderr and "topics create" in result.stderr
