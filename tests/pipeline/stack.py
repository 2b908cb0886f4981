"""The real system for pipeline tests: topics, ingest and worker processes, outputs.

Everything runs as the operator would run it (`refstream topics create`, `refstream
ingest`, `refstream worker`, `refstream payouts run`, `refstream review ...`), as
subprocesses under a private topic prefix, app id / consumer group and data dir. Waits
are polls of real conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from processors.rules.engine import Engine
from refstream.commands.review import read_to_end
from schemas import commands, control
from schemas.rules import load_rules
from schemas.topics import Topics
from tests.conftest import sign

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "examples" / "rules.toml"
SECRET = "whsec_pipeline_tests_0123456789abcdef"
REFSTREAM = str(Path(sys.executable).parent / "refstream")
PARTITIONS = 4
INTERNAL = ("customer", "invoice", "referrer")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(
    what: str, check: Callable[[], Awaitable[Any]], timeout_s: float, every_s: float = 0.25
) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int
    data_dir: Path | None = None
    stopped: bool = False  # by the test, on purpose

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def normalized(raw: bytes) -> bytes:
    """An output record as comparable bytes (key order aside, every field must match,
    including the order of a payout's entry_ids, which the core sorts)."""
    return orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS)


@dataclass
class Stack:
    bootstrap: str
    prefix: str
    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    posted: list[bytes] = field(default_factory=list)
    web_token: str | None = None  # REFSTREAM_WEB_TOKEN of the workers started from now on
    identity_key: str | None = None  # REFSTREAM_IDENTITY_KEY of every process (and of `expected`)

    def __post_init__(self) -> None:
        self.topics = Topics("sandbox", self.prefix)
        self.app_id = f"{self.prefix}-sandbox"

    # --- processes ------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REFSTREAM_")}
        env.update(
            REFSTREAM_ENV="sandbox",
            REFSTREAM_KAFKA_BOOTSTRAP=self.bootstrap,
            REFSTREAM_STRIPE_SECRETS_SANDBOX=SECRET,
            REFSTREAM_RULES=str(RULES),
            REFSTREAM_DATA_DIR=str(self.tmp / "data"),
        )
        if self.web_token:
            env["REFSTREAM_WEB_TOKEN"] = self.web_token
        if self.identity_key:
            env["REFSTREAM_IDENTITY_KEY"] = self.identity_key
        env.update(extra)
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`refstream ARGS --topic-prefix P` (for the commands that take one)."""
        result = subprocess.run([REFSTREAM, *args, "--topic-prefix", self.prefix], env=self.env(),
                                cwd=self.tmp, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"refstream {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def create_topics(self, partitions: int = PARTITIONS) -> None:
        result = subprocess.run([REFSTREAM, "topics", "create", "--prefix", self.prefix, "--env", "sandbox",
                                 "--partitions", str(partitions)], env=self.env(), cwd=self.tmp,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr

    def _spawn(self, name: str, args: list[str], port: int, data_dir: Path | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        extra = {"REFSTREAM_DATA_DIR": str(data_dir)} if data_dir else {}
        with log.open("ab") as out:
            popen = subprocess.Popen([REFSTREAM, *args], env=self.env(**extra), cwd=self.tmp,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log, port, data_dir)
        self.procs.append(proc)
        return proc

    async def start_ingest(self) -> Proc:
        port = free_port()
        proc = self._spawn("ingest", ["ingest", "--port", str(port), "--topic-prefix", self.prefix], port)
        await self.until("ingest /readyz", lambda: self._status(proc, "/readyz"), 60)
        self.ingest = proc
        return proc

    async def start_worker(self, name: str = "worker-1", port: int | None = None, *,
                           ready: bool = True) -> Proc:
        """`ready=False` returns as soon as the process runs (a fault test may kill it while
        it is still starting or recovering)."""
        port = port or free_port()
        data_dir = self.tmp / f"data-{name}"
        proc = self._spawn(name, ["worker", "--web-port", str(port), "--topic-prefix", self.prefix],
                           port, data_dir)
        if ready:
            await self.until(f"{name} /readyz", lambda: self._status(proc, "/readyz"), 90)
        return proc

    async def restart(self, proc: Proc, *, ready: bool = True) -> Proc:
        self.procs.remove(proc)
        return await self.start_worker(proc.name, proc.port, ready=ready)

    def kill9(self, proc: Proc) -> None:
        proc.stopped = True
        os.kill(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout=30)

    def stop(self, proc: Proc) -> None:
        proc.stopped = True
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(timeout=30)

    def assert_alive(self) -> None:
        for proc in self.procs:
            if not proc.stopped and not proc.alive():
                raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.alive():
                self.stop(proc)

    async def until(
        self, what: str, check: Callable[[], Awaitable[Any]], timeout_s: float, every_s: float = 0.25
    ) -> Any:
        """`until`, and at the deadline what each process was doing (see `report`)."""
        try:
            return await until(what, check, timeout_s, every_s)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await self.report()}") from None

    async def report(self) -> str:
        """Per process: alive or exit code, the worker's /readyz counters, the tail of its log.
        Each live worker is also asked (SIGUSR1, mode's handler) to append a dump of every
        asyncio task's stack to its log: where a stalled worker is waiting."""
        parts = []
        for proc in self.procs:
            state = "running" if proc.alive() else f"exited with {proc.popen.returncode}"
            ready = ""
            if proc.alive() and proc.name != "ingest":
                try:
                    status, body = await self.get_json(proc, "/readyz", timeout_s=5)
                    ready = f"\n/readyz {status}: {orjson.dumps(body).decode()}"
                except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                    ready = f"\n/readyz did not answer: {exc!r}"
            parts.append(f"--- {proc.name} ({state}, log {proc.log}){ready}\n{proc.tail()}")
            if proc.alive() and proc.name != "ingest":
                os.kill(proc.popen.pid, signal.SIGUSR1)
                parts[-1] += f"\n(task dump appended to {proc.log})"
        return "\n".join(parts)

    async def _status(self, proc: Proc, path: str) -> bool:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession() as http, http.get(proc.url + path, timeout=timeout,
                                                                  headers=self._auth()) as resp:
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.web_token}"} if self.web_token else {}

    async def get_json(
        self, proc: Proc, path: str, *, auth: bool = True, timeout_s: float = 15
    ) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        headers = self._auth() if auth else {}
        async with aiohttp.ClientSession() as http, http.get(proc.url + path, timeout=timeout,
                                                              headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    # --- input ------------------------------------------------------------------------------

    async def post(self, bodies: Iterable[bytes]) -> None:
        """Signed webhooks to ingest, one after the other; each must be answered 200."""
        async with aiohttp.ClientSession() as http:
            for body in bodies:
                for attempt in range(50):
                    async with http.post(f"{self.ingest.url}/webhooks/stripe/sandbox", data=body,
                                         headers={"Stripe-Signature": sign(body, SECRET),
                                                  "Content-Type": "application/json"}) as resp:
                        if resp.status == 200:
                            break
                        assert resp.status == 503, f"ingest answered {resp.status}: {await resp.text()}"
                    await asyncio.sleep(0.1 * attempt)  # 503 asks for a retry, as Stripe would
                self.posted.append(body)

    async def post_paced(self, bodies: Iterable[bytes], until: asyncio.Event, every_s: float) -> None:
        """Traffic while the test does something else: one webhook every `every_s` until
        `until` is set, then the rest at once. (The pause shapes the load; nothing waits
        on it.)"""
        for body in bodies:
            await self.post([body])
            if not until.is_set():
                await asyncio.sleep(every_s)

    # --- output -----------------------------------------------------------------------------

    async def outputs(self) -> list[bytes]:
        t = self.topics
        return [v for _, v in await read_to_end(
            self.bootstrap, [t.payouts, t.notifications, t.reviews, t.review_cases], timeout_s=60)]

    async def control_records(self) -> list[bytes]:
        return [v for _, v in await read_to_end(self.bootstrap, [self.topics.control])]

    async def expected(self) -> list[bytes]:
        """What the pure Engine emits for what was posted (in that order) and the control
        records on the control topic, each after everything posted before it."""
        key = self.identity_key.encode() if self.identity_key else None
        engine = Engine(load_rules(RULES), identity_key=key)
        out = [r for body in self.posted for r in engine.feed_stripe(body)]
        for raw in await self.control_records():
            out += engine.feed_control(raw)
        return [commands.encode(r.record) for r in out]

    async def wait_for_outputs(self, n: int, timeout_s: float = 120) -> list[bytes]:
        counted = [0]

        async def enough() -> list[bytes] | None:
            self.assert_alive()
            got = await self.outputs()
            counted[0] = len(got)
            return got if len(got) >= n else None

        try:
            return await until(f"{n} output records", enough, timeout_s, every_s=0.5)
        except AssertionError:
            # which ones: a missing record (lost on the way) reads differently from no
            # output at all (a stalled stage)
            raise AssertionError(
                f"timed out after {timeout_s:.0f}s waiting for {n} output records: "
                f"{counted[0]} arrived\n{await self._difference()}\n{await self.report()}"
            ) from None

    async def _difference(self) -> str:
        want = collections.Counter(normalized(r) for r in await self.expected())
        have = collections.Counter(normalized(r) for r in await self.outputs())
        missing, extra = want - have, have - want
        return (f"{sum(missing.values())} missing, {sum(extra.values())} unexpected of "
                f"{sum(want.values())} expected records\n"
                f"missing: {list(missing)[:3]}\nunexpected: {list(extra)[:3]}")

    async def wait_drained(self, timeout_s: float = 120) -> None:
        """Every stage and the publisher have committed up to the end of what they read."""
        t = self.topics
        groups = {
            self.app_id: [t.stripe_events, t.control, *(self._internal(n) for n in INTERNAL)],
            f"{self.app_id}-publisher": [self._internal("outbox")],
        }

        behind: list[str] = []  # at a timeout, the message says which partitions lag

        async def drained() -> bool:
            self.assert_alive()
            behind.clear()
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
            await admin.start()
            await consumer.start()
            try:
                await consumer._client.force_metadata_update()
                for group, topics in groups.items():
                    committed = await admin.list_consumer_group_offsets(group)
                    parts = consumer.partitions_for_topic
                    tps = [TopicPartition(t, p) for t in topics for p in parts(t) or ()]
                    ends = await consumer.end_offsets(tps)
                    for tp, end in ends.items():
                        meta = committed.get(tp)
                        if end > 0 and (meta is None or meta.offset < end):
                            behind.append(f"{group}: {tp.topic}[{tp.partition}] committed "
                                          f"{None if meta is None else meta.offset} of {end}")
                return not behind
            finally:
                await consumer.stop()
                await admin.close()

        try:
            await self.until("the pipeline to drain (all offsets committed)", drained, timeout_s, every_s=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nbehind: {behind}") from None

    def _internal(self, name: str) -> str:
        return f"{self.prefix}.worker-{name}.sandbox"

    async def assert_outputs_match_engine(self) -> list[bytes]:
        """Output topics (read_committed) == the Engine's outputs: same records, same ids,
        each exactly once."""
        expected = await self.expected()
        await self.wait_for_outputs(len(expected))
        await self.wait_drained()
        got = await self.outputs()
        want = collections.Counter(normalized(r) for r in expected)
        have = collections.Counter(normalized(r) for r in got)
        assert want == have, await self._difference()
        ids = [command_id(r) for r in got]
        assert len(ids) == len(set(ids)), "an output id appears twice"
        return got

    async def payout_run(self, as_of: str, run_id: str | None = None) -> str:
        args = ["payouts", "run", "--as-of", as_of, "--yes"] + (["--run-id", run_id] if run_id else [])
        return self.cli(*args).stdout


def command_id(raw: bytes) -> str:
    doc = orjson.loads(raw)
    return str(doc.get("payout_id") or doc.get("notification_id") or doc.get("case_state_id")
               or doc.get("case_id"))


def of_kind(records: Iterable[bytes], cls: type) -> list[Any]:
    return [r for r in map(commands.decode, records) if isinstance(r, cls)]


__all__ = ["Stack", "command_id", "control", "free_port", "normalized", "of_kind", "until"]
