"""`refstream review list` / `refstream review resolve CASE --approve|--reject --reason TEXT`.

The review queue is the review-cases topic (docs/cli.md#review): the worker writes a case's
state there when it opens and when it ends, and the topic is compacted, never emptied for
age, so a case stays listable and resolvable for as long as it is open. Decisions are
control records; one appended and not applied yet takes the case off the open list at
once. `resolve` finds the case's ucc there, so the decision reaches the partition that owns
that referrer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import click
import orjson

from refstream.commands import kafka_access, refstream_command
from refstream.commands.kafka_access import (
    NotWritten,
    Stalled,
    Unconfirmed,
    failure,
    quiet_clients,
)
from refstream.commands.payouts import append_control, settings_or_fail
from schemas import commands, control
from schemas.topics import Topics


async def read_to_end(
    bootstrap: str, topics: Sequence[str], *, timeout_s: float = 30.0, missing: list[str] | None = None
) -> list[tuple[str, bytes]]:
    """Every committed record (read_committed) of the topics, oldest first per partition:
    (topic, value). Stops at the end offsets taken when it starts. A topic that does not
    exist has no records; it is added to `missing` when that is given."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    quiet_clients()
    connect_s = kafka_access.TIMEOUT_S
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                                enable_auto_commit=False, group_id=None,
                                request_timeout_ms=int(connect_s * 1000))
    try:
        await asyncio.wait_for(consumer.start(), connect_s)
        if any(consumer.partitions_for_topic(t) is None for t in topics):
            await consumer._client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if missing is not None:
            missing.extend(t for t in topics if not consumer.partitions_for_topic(t))
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        out: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise Stalled(sorted({tp.topic for tp in pending}), timeout_s)
            batch = await consumer.getmany(*pending, timeout_ms=200)
            for tp, msgs in batch.items():
                out.extend((tp.topic, m.value) for m in msgs if m.value is not None)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return out
    finally:
        await consumer.stop()


ENDED = (commands.CASE_APPROVED, commands.CASE_REJECTED, commands.CASE_LINKED)


class NoCasesTopic(Exception):
    """The review-cases topic does not exist (the topics were created before it was added)."""

    def __init__(self, topic: str) -> None:
        super().__init__(topic)
        self.topic = topic


@dataclass(frozen=True, slots=True)
class Queue:
    cases: dict[str, commands.CaseState]  # per case: how it ended, else its opening
    decisions: dict[str, control.ReviewDecision]  # the first decision per case: the one that counts

    def status(self, case_id: str) -> str:
        """open, approved, rejected, linked; or approving / rejecting: a decision is on the
        control topic and the worker has not applied it yet."""
        state = self.cases[case_id]
        decision = self.decisions.get(case_id)
        if state.status != commands.CASE_OPEN or decision is None:
            return state.status
        return "approving" if decision.approve else "rejecting"

    @property
    def open(self) -> list[commands.CaseState]:
        return sorted((c for cid, c in self.cases.items() if self.status(cid) == commands.CASE_OPEN),
                      key=lambda c: (c.opened_at, c.case_id))

    @property
    def all(self) -> list[commands.CaseState]:
        return sorted(self.cases.values(), key=lambda c: (c.opened_at, c.case_id))


async def load_queue(bootstrap: str, t: Topics) -> Queue:
    missing: list[str] = []
    records = await read_to_end(bootstrap, [t.review_cases, t.control], missing=missing)
    if t.review_cases in missing:
        raise NoCasesTopic(t.review_cases)
    return queue_of(records, t)


def queue_of(records: Iterable[tuple[str, bytes]], t: Topics) -> Queue:
    """The queue from the review-cases and control topics' records, (topic, value)."""
    cases: dict[str, commands.CaseState] = {}
    decisions: dict[str, control.ReviewDecision] = {}
    for topic, value in records:
        if topic == t.review_cases:
            state = commands.decode(value)
            if not isinstance(state, commands.CaseState):
                continue
            # a case opens once and ends once, and each is a record of its own (compaction
            # keeps both): the end wins whichever partition order they come in
            known = cases.get(state.case_id)
            if known is None or (known.status not in ENDED and state.status in ENDED):
                cases[state.case_id] = state
        else:
            try:
                rec = control.decode(value)
            except control.ControlDecodeError:
                continue  # the worker dead-letters it; nothing for the queue
            if isinstance(rec, control.ReviewDecision):
                decisions.setdefault(rec.case_id, rec)
    return Queue(cases, decisions)


