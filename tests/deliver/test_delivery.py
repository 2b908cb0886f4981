"""`refstream deliver` against the real broker and a real HTTP receiver (docs/cli.md#deliver):
an endpoint that fails, then stalls, then works gets every record, signed so that the
example receiver's code verifies it, in order per referrer and kind; a kill -9 loses
nothing; a record past its maximum age is dead-lettered with its error; and an endpoint
that refuses everything holds back no other environment."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from schemas import commands
from tests.deliver.helpers import (
    OLD_SECRET,
    Deliver,
    Receiver,
    case,
    committed,
    create,
    dead_letters,
    notification,
    payout,
    write,
    write_aborted,
)
from tests.pipeline.stack import free_port, until

pytestmark = pytest.mark.kafka

# the killed deliverer's partitions go to the restarted one once the group gives up on it
FAST_REJOIN = ("--session-timeout", "6s")
UCCS = ("ucc_A", "ucc_B", "ucc_C", "ucc_D", "ucc_E")


def mixed(n: int) -> list[commands.Command]:
    """n records per referrer: notifications, with a payout and a review case among them."""
    out: list[commands.Command] = []
    for i in range(n):
        for ucc in UCCS:
            out.append(payout(ucc, i) if i % 4 == 1 else case(ucc, i) if i % 4 == 3 else notification(ucc, i))
    return out


async def test_an_endpoint_that_fails_then_stalls_then_works_gets_every_record_signed_and_in_order(
        bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    t = await create(bootstrap, topic_prefix)
    written = await write(bootstrap, t, mixed(8))
    await write_aborted(bootstrap, t, notification("ucc_A", 999))

    # requests 1-15 get 500, 16-25 get no answer within the deliverer's timeout, then 200;
    # the receiver holds only the older of the two secrets refstream signs with (a rotation)
    def answer(n: int) -> int | None:
        return 500 if n <= 15 else None if n <= 25 else 200

    async with Receiver(OLD_SECRET, answer) as receiver:
        deliver = Deliver(bootstrap, topic_prefix, receiver.url, tmp_path,
                          args=("--timeout", "300ms", "--retry-first", "20ms",
                                "--retry-max", "200ms")).start()
        try:
            await until("every record delivered", lambda: _at_least(receiver, len(written), deliver), 60,
                        every_s=0.1)
            assert receiver.bad_signatures == []
            assert receiver.delivered() == {w.record_id for w in written}  # and not the aborted one
            for a in receiver.arrivals:
                assert a.idempotency_key == orjson.loads(a.body)["id"] == a.record_id
            # per referrer and topic, the first successful delivery of each record is in log order
            firsts: dict[tuple[str, str], list[str]] = defaultdict(list)
            seen: set[str] = set()
            by_id = {w.record_id: w for w in written}
            for a in receiver.arrivals:
                if a.answered == 200 and a.record_id not in seen:
                    seen.add(a.record_id)
                    w = by_id[a.record_id]
                    firsts[(w.ucc, w.topic)].append(a.record_id)
            for (ucc, topic), ids in firsts.items():
                assert ids == [w.record_id for w in written if (w.ucc, w.topic) == (ucc, topic)], (ucc, topic)
            doc = orjson.loads(next(a.body for a in receiver.arrivals if a.record_id == written[0].record_id))
            assert doc["type"] == "notification" and doc["env"] == "sandbox" and doc["data"]["ucc"] == "ucc_A"

            async def caught_up() -> bool:
                _, status = await deliver.get("/status")
                return status["lag"] == {t.notifications: 0, t.payouts: 0, t.reviews: 0}

            await until("lag 0 at /status", caught_up, 30, every_s=0.1)
            _, metrics = await deliver.get("/metrics")
            delivered = sum(_metric(metrics, "refstream_deliver_delivered_total", k)
                            for k in ("notification", "payout", "review_case"))
            retried = sum(_metric(metrics, "refstream_deliver_retries_total", k)
                          for k in ("notification", "payout", "review_case"))
            assert delivered == len(written) and retried == 25  # 15 answered 500, 10 that timed out
            status = deliver.cli("status", "--url", f"http://127.0.0.1:{deliver.port}")
            assert status.returncode == 0, status.stderr
            assert "running, 40 delivered, 25 retried, 0 dead-lettered" in status.stdout
            assert "no answer within 0.3 s" in status.stdout  # among the latest errors
            assert sum(a.answered == 500 for a in receiver.arrivals) == 15
        finally:
            deliver.stop()


async def _at_least(receiver: Receiver, n: int, deliver: Deliver) -> bool:
    assert deliver.alive(), f"deliver exited:\n{deliver.log()}"
    return len(receiver.delivered()) >= n


def _metric(text: str, name: str, kind: str) -> int:
    prefix = f'{name}{{kind="{kind}"}} '
    return int(next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix):])


async def test_a_kill_9_mid_batch_loses_nothing_and_duplicates_carry_the_same_idempotency_key(
        bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    t = await create(bootstrap, topic_prefix)
    written = await write(bootstrap, t, mixed(40))  # 200 records
    # the first 80 requests are answered; the rest wait: the deliverer is killed with
    # requests in flight and records read but not delivered
    async with Receiver(OLD_SECRET, lambda n: 200 if n <= 80 else None) as receiver:
        deliver = Deliver(bootstrap, topic_prefix, receiver.url, tmp_path, args=FAST_REJOIN).start()
        group = f"{topic_prefix}-sandbox-deliver"
        await until("80 delivered", lambda: _at_least(receiver, 80, deliver), 60, every_s=0.05)

        async def progress_committed() -> dict[tuple[str, int], int] | None:
            offsets = await committed(bootstrap, group)
            return offsets if sum(offsets.values()) > 0 else None

        await until("a committed position", progress_committed, 30, every_s=0.1)
        deliver.kill9()
        at_kill = await committed(bootstrap, group)
        before = len(receiver.arrivals)
        receiver.gate.set()  # from now on everything is answered
        await asyncio.sleep(0)
        again = Deliver(bootstrap, topic_prefix, receiver.url, tmp_path, args=FAST_REJOIN).start()
        try:
            await until("every record delivered", lambda: _at_least(receiver, len(written), again), 60,
                        every_s=0.1)
        finally:
            again.stop()
    assert receiver.bad_signatures == []
    assert receiver.delivered() == {w.record_id for w in written}
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for a in receiver.arrivals:
        assert a.idempotency_key == a.record_id
        bodies[a.record_id].add(a.body)
    assert all(len(b) == 1 for b in bodies.values()), "a record was delivered twice with different bodies"
    # the restart resumed from the committed positions: nothing before them came again
    where = {w.record_id: w for w in written}
    after_restart = {a.record_id for a in receiver.arrivals[before:]}
    for rid in after_restart:
        w = where[rid]
        assert w.offset >= at_kill.get((w.topic, w.partition), 0), f"{rid} came again from before the commit"
    assert len(receiver.arrivals) > len(written)  # some were delivered twice: the kill was mid-batch


async def test_a_record_past_its_maximum_age_is_dead_lettered_and_other_environments_go_on(
        bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    sandbox = await create(bootstrap, topic_prefix, "sandbox")
    production = await create(bootstrap, topic_prefix, "production")
    refused_port = free_port()
    refused = f"http://127.0.0.1:{refused_port}/hook"  # nothing listens there
    async with Receiver(OLD_SECRET) as receiver:
        failing = Deliver(bootstrap, topic_prefix, refused, tmp_path, env_name="sandbox",
                          args=("--max-age", "3s", "--retry-first", "50ms", "--retry-max", "200ms")).start()
        working = Deliver(bootstrap, topic_prefix, receiver.url, tmp_path, env_name="production").start()
        try:
            await failing.ready()
            await working.ready()
            # the maximum age counts from when a record was written: written now, each is tried
            # for 3 s
            await write(bootstrap, sandbox, [notification("ucc_A", 1), payout("ucc_A", 2),
                                             notification("ucc_B", 3)])
            live = await write(bootstrap, production, [notification("ucc_P", n) for n in range(5)])
            await until("production delivered while sandbox fails",
                        lambda: _at_least(receiver, len(live), working), 60, every_s=0.1)
            _, status = await failing.get("/status")
            assert status["delivered"] == 0 and status["retrying"]  # sandbox was failing meanwhile

            async def three() -> list[object] | None:
                assert failing.alive(), failing.log()
                got = await dead_letters(bootstrap, sandbox.delivery_dead_letters)
                return got if len(got) >= 3 else None

            letters = await until("3 dead letters", three, 30, every_s=0.2)
            assert len(letters) == 3
            tries = {}
            for m in letters:
                headers = {k: v.decode() for k, v in m.headers}
                assert headers["refstream-error"] == f"could not connect to 127.0.0.1:{refused_port} " \
                                                     "(connection refused)"
                assert headers["refstream-source"].startswith(f"{sandbox.prefix}.")
                tries[orjson.loads(m.value)["id"]] = int(headers["refstream-attempts"])
            # each referrer's first record was tried until it was 3 s old; ucc_A's payout waited
            # behind it (in order per referrer), so it had only what was left of its 3 s
            assert tries["n-ucc_A-1"] > 2 and tries["n-ucc_B-3"] > 2
            assert tries["p-ucc_A-2"] < tries["n-ucc_A-1"]

            async def caught_up() -> dict[str, object] | None:
                _, s = await failing.get("/status")
                return s if s["dead_lettered"] == 3 and not any(s["lag"].values()) else None

            await until("lag 0: the dead letters are committed past", caught_up, 30, every_s=0.1)
            _, metrics = await failing.get("/metrics")
            assert _metric(metrics, "refstream_deliver_dead_letters_total", "notification") == 2
            assert _metric(metrics, "refstream_deliver_dead_letters_total", "payout") == 1
            failing.stop()
            report = failing.cli("status", "--url", f"http://127.0.0.1:{failing.port}", "--json")
            doc = orjson.loads(report.stdout)
            assert doc["service"] is None and doc["dead_letters"] == 3  # from Kafka, the service is gone
            assert doc["lag"] == {sandbox.notifications: 0, sandbox.payouts: 0, sandbox.reviews: 0}
            assert all("could not connect" in d["error"] for d in doc["last_dead_letters"])
        finally:
            failing.stop()
            working.stop()


def test_deliver_without_its_topics_names_them_and_the_fix(bootstrap: str, topic_prefix: str,
                                                           tmp_path: Path) -> None:
    result = Deliver(bootstrap, topic_prefix, "http://127.0.0.1:9/hook", tmp_path).cli()
    assert result.returncode == 1
    assert f"has no topic {topic_prefix}.notifications.sandbox" in result.stderr
    assert "topics create" in result.stderr
