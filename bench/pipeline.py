"""Pipeline benchmark: one worker's catch-up rate, and webhook → notification latency.

1. Preloads N (default 200,000) realistic events (projections/demo.py's programme, both
   API shapes) into stripe-events, keyed like ingest keys them.
2. Starts one `refstream worker` and measures start → caught up (every stage and the
   publisher have committed up to the end of their inputs): events/s.
3. Starts `refstream ingest`, posts signed `customer.created` webhooks of attributed
   customers at a fixed rate (default 500/s) and measures, per webhook, ingest's 200 →
   its `new_signup` notification committed on the notifications topic (p50/p99).

Prints the numbers and writes bench/results/pipeline.json. Uses its own broker (a
private `refstream kafka up` on a free port) unless REFSTREAM_KAFKA_BOOTSTRAP is set.

The catch-up also reports the worker's CPU per event folded (its process's user + system
CPU time over the events it finished), the figure that follows the core's speed. With
`--before DIR` (a copy of an earlier commit, compiled the way `make install` compiles it) or
`--before interpreted` (this checkout with REFSTREAM_INTERPRETED=1), a first catch-up runs
that worker over its own copy of the same events, and both figures are printed side by side.

    .venv/bin/python bench/pipeline.py [--events 200000] [--rate 500] [--seconds 20]
    .venv/bin/python bench/pipeline.py --before /tmp/refstream-before --no-latency
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from projections.demo import Programme, customer, customer_of, programme  # noqa: E402
from refstream import localkafka  # noqa: E402
from schemas.topics import Topics  # noqa: E402

REFSTREAM = str(Path(sys.executable).parent / "refstream")
SECRET = "whsec_bench_pipeline_0123456789abcdef"
PARTITIONS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sign(body: bytes) -> str:
    t = int(time.time())
    return f"t={t},v1=" + hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def http_post(host: str, port: int, path: str, body: bytes) -> bytes:
    """One signed webhook delivery as HTTP/1.1 request bytes (keep-alive)."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Stripe-Signature: {sign(body)}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def post_at_rate(
    host: str, port: int, requests: list[tuple[str, bytes]], rate: int,
    answered: Callable[[str, int], None], connections: int = 64,
) -> tuple[int, float]:
    """Send pre-built requests at `rate`/s over keep-alive connections; `answered(id, status)`
    is called as each answer arrives. Returns (failures, seconds spent sending).

    A lean client on purpose: aiohttp's client cost ~0.6 ms of CPU per post here, taken
    from the same two cores as the worker, ingest and broker under test (bench/ingest.py
    uses wrk for the same reason). A request waits for a free connection, as with a pool."""
    queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
    failures = 0

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (item := await queue.get()) is not None:
                eid, raw = item
                try:
                    writer.write(raw)
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head[9:12])
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    await reader.readexactly(length)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    failures += 1  # the connection broke: count it, and open another
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                if status != 200:
                    failures += 1
                answered(eid, status)
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    t0 = time.monotonic()
    for i, item in enumerate(requests):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(item)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return failures, time.monotonic() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: on a shared, loaded machine a fairer measure
    than wall time, which mostly measures the neighbours."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_seconds(pid: int) -> float:
    """The kernel's share of a process's CPU time (socket writes and the TCP work behind them)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def broker_threads(pids: list[int]) -> dict[str, float]:
    """The broker's CPU seconds by kind of thread: its JIT compiler (busy for minutes after a
    start), the request handlers and network threads ("data-plane"), and everything else."""
    out = {"jit_compiler": 0.0, "requests": 0.0, "other": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                name = (task / "comm").read_text()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the thread ended meanwhile
            kind = "jit_compiler" if "CompilerThre" in name else \
                "requests" if name.startswith("data-plane") else "other"
            out[kind] += (int(fields[11]) + int(fields[12])) / tick
    return out


def py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` with py-spy (the `bench` extra) into `out` until sent SIGINT."""
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
                             "--format", "raw", "--rate", "200", "--nonblocking", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def preload(bootstrap: str, topic: str, n: int) -> tuple[int, float]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=20, max_batch_size=512 * 1024, compression_type=None)
    await producer.start()
    t0 = time.monotonic()
    sent = 0
    customers = max(1, n // 3)
    try:
        pending = []
        for body in programme(Programme(referrers=max(10, customers // 30), customers=customers, seed=99)):
            pending.append(await producer.send(topic, body, key=customer_of(body).encode()))
            sent += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            if sent >= n:
                break
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent, time.monotonic() - t0


async def caught_up(bootstrap: str, app_id: str, t: Topics) -> bool:
    internal = [f"{t.prefix}.worker-{s}.{t.env}" for s in ("customer", "invoice", "referrer")]
    outbox = f"{t.prefix}.worker-outbox.{t.env}"
    groups = {app_id: [t.stripe_events, *internal], f"{app_id}-publisher": [outbox]}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        for group, topics in groups.items():
            committed = await admin.list_consumer_group_offsets(group)
            tps = [TopicPartition(x, p) for x in topics for p in consumer.partitions_for_topic(x) or ()]
            for tp, end in (await consumer.end_offsets(tps)).items():
                meta = committed.get(tp)
                if end > 0 and (meta is None or meta.offset < end):
                    return False
        return True
    finally:
        await consumer.stop()
        await admin.close()


async def committed_events(bootstrap: str, app_id: str, topic: str) -> int:
    """How many stripe-events records the worker has finished (committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(app_id)
        return sum(meta.offset for tp, meta in committed.items() if tp.topic == topic and meta.offset > 0)
    finally:
        await admin.close()


async def worker_stats(web: int) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{web}/readyz") as resp:
        return dict(await resp.json(content_type=None))


async def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{url}: the process exited with {proc.returncode}")
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url} not ready within {timeout_s}s")


async def latency(
    bootstrap: str, t: Topics, ingest_url: str, rate: int, seconds: int, *, with_hops: bool = True,
) -> dict[str, object]:
    """Post customer.created webhooks at `rate`/s; time 200 → new_signup committed."""
    acked: dict[str, float] = {}
    acked_wall: dict[str, float] = {}
    seen: dict[str, float] = {}
    total = rate * seconds
    run = uuid.uuid4().hex[:6]
    consumer = AIOKafkaConsumer(t.notifications, bootstrap_servers=bootstrap,
                                isolation_level="read_committed", auto_offset_reset="latest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    await consumer.seek_to_end()
    for tp in consumer.assignment():
        await consumer.position(tp)
    stop = asyncio.Event()
    seen_wall: dict[str, float] = {}

    async def read() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for msgs in batch.values():
                for m in msgs:
                    doc = orjson.loads(m.value)
                    if doc.get("kind") == "new_signup":
                        seen.setdefault(doc["source_event_id"], now)
                        seen_wall.setdefault(doc["source_event_id"], time.time())

    reader = asyncio.create_task(read())
    now = int(time.time())
    rng = random.Random(5)
    host, port = ingest_url.removeprefix("http://").rsplit(":", 1)
    # built and signed before the clock starts: the load should cost the machine little
    requests = []
    for i in range(total):
        eid = f"evt_lat_{run}_{i}"
        body = customer(eid, f"cus_lat_{run}_{i}", now, ucc=f"ucc_lat_{rng.randrange(500)}",
                        user=f"u{run}_{i}")
        requests.append((eid, http_post(host, int(port), "/webhooks/stripe/sandbox", body)))

    def answered(eid: str, status: int) -> None:
        if status == 200:
            acked[eid] = time.monotonic()
            acked_wall[eid] = time.time()

    failures, sent_s = await post_at_rate(host, int(port), requests, rate, answered)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not set(acked) <= set(seen):
        await asyncio.sleep(0.2)
    stop.set()
    await reader
    await consumer.stop()
    lat = [seen[e] - acked[e] for e in acked if e in seen]
    # when the latency builds up: p50 per fifth of the run, in sending order
    order = sorted((acked[e], seen[e] - acked[e]) for e in acked if e in seen)
    fifths = [round(percentile([x for _, x in order[i * len(order) // 5:(i + 1) * len(order) // 5]], 0.5), 3)
              for i in range(5)] if len(order) >= 5 else []
    hop = await hops(bootstrap, t, acked_wall, seen_wall) if with_hops else {}
    return {
        "webhooks": total, "target_rate_per_s": rate, "achieved_rate_per_s": round(total / sent_s, 1),
        "ingest_failures": failures, "notifications_seen": len(lat), "missing": len(acked) - len(lat),
        "p50_s": round(percentile(lat, 0.50), 3) if lat else None,
        "p99_s": round(percentile(lat, 0.99), 3) if lat else None,
        "max_s": round(max(lat), 3) if lat else None,
        "mean_s": round(statistics.mean(lat), 3) if lat else None,
        "p50_s_by_fifth_of_run": fifths,
        "hops_ms": hop,
    }


async def hops(
    bootstrap: str, t: Topics, acked: dict[str, float], seen: dict[str, float],
) -> dict[str, object]:
    """Where the latency goes, from the records' own timestamps (set when each producer
    took the record): stripe-events → worker-referrer (the customer stage
    sent its Signup) → worker-outbox (the referrer stage sent the notification) →
    notifications (the publisher sent it in a transaction) → seen committed by the client."""
    stamps: dict[str, dict[str, float]] = {}
    stages = [("stripe-events", t.stripe_events, "id"),
              ("referrer-in", f"{t.prefix}.worker-referrer.{t.env}", "event_id"),
              ("outbox", f"{t.prefix}.worker-outbox.{t.env}", "source_event_id"),
              ("notifications", t.notifications, "source_event_id")]
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                              isolation_level="read_committed")
    await reader.start()
    try:
        for name, topic, field in stages:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending:
                for msgs in (await reader.getmany(timeout_ms=500, max_records=5000)).values():
                    for m in msgs:
                        eid = orjson.loads(m.value).get(field) if m.value else None
                        if eid in acked:
                            stamps.setdefault(eid, {}).setdefault(name, m.timestamp / 1000)
                for tp in list(pending):
                    if await reader.position(tp) >= ends[tp]:
                        pending.discard(tp)
    finally:
        await reader.stop()
    # (ingest stamps its record before it answers 200, so that step is left out)
    steps = [("customer stage", "stripe-events", "referrer-in"),
             ("referrer stage", "referrer-in", "outbox"),
             ("publisher", "outbox", "notifications"),
             ("commit -> seen", "notifications", None)]
    out: dict[str, object] = {}
    for label, a, b in steps:
        d = []
        for eid, st in stamps.items():
            start = st.get(a) if a else acked[eid]
            end = st.get(b) if b else seen.get(eid)
            if start is not None and end is not None:
                d.append(1000 * (end - start))
        if d:
            out[label] = {"p50": round(percentile(d, 0.5), 1), "p99": round(percentile(d, 0.99), 1)}
    return out


async def catch_up(bootstrap: str, cluster: localkafka.Cluster | None, env: dict[str, str],
                   args: argparse.Namespace, label: str, profile: Path | None,
                   procs: list[subprocess.Popen[bytes]], prefix: str | None = None) -> dict[str, Any]:
    """Preload `args.events` into stripe-events of `prefix` (fresh topics when None) and time
    one worker (run with `env`) from its start until it has caught up; its CPU per event."""
    fresh = prefix is None
    prefix = prefix or f"bench{uuid.uuid4().hex[:6]}"
    t = Topics("sandbox", prefix)
    if fresh:
        subprocess.run([REFSTREAM, "topics", "create", "--prefix", prefix, "--env", "sandbox",
                        "--partitions", str(PARTITIONS)], env=env, check=True, capture_output=True)
    tmp = Path(env["REFSTREAM_DATA_DIR"]).parent
    data = Path(env["REFSTREAM_DATA_DIR"]) / (label.split()[0] if label else "worker")
    env = {**env, "REFSTREAM_DATA_DIR": str(data)}
    tag = f"{label}: " if label else ""
    sent, took = await preload(bootstrap, t.stripe_events, args.events)
    print(f"{tag}preloaded {sent} events into {t.stripe_events} in {took:.1f}s")
    preloaded = {"events": sent, "seconds": round(took, 1)}

    # our own broker's CPU during the catch-up: its share of the work per event
    broker_pids = [pid for n in cluster.nodes if (pid := localkafka._read_pid(n)) is not None] \
        if cluster is not None else []
    broker_cpu0 = sum(cpu_seconds(pid) for pid in broker_pids)
    web = free_port()
    t0 = time.monotonic()
    log_path = tmp / f"worker{'-' + label.split()[0] if label else ''}.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([REFSTREAM, "worker", "--web-port", str(web), "--topic-prefix", prefix],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    procs.append(worker)
    spy = None
    if profile is not None:
        spy = py_spy(worker.pid, profile)
    await wait_http(f"http://127.0.0.1:{web}/readyz", worker, 120)
    ready = time.monotonic() - t0
    done = False
    while not (done := await caught_up(bootstrap, f"{prefix}-sandbox", t)):
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited with {worker.returncode}; see {log_path}")
        if time.monotonic() - t0 > args.max_catch_up_s:
            break
        await asyncio.sleep(1.0)
    took = time.monotonic() - t0
    cpu = cpu_seconds(worker.pid)
    broker_cpu = sum(cpu_seconds(pid) for pid in broker_pids) - broker_cpu0
    finished = sent if done else await committed_events(bootstrap, f"{prefix}-sandbox", t.stripe_events)
    rate = finished / took
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{web}/readyz") as resp:
        stats = await resp.json(content_type=None)
    if done:
        print(f"{tag}one worker: start → caught up in {took:.1f}s (ready after {ready:.1f}s): "
              f"{rate:,.0f} events/s")
    else:
        print(f"{tag}one worker: NOT caught up after {took:.0f}s: {finished} of {sent} events finished "
              f"(stage 1 committed): {rate:,.0f} events/s")
    out = {"caught_up": done, "seconds": round(took, 1), "events_finished": finished,
           "ready_after_s": round(ready, 1), "events_per_s": round(rate),
           "target_events_per_s": 5000, "met": done and rate >= 5000,
           "worker_cpu_s": round(cpu, 1), "events_per_cpu_s": round(finished / cpu),
           "worker_cpu_us_per_event": round(1e6 * cpu / finished, 1),
           "broker_cpu_s": round(broker_cpu, 1) if broker_pids else None,
           "load_average_after": os.getloadavg(), "worker_stats": stats, "preload": preloaded}
    print(f"  the worker used {cpu:.0f} CPU seconds: {finished / cpu:,.0f} events per CPU second, "
          f"{1e6 * cpu / finished:,.0f} µs per event"
          + (f"; the broker {broker_cpu:.0f} CPU seconds" if broker_pids else "")
          + f"; load average {os.getloadavg()[0]:.1f}")
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        spy.wait(timeout=60)
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    return out


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--warmup-s", type=int, default=10,
                    help="Post webhooks at --rate for this long before the latency run, not measured: "
                         "a fresh broker spends about half its CPU in its JIT compiler at first.")
    ap.add_argument("--max-catch-up-s", type=int, default=900,
                    help="Stop waiting for the catch-up after this long and report the rate so far.")
    ap.add_argument("--profile", type=Path, default=None,
                    help="Sample the worker with py-spy during the catch-up and write collapsed "
                         "stacks (flamegraph input) to this file.")
    ap.add_argument("--profile-latency", type=Path, default=None,
                    help="Sample the worker with py-spy during the latency run (its steady state) "
                         "and write collapsed stacks to this file.")
    ap.add_argument("--before", default=None,
                    help="First time a worker run from this directory (a compiled copy of an earlier "
                         "commit), or 'interpreted' (this checkout's interpreted core), on its own copy "
                         "of the events, and print both workers' CPU per event.")
    ap.add_argument("--no-latency", action="store_true", help="Only the catch-up.")
    ap.add_argument("--trace-fetches", type=Path, default=None,
                    help="Trace the latency-run worker's Kafka fetches into this directory and print "
                         "where records waited (bench/fetch_trace.py).")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="refstream-bench-pipeline-"))
    cluster = None
    bootstrap = os.environ.get("REFSTREAM_KAFKA_BOOTSTRAP")
    if not bootstrap:
        port = 20000 + 2 * random.randrange(5000)
        cluster = localkafka.Cluster(tmp / "kafka", port=port)
        bootstrap = localkafka.up(cluster)
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    t = Topics("sandbox", prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFSTREAM_")}
    env.update(REFSTREAM_KAFKA_BOOTSTRAP=bootstrap, REFSTREAM_STRIPE_SECRETS_SANDBOX=SECRET,
               REFSTREAM_DATA_DIR=str(tmp / "data"), REFSTREAM_RULES=str(ROOT / "examples" / "rules.toml"))
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {"events": args.events, "partitions": PARTITIONS,
                                 "guarantee": "at-least-once stages + watermarks + transactional publisher "
                                              "(effectively exactly-once outputs, docs/pipeline.md)",
                                 "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                             "load_average_at_start": os.getloadavg()}}
    try:
        subprocess.run([REFSTREAM, "topics", "create", "--prefix", prefix, "--env", "sandbox",
                        "--partitions", str(PARTITIONS)], env=env, check=True, capture_output=True)
        if args.before is not None:
            before_env = dict(env)
            if args.before == "interpreted":
                before_env["REFSTREAM_INTERPRETED"] = "1"
            else:
                before_env["PYTHONPATH"] = str(Path(args.before).resolve())
            label = "before" if args.before != "interpreted" else "before (interpreted core)"
            result["catch_up_before"] = await catch_up(bootstrap, cluster, before_env, args, label, None,
                                                       procs)
            result["catch_up_before"]["worker_code"] = args.before
        result["catch_up"] = await catch_up(bootstrap, cluster, env, args, "after" if args.before else "",
                                            args.profile, procs, prefix=prefix)
        broker_pids = [pid for n in cluster.nodes if (pid := localkafka._read_pid(n)) is not None] \
            if cluster is not None else []
        if args.before is not None:
            before, after = result["catch_up_before"], result["catch_up"]
            print(f"worker CPU per event folded: before {before['worker_cpu_us_per_event']} µs, "
                  f"after {after['worker_cpu_us_per_event']} µs "
                  f"(×{before['worker_cpu_us_per_event'] / after['worker_cpu_us_per_event']:.2f})")
        if not args.no_latency:
            # latency on a caught-up worker: fresh topics, no backlog
            prefix = f"bench{uuid.uuid4().hex[:6]}"
            t = Topics("sandbox", prefix)
            subprocess.run([REFSTREAM, "topics", "create", "--prefix", prefix, "--env", "sandbox",
                            "--partitions", str(PARTITIONS)], env=env, check=True, capture_output=True)
            web = free_port()
            command, worker_env = [REFSTREAM], env
            if args.trace_fetches is not None:
                args.trace_fetches.mkdir(parents=True, exist_ok=True)
                command = [sys.executable, "-c", "from bench.fetch_trace import run; run()"]
                worker_env = {**env, "PYTHONPATH": str(ROOT),
                              "REFSTREAM_BENCH_FETCH_TRACE_DIR": str(args.trace_fetches.resolve())}
            with (tmp / "worker-2.log").open("wb") as log:
                worker = subprocess.Popen(
                    [*command, "worker", "--web-port", str(web), "--topic-prefix", prefix],
                    env=worker_env, stdout=log, stderr=subprocess.STDOUT)
            procs.append(worker)
            await wait_http(f"http://127.0.0.1:{web}/readyz", worker, 120)

            ingest_port = free_port()
            with (tmp / "ingest.log").open("wb") as log:
                ingest = subprocess.Popen(
                    [REFSTREAM, "ingest", "--port", str(ingest_port), "--topic-prefix", prefix],
                    env=env, stdout=log, stderr=subprocess.STDOUT)
            procs.append(ingest)
            await wait_http(f"http://127.0.0.1:{ingest_port}/readyz", ingest, 60)
            if args.warmup_s > 0:
                warm = await latency(bootstrap, t, f"http://127.0.0.1:{ingest_port}", args.rate,
                                     args.warmup_s, with_hops=False)
                print(f"warm-up at {warm['achieved_rate_per_s']}/s for {args.warmup_s}s: "
                      f"p50 {warm['p50_s']}s, p99 {warm['p99_s']}s (not counted)")
            spy = None
            if args.profile_latency is not None:
                spy = py_spy(worker.pid, args.profile_latency)
            # steady-state CPU per webhook: the worker's, its broker's and ingest's during the run
            # (the client's wait for the last notifications adds a little idle time, no CPU)
            cpu0 = {"worker": cpu_seconds(worker.pid), "worker_system": system_seconds(worker.pid),
                    "ingest": cpu_seconds(ingest.pid), "broker": sum(cpu_seconds(pid) for pid in broker_pids),
                    "bench_client": time.process_time()}
            threads0 = broker_threads(broker_pids)
            stats0 = await worker_stats(web)
            lat = await latency(bootstrap, t, f"http://127.0.0.1:{ingest_port}", args.rate, args.seconds)
            cpu1 = {"worker": cpu_seconds(worker.pid), "worker_system": system_seconds(worker.pid),
                    "ingest": cpu_seconds(ingest.pid), "broker": sum(cpu_seconds(pid) for pid in broker_pids),
                    "bench_client": time.process_time()}
            stats1 = await worker_stats(web)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            n = int(lat["webhooks"])  # type: ignore[call-overload]
            threads1 = broker_threads(broker_pids)
            lat["broker_cpu_ms_per_webhook_by_thread"] = {
                k: round(1000 * (v - threads0.get(k, 0.0)) / n, 3) for k, v in threads1.items()}
            used = {k: cpu1[k] - cpu0[k] for k in cpu0 if k != "broker" or broker_pids}
            lat["cpu_ms_per_webhook"] = {k: round(1000 * v / n, 3) for k, v in used.items()}
            lat["worker_stats_delta"] = {k: round(stats1[k] - stats0[k], 3) for k in stats1
                                         if isinstance(stats1.get(k), int | float)
                                         and isinstance(stats0.get(k), int | float)
                                         and k != "last_batch_at"}
            lat["load_average_after"] = os.getloadavg()
            print("  CPU ms per webhook: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                        lat["cpu_ms_per_webhook"].items())  # type: ignore[attr-defined]
                  + " (broker: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                             lat["broker_cpu_ms_per_webhook_by_thread"].items())  # type: ignore[attr-defined]
                  + f"); load average {os.getloadavg()[0]:.1f}")
            lat["target_p99_s"] = 2.0
            p99 = lat["p99_s"]
            lat["met"] = isinstance(p99, float) and p99 < 2.0 and lat["missing"] == 0
            print(f"ingest 200 → notification at {lat['achieved_rate_per_s']}/s: p50 {lat['p50_s']}s, "
                  f"p99 {p99}s, max {lat['max_s']}s ({lat['notifications_seen']}/{lat['webhooks']} seen)")
            print(f"  p50 by fifth of the run: {lat['p50_s_by_fifth_of_run']}")
            print("  hops (ms): " + "; ".join(f"{k} p50 {v['p50']} p99 {v['p99']}"  # type: ignore[index]
                                            for k, v in lat["hops_ms"].items()))  # type: ignore[attr-defined]
            result["latency"] = lat
            if args.trace_fetches is not None:
                from bench.fetch_trace import summary

                trace = args.trace_fetches / f"fetch-{worker.pid}.tsv"
                print(f"fetch trace {trace} (after the warm-up):")
                print(summary(str(trace), skip=args.warmup_s / (args.warmup_s + args.seconds)))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        if cluster is not None:
            localkafka.down(cluster.data_dir)
        # the broker's log and the worker's tables are ~1 GB after a default run: keep only
        # the process logs (worker.log, ingest.log) for a look afterwards
        for bulky in (tmp / "kafka", tmp / "data"):
            shutil.rmtree(bulky, ignore_errors=True)
        print(f"logs in {tmp}")
    result["machine"]["load_average_at_end"] = os.getloadavg()  # type: ignore[index]
    out = ROOT / "bench" / "results" / "pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