def _no_cases_topic(bootstrap: str, env: str, topic: str) -> click.ClickException:
    return click.ClickException(
        f"Kafka at {bootstrap} has no topic {topic}, where the worker keeps the review cases. Create it "
        f"with `{refstream_command()} topics create` (it adds the missing topics and leaves the others as "
        f"they are), or check REFSTREAM_ENV (now {env!r}) and REFSTREAM_KAFKA_BOOTSTRAP."
    )


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def _age(opened_at: int, now: float) -> str:
    """How long ago the case opened: hours up to two days, then days."""
    seconds = now - opened_at
    if seconds < 0:
        return "-"  # opened at a time still ahead (the events' own times)
    hours = int(seconds // 3600)
    return f"{hours} h" if hours < 48 else f"{hours // 24} d"


def _decision(queue: Queue, state: commands.CaseState) -> str | None:
    if state.status in (commands.CASE_APPROVED, commands.CASE_REJECTED):
        return state.status
    if state.status == commands.CASE_LINKED:
        return None
    decision = queue.decisions.get(state.case_id)
    return None if decision is None else ("approved" if decision.approve else "rejected")


@click.group(name="review")
def review() -> None:
    """The review queue: cases the automation paused on.

    Case kinds and what a decision does: docs/rules.md#review-cases.
    """


@review.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Also show the cases that ended, with their status.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--topic-prefix", default="refstream", hidden=True)
def list_(show_all: bool, as_json: bool, topic_prefix: str) -> None:
    """Open review cases, oldest first."""
    settings = settings_or_fail()
    t = Topics(settings.env, topic_prefix)
    try:
        queue = asyncio.run(load_queue(settings.kafka_bootstrap, t))
    except NoCasesTopic as exc:
        raise _no_cases_topic(settings.kafka_bootstrap, settings.env, exc.topic) from None
    except Exception as exc:
        raise failure(settings.kafka_bootstrap, "Cannot read the review queue", exc) from None
    shown = queue.all if show_all else queue.open
    if as_json:
        for state in shown:
            click.echo(orjson.dumps({
                "case_id": state.case_id, "kind": state.kind, "ucc": state.ucc,
                "referral_id": state.referral_id, "details": state.details, "opened_at": state.opened_at,
                "status": queue.status(state.case_id), "decision": _decision(queue, state),
                "decided_at": state.decided_at, "reason": state.reason,
            }).decode())
        return
    if not shown:
        click.echo("No open review cases." if not show_all else "No review cases.")
        return
    now = time.time()
    click.echo(f"{'case':34} {'kind':22} {'ucc':16} {'referral':18} {'opened (UTC)':17} {'age':>5}  status")
    for state in shown:
        age = _age(state.opened_at, now)
        click.echo(f"{state.case_id:34} {state.kind:22} {state.ucc:16} {state.referral_id:18} "
                   f"{_when(state.opened_at):17} {age:>5}  {queue.status(state.case_id)}")
    if not show_all:
        click.echo(f"\n{len(shown)} open. Decide one with: {refstream_command()} review resolve CASE "
                   "--approve|--reject --reason TEXT")


@review.command(name="resolve")
@click.argument("case_id", metavar="CASE")
@click.option("--approve/--reject", "approve", default=None, help="Release what the case held, or void it.")
@click.option("--reason", required=True, help="Why: kept with the decision for the audit trail.")
@click.option("--actor", default=None, help="Who decides [default: the OS user].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def resolve(case_id: str, approve: bool | None, reason: str, actor: str | None, topic_prefix: str) -> None:
    """Decide review case CASE (approve or reject)."""
    if approve is None:
        raise click.UsageError("Say what to decide: --approve or --reject.")
    if not reason.strip():
        raise click.UsageError("--reason is empty. Say why, e.g. --reason 'confirmed with the referrer'.")
    settings = settings_or_fail()
    t = Topics(settings.env, topic_prefix)
    try:
        queue = asyncio.run(load_queue(settings.kafka_bootstrap, t))
    except NoCasesTopic as exc:
        raise _no_cases_topic(settings.kafka_bootstrap, settings.env, exc.topic) from None
    except Exception as exc:
        raise failure(settings.kafka_bootstrap, f"Cannot look up case {case_id}", exc,
                      after="No decision was recorded.") from None
    case = queue.cases.get(case_id)
    if case is None:
        raise click.ClickException(
            f"There is no review case {case_id!r} on {t.review_cases}. `refstream review list` shows the "
            "open cases with their ids."
        )
    earlier = queue.decisions.get(case_id)
    from refstream import control_log

    decision = control.ReviewDecision(case_id, case.ucc, approve, reason.strip(), int(time.time()),
                                      control_log.actor(actor))
    try:
        partition, offset = asyncio.run(append_control(settings.kafka_bootstrap, t.control, decision))
    except NotWritten as exc:
        raise failure(settings.kafka_bootstrap, f"The decision on case {case_id} was not recorded",
                      exc) from None
    except Unconfirmed as exc:
        raise failure(settings.kafka_bootstrap,
                      f"The decision on case {case_id} may or may not have been recorded", exc,
                      after="Deciding again is safe (the first decision is the one that counts); "
                            "`refstream review list --all` shows whether it arrived.") from None
    verdict = "approve" if approve else "reject"
    click.echo(f"appended decision {verdict} for case {case_id} ({case.kind}, ucc {case.ucc}) to {t.control} "
               f"(partition {partition}, offset {offset})")
    if earlier is not None:
        click.echo(f"note: the case was already {'approved' if earlier.approve else 'rejected'} at "
                   f"{_when(earlier.decided_at)} UTC; a second decision changes nothing.")
    elif case.status != commands.CASE_OPEN:
        ended = "" if case.decided_at is None else f" at {_when(case.decided_at)} UTC"
        click.echo(f"note: the case already ended ({case.status}{ended}: {case.reason}); "
                   "a decision changes nothing.")
