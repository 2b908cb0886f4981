"""`refstream review list` / `refstream review resolve CASE --approve|--reject --reason TEXT`.

Review cases live on the reviews topic (docs/rules.md#review-cases); decisions are control records. The
list is the cases without a decision on the control topic; `resolve` looks the case's ucc
up on the reviews topic, so the decision reaches the partition that owns that referrer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
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
    bootstrap: str, topics: Sequence[str], *, timeout_s: float = 30.0
) -> list[tuple[str, bytes]]:
    """Every committed record (read_committed) of the topics, oldest first per partition:
    (topic, value). Stops at the end offsets taken when it starts."""
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


@dataclass(frozen=True, slots=True)
class Queue:
    cases: dict[str, commands.ReviewCase]
    decisions: dict[str, control.ReviewDecision]  # the first decision per case: the one that counts

    @property
    def open(self) -> list[commands.ReviewCase]:
        return sorted((c for cid, c in self.cases.items() if cid not in self.decisions),
                      key=lambda c: (c.opened_at, c.case_id))


async def load_queue(bootstrap: str, t: Topics) -> Queue:
    records = await read_to_end(bootstrap, [t.reviews, t.control])
    cases: dict[str, commands.ReviewCase] = {}
    decisions: dict[str, control.ReviewDecision] = {}
    for topic, value in records:
        if topic == t.reviews:
            case = commands.decode(value)
            if isinstance(case, commands.ReviewCase):
                cases.setdefault(case.case_id, case)
        else:
            try:
                rec = control.decode(value)
            except control.ControlDecodeError:
                continue  # the worker dead-letters it; nothing for the queue
            if isinstance(rec, control.ReviewDecision):
                decisions.setdefault(rec.case_id, rec)
    return Queue(cases, decisions)


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


@click.group(name="review")
def review() -> None:
    """The review queue: cases the automation paused on.

    Case kinds and what a decision does: docs/rules.md#review-cases.
    """


@review.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Also show decided cases.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--topic-prefix", default="refstream", hidden=True)
def list_(show_all: bool, as_json: bool, topic_prefix: str) -> None:
    """Open review cases, oldest first."""
    settings = settings_or_fail()
    t = Topics(settings.env, topic_prefix)
    try:
        queue = asyncio.run(load_queue(settings.kafka_bootstrap, t))
    except Exception as exc:
        raise failure(settings.kafka_bootstrap, "Cannot read the review queue", exc) from None
    shown = sorted(queue.cases.values(), key=lambda c: (c.opened_at, c.case_id)) if show_all else queue.open
    if as_json:
        for case in shown:
            decision = queue.decisions.get(case.case_id)
            click.echo(orjson.dumps({**orjson.loads(commands.encode(case)),
                                     "decision": None if decision is None else
                                     ("approved" if decision.approve else "rejected")}).decode())
        return
    if not shown:
        click.echo("No open review cases." if not show_all else "No review cases.")
        return
    click.echo(f"{'case':34} {'kind':22} {'ucc':16} {'referral':18} {'opened (UTC)':17} status")
    for case in shown:
        decision = queue.decisions.get(case.case_id)
        status = "open" if decision is None else ("approved" if decision.approve else "rejected")
        click.echo(f"{case.case_id:34} {case.kind:22} {case.ucc:16} {case.referral_id:18} "
                   f"{_when(case.opened_at):17} {status}")
    if not show_all:
        click.echo(f"\n{len(shown)} open. Decide one with: {refstream_command()} review resolve CASE "
                   "--approve|--reject --reason TEXT")


@review.command(name="resolve")
@click.argument("case_id", metavar="CASE")
@click.option("--approve/--reject", "approve", default=None, help="Release what the case held, or void it.")
@click.option("--reason", required=True, help="Why: kept with the decision for the audit trail.")
@click.option("--topic-prefix", default="refstream", hidden=True)
def resolve(case_id: str, approve: bool | None, reason: str, topic_prefix: str) -> None:
    """Decide review case CASE (approve or reject)."""
    if approve is None:
        raise click.UsageError("Say what to decide: --approve or --reject.")
    if not reason.strip():
        raise click.UsageError("--reason is empty. Say why, e.g. --reason 'confirmed with the referrer'.")
    settings = settings_or_fail()
    t = Topics(settings.env, topic_prefix)
    try:
        queue = asyncio.run(load_queue(settings.kafka_bootstrap, t))
    except Exception as exc:
        raise failure(settings.kafka_bootstrap, f"Cannot look up case {case_id}", exc,
                      after="No decision was recorded.") from None
    case = queue.cases.get(case_id)
    if case is None:
        raise click.ClickException(
            f"There is no review case {case_id!r} on {t.reviews}. `refstream review list` shows the "
            "open cases with their ids."
        )
    earlier = queue.decisions.get(case_id)
    decision = control.ReviewDecision(case_id, case.ucc, approve, reason.strip(), int(time.time()))
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
