"""What the delivery tests share: output records written straight to the output topics (the
deliverer does not care who wrote them), a real HTTP receiver whose answers a test scripts,
and `refstream deliver` as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import stripe
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from examples.receiver import verified
from refstream.commands.topics import create_topics
from schemas import commands
from schemas.topics import Topics
from tests.pipeline.stack import free_port, until

REFSTREAM = str(Path(sys.executable).parent / "refstream")
PARTITIONS = 4
NEW_SECRET = "new-secret-0123456789abcdef"
OLD_SECRET = "old-secret-0123456789abcdef"


def notification(ucc: str, n: int) -> commands.NotificationCommand:
    return commands.NotificationCommand(f"n-{ucc}-{n}", commands.REWARD_EARNED, ucc, "user:u1", "usd",
                                        100 + n, f"evt_{ucc}_{n}", 1771113600 + n)


def payout(ucc: str, n: int) -> commands.PayoutCommand:
    return commands.PayoutCommand(f"p-{ucc}-{n}", f"run-{n}", ucc, "usd", 1000 + n, 1771113600, (f"e{n}",), 1)


def case(ucc: str, n: int) -> commands.ReviewCase:
    return commands.ReviewCase(f"c-{ucc}-{n}", commands.LARGE_REWARD, ucc, "user:u1", {"amount": n},
                               1771113600)


@dataclass(frozen=True)
class Written:
    record_id: str
    ucc: str
    topic: str
    partition: int
    offset: int


async def create(bootstrap: str, prefix: str, env: str = "sandbox") -> Topics:
    await create_topics(bootstrap, [env], prefix=prefix, partitions=PARTITIONS)
    return Topics(env, prefix)


async def write(bootstrap: str, t: Topics, records: list[commands.Command]) -> list[Written]:
    """Each record to its output topic, key = its ucc, in order; where each landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    out = []
    try:
        for r in records:
            topic = (t.payouts if isinstance(r, commands.PayoutCommand) else
                     t.notifications if isinstance(r, commands.NotificationCommand) else t.reviews)
            meta = await producer.send_and_wait(topic, commands.encode(r), key=r.ucc.encode())
            out.append(Written(command_id(r), r.ucc, topic, meta.partition, meta.offset))
    finally:
        await producer.stop()
    return out


async def write_aborted(bootstrap: str, t: Topics, record: commands.NotificationCommand) -> None:
    """A record in a transaction that is aborted: a read_committed reader never sees it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{t.prefix}-aborter")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(t.notifications, commands.encode(record), key=record.ucc.encode())
        await producer.abort_transaction()
    finally:
        await producer.stop()


def command_id(r: commands.Command) -> str:
    if isinstance(r, commands.PayoutCommand):
        return r.payout_id
    if isinstance(r, commands.NotificationCommand):
        return r.notification_id
    assert isinstance(r, commands.ReviewCase)
    return r.case_id


@dataclass
class Arrival:
    record_id: str
    idempotency_key: str
    body: bytes
    answered: int


@dataclass
class Receiver:
    """A real HTTP endpoint. `answer(n)` says what the n-th request (from 1) gets: a status, or
    None to hold it until `gate` is set (a request that times out, or waits for the test).
    Every request that carries a valid signature is an arrival, whatever the answer."""

    secret: str
    answer: Callable[[int], int | None] = lambda n: 200
    requests: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    bad_signatures: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        n = self.requests
        body = await request.read()
        try:
            record = verified(body, request.headers.get("Refstream-Signature"), self.secret)
        except (stripe.SignatureVerificationError, ValueError) as exc:
            self.bad_signatures.append(str(exc))
            return web.Response(status=400)
        status = self.answer(n)
        if status is None:
            await self.gate.wait()
            status = 200
        self.arrivals.append(Arrival(record["id"], request.headers.get("Idempotency-Key", ""), body, status))
        return web.Response(status=status, text="" if status < 300 else "broken on purpose")

    def delivered(self) -> set[str]:
        return {a.record_id for a in self.arrivals if 200 <= a.answered < 300}

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.gate.set()
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@dataclass
class Deliver:
    """`refstream deliver` as the operator runs it."""

    bootstrap: str
    prefix: str
    url: str
    tmp: Path
    env_name: str = "sandbox"
    secrets: str = f"{NEW_SECRET},{OLD_SECRET}"
    args: tuple[str, ...] = ()
    port: int = 0
    popen: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REFSTREAM_")}
        env.update(REFSTREAM_ENV=self.env_name, REFSTREAM_KAFKA_BOOTSTRAP=self.bootstrap,
                   REFSTREAM_DELIVERY_URL=self.url, REFSTREAM_DELIVERY_SECRET=self.secrets)
        return env

    def start(self) -> Deliver:
        self.port = free_port()
        log = (self.tmp / f"deliver-{self.env_name}.log").open("ab")
        self.popen = subprocess.Popen(
            [REFSTREAM, "deliver", "--port", str(self.port), "--topic-prefix", self.prefix, *self.args],
            env=self.env(), cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log(self) -> str:
        return (self.tmp / f"deliver-{self.env_name}.log").read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        assert self.popen is not None
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=30)

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
                http.get(f"http://127.0.0.1:{self.port}{path}") as resp:
            text = await resp.text()
            return resp.status, (orjson.loads(text) if path != "/metrics" else text)

    async def ready(self) -> None:
        async def check() -> bool:
            assert self.alive(), f"deliver exited:\n{self.log()}"
            try:
                status, _ = await self.get("/readyz")
            except (aiohttp.ClientError, TimeoutError):
                return False
            return status == 200

        await until("deliver /readyz", check, 60, every_s=0.1)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`refstream deliver ARGS` (no ARGS: the service itself) to its end."""
        return subprocess.run([REFSTREAM, "deliver", *args, "--topic-prefix", self.prefix], env=self.env(),
                              cwd=self.tmp, capture_output=True, text=True, timeout=60)


async def committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}
    finally:
        await admin.close()


async def dead_letters(bootstrap: str, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while await consumer.position(tp) < end and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=200)
            out += batch.get(tp, [])
        return out
    finally:
        await consumer.stop()
