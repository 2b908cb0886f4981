"""Fixtures of the payout tests: Stripe's API mock (stripe-mock, built into the cache on first
use, refstream/stripemock.py), a fake Stripe that remembers idempotency keys, and a log of
payouts written straight to the topics (execute, list and export only read them)."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

from refstream import stripemock
from refstream.commands.review import read_to_end
from refstream.commands.topics import create_topics
from schemas import commands, control
from schemas.topics import Topics
from tests.pipeline.stack import free_port

REFSTREAM = str(Path(sys.executable).parent / "refstream")
TEST_KEY = "sk_test_refstream0123456789"  # stripe-mock takes a test key of letters and digits


@pytest.fixture(scope="session")
def stripe_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stripemock.StripeMock]:
    log = tmp_path_factory.mktemp("stripe-mock") / "stripe-mock.log"
    mock = stripemock.start(free_port(), free_port(), log)
    try:
        yield mock
    finally:
        mock.stop()


@dataclass
class FakeStripe:
    """POST /v1/transfers as Stripe answers it, remembering every idempotency key: the same key
    again gets the transfer it made the first time. `hold(n)`: the n-th new transfer is made,
    and its answer held back until `gate` is set (a client killed while waiting for it)."""

    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)  # idempotency key → transfer
    requests: list[str] = field(default_factory=list)  # the keys, in the order they came
    hold_at: int | None = None
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    async def transfer(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        self.requests.append(key)
        form = {k: v[0] for k, v in parse_qs(await request.text()).items()}
        made = self.transfers.get(key)
        if made is None:
            made = {"id": f"tr_fake{next(self._ids)}", "object": "transfer", "amount": int(form["amount"]),
                    "currency": form["currency"], "destination": form["destination"],
                    "metadata": {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}}
            self.transfers[key] = made
            if self.hold_at is not None and len(self.transfers) == self.hold_at:
                await self.gate.wait()
        return web.json_response(made)

    async def __aenter__(self) -> FakeStripe:
        app = web.Application()
        app.router.add_post("/v1/transfers", self.transfer)
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
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    async with FakeStripe() as fake:
        yield fake


def payout(ucc: str, run_id: str, amount: int, currency: str = "usd") -> commands.PayoutCommand:
    return commands.PayoutCommand(commands.fact_id("payout", ucc, run_id, currency), run_id, ucc, currency,
                                  amount, 1771113600, ("e1",), 3)


@dataclass
class Log:
    """Topics of one test, and the commands as the operator types them."""

    bootstrap: str
    topics: Topics
    tmp: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REFSTREAM_")}
        env.update(REFSTREAM_ENV="sandbox", REFSTREAM_KAFKA_BOOTSTRAP=self.bootstrap, **extra)
        return env

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([REFSTREAM, *args, "--topic-prefix", self.topics.prefix], env=env or self.env(),
                              cwd=self.tmp, capture_output=True, text=True, timeout=120)

    async def acli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`cli` off the event loop, which may serve what the command calls (a fake Stripe)."""
        return await asyncio.to_thread(self.cli, *args, env=env)

    def popen(self, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen([REFSTREAM, *args, "--topic-prefix", self.topics.prefix], env=env,
                                cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)

    async def write(self, *records: commands.PayoutCommand | control.ControlRecord) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for r in records:
                if isinstance(r, commands.PayoutCommand):
                    await producer.send_and_wait(self.topics.payouts, commands.encode(r), key=r.ucc.encode())
                else:
                    await producer.send_and_wait(self.topics.control, control.encode(r))
        finally:
            await producer.stop()

    async def control(self) -> list[control.ControlRecord]:
        return [control.decode(v) for _, v in await read_to_end(self.bootstrap, [self.topics.control])]

    async def outcomes(self) -> list[control.PayoutOutcome]:
        return [r for r in await self.control() if isinstance(r, control.PayoutOutcome)]


@pytest.fixture
async def log(bootstrap: str, topic_prefix: str, tmp_path: Path) -> Log:
    await create_topics(bootstrap, ["sandbox"], prefix=topic_prefix, partitions=2)
    return Log(bootstrap, Topics("sandbox", topic_prefix), tmp_path)


def lines(raw: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]
