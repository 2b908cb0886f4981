"""Fault-suite fixtures: a 3-node cluster, ingest on a real port in its own thread, and the
reliability table every fault test adds its figures to (written to docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ingest.app import create_app
from ingest.producer import EventLog
from ingest.server import IngestRunner
from refstream import localkafka
from refstream.settings import Settings
from tests.conftest import _free_port_pair

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "reliability.md"

# Three JVMs share two cores with everything else: keep each one small.
SMALL_HEAP = "-Xms128m -Xmx384m"


def _free_port_run(n: int) -> int:
    """A first port such that port .. port+2n-1 are all free (n nodes, 2 ports each)."""
    for _ in range(100):
        port = _free_port_pair()
        if all(localkafka._port_free(p) for p in range(port, port + 2 * n)):
            return port
    raise RuntimeError("no run of free ports")


@pytest.fixture(scope="package")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localkafka.Cluster]:
    """A 3-node KRaft cluster started the way an operator would: `refstream kafka up --brokers 3`.

    Package-scoped: the three JVMs are gone before the rest of the suite runs."""
    env = {**os.environ, "KAFKA_HEAP_OPTS": SMALL_HEAP}
    cli = [str(Path(sys.executable).parent / "refstream")]  # the installed console command
    failures = []
    for _ in range(3):
        # other engineers' brokers come and go on this machine: a port free a moment ago may be
        # taken when ours binds, so a failed start is retried on other ports
        data_dir = tmp_path_factory.mktemp("kafka3")
        port = _free_port_run(3)
        up = subprocess.run(
            [*cli, "kafka", "up", "--brokers", "3", "--port", str(port), "--data-dir", str(data_dir),
             "--detach"],
            env=env, capture_output=True, text=True, cwd=ROOT, timeout=180,
        )
        if up.returncode == 0:
            break
        failures.append(up.stdout + up.stderr)
        localkafka.down(data_dir)
    else:
        raise AssertionError("`refstream kafka up --brokers 3` failed three times:\n" + "\n".join(failures))
    cluster = localkafka.Cluster(data_dir, port=port, brokers=3)
    try:
        yield cluster
    finally:
        # throwaway data: kill rather than wait for three controlled shutdowns
        for node in cluster.nodes:
            localkafka.stop_node(node, hard=True)


@pytest.hookimpl(tryfirst=True)  # before tests/conftest.py reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under xdist (`make test`, `--dist loadgroup`) the tests on the 3-node cluster run in one
    worker, one after the other: one cluster of three JVMs, not one per worker."""
    for item in items:
        if "cluster3" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("cluster3"))


def restart_nodes(cluster: localkafka.Cluster) -> None:
    """Start the nodes of the cluster that are down (with the small heap), wait until all answer."""
    old = os.environ.get("KAFKA_HEAP_OPTS")
    os.environ["KAFKA_HEAP_OPTS"] = SMALL_HEAP
    try:
        localkafka.up(cluster, timeout_s=120)
    finally:
        if old is None:
            os.environ.pop("KAFKA_HEAP_OPTS", None)
        else:
            os.environ["KAFKA_HEAP_OPTS"] = old


# --- ingest on a real port, in a thread with its own event loop ------------------------------


@dataclass
class IngestServer:
    port: int
    loop: asyncio.AbstractEventLoop

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, env: str = "sandbox") -> str:
        return f"{self.base}/webhooks/stripe/{env}"


@contextmanager
def ingest_server(cfg: Settings, prefix: str, *, keepalive_timeout: float = 15.0,
                  **app_kwargs: Any) -> Iterator[IngestServer]:
    """ingest as a real server on 127.0.0.1, as `refstream ingest` runs it, in a thread."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        event_log = EventLog(cfg.kafka_bootstrap, timeout_s=cfg.produce_timeout_s)
        app = create_app(cfg, event_log, topic_prefix=prefix, **app_kwargs)
        runner = IngestRunner(app, access_log=None, keepalive_timeout=keepalive_timeout)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # surfaced to the test below
            holder["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="ingest", daemon=True)
    thread.start()
    started.wait(60)
    if "error" in holder:
        raise holder["error"]
    try:
        yield IngestServer(holder["port"], loop)
    finally:
        async def shutdown() -> None:
            await holder["runner"].cleanup()
            # connections the tests left stalled still have handler tasks: end them too
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def raw_request(port: int, data: bytes, *, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are; return (status, body) of the answer, or (0, b"") if none."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    answer = b"".join(chunks)
    if not answer.startswith(b"HTTP/1."):
        return 0, b""
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


# --- the reliability table -------------------------------------------------------------------

COLUMNS = [
    ("sent", "events sent"),
    ("acknowledged", "acknowledged (200)"),
    ("refused", "refused (503/4xx)"),
    ("lost", "lost (must be 0)"),
    ("duplicated", "duplicated (must be 0)"),
    ("kills", "worker kills (kill -9)"),
    ("fuzz_cases", "fuzz cases"),
    ("server_errors", "5xx other than 503 (must be 0)"),
]


@dataclass
class Reliability:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, test: str, *, what: str, **figures: Any) -> None:
        self.rows[test] = {"what": what, **figures}

    def render(self) -> str:
        header = "| test | what it does | " + " | ".join(title for _, title in COLUMNS) + " | notes |"
        lines = [
            "# Reliability: what the fault suite measured",
            "",
            "Written by `tests/faults/` at the end of each run (`make test`); do not edit by hand.",
            f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{os.cpu_count()} cores shared by the brokers, ingest and the load.",
            "",
            header,
            "|" + "---|" * (len(COLUMNS) + 3),
        ]
        for test, row in sorted(self.rows.items()):
            cells = [str(row.get(key, "—")) for key, _ in COLUMNS]
            notes = row.get("notes", "")
            lines.append(f"| `{test}` | {row['what']} | " + " | ".join(cells) + f" | {notes} |")
        lines += [
            "",
            "acknowledged: answered 200, so the event is on every in-sync replica. refused: answered",
            "503 (Kafka did not confirm within the bound; Stripe retries) or 4xx. lost: acknowledged",
            "but not in the log. duplicated: acknowledged and in the log more than once.",
            "A refused event may still be in the log (Kafka stored it after ingest gave up waiting);",
            "that is safe, Stripe's retry is a duplicate the worker drops by event id.",
            "For the worker's rows (`test_worker_*.py`) lost and duplicated count output commands",
            "(payouts, notifications, review cases) read with read_committed against the pure",
            "Engine's for the same events: missing, or there more than once.",
            "",
        ]
        return "\n".join(lines)


# From this line on docs/reliability.md holds what bench/fuzz.py measured (too long for `make
# test`); the table above it is rewritten, that part is kept as it is.
KEPT_FROM = "<!-- kept: bench/fuzz.py -->"


@pytest.fixture(scope="session")
def reliability(request: pytest.FixtureRequest) -> Iterator[Reliability]:
    table = Reliability()
    yield table
    workeroutput = getattr(request.config, "workeroutput", None)
    if workeroutput is not None:
        # an xdist worker holds only its own rows: the controller writes them all
        # (pytest_testnodedown and pytest_sessionfinish in tests/conftest.py)
        workeroutput["reliability"] = table.rows
    elif table.rows:
        write_report(table.rows)


def write_report(rows: dict[str, dict[str, Any]]) -> None:
    existing = REPORT.read_text() if REPORT.exists() else ""
    rendered = Reliability(dict(rows)).render()
    # rewrite only when this run measured every fault test (a partial run keeps the table)
    if len(rows) >= EXPECTED_ROWS or not existing:
        kept = existing[existing.index(KEPT_FROM):] if KEPT_FROM in existing else ""
        REPORT.write_text(rendered + ("\n" + kept if kept else ""))


# the fault tests that add a row: broker loss, stalled clients, SIGSTOP, fuzz; and the
# worker's (test_worker_*.py): kill -9s, strange payloads, no permission (2), full disk,
# whole-cluster restart
EXPECTED_ROWS = 10


def wait_until(predicate: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)
