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

    .venv/bin/python bench/pipeline.py [--events 200000] [--rate 500] [--seconds 20]
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
from pathlib import Path

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: on a shared, loaded machine a fairer measure
    than wall time, which mostly measures the neighbours."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


async def latency(bootstrap: str, t: Topics, ingest_url: str, rate: int, seconds: int) -> dict[str, object]:
    """Post customer.created webhooks at `rate`/s; time 200 → new_signup committed."""
    acked: dict[str, float] = {}
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

    async def read() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for msgs in batch.values():
                for m in msgs:
                    doc = orjson.loads(m.value)
                    if doc.get("kind") == "new_signup":
                        seen.setdefault(doc["source_event_id"], now)

    reader = asyncio.create_task(read())
    failures = 0
    now = int(time.time())
    rng = random.Random(5)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:

        async def post(i: int) -> None:
            nonlocal failures
            eid = f"evt_lat_{run}_{i}"
            body = customer(eid, f"cus_lat_{run}_{i}", now, ucc=f"ucc_lat_{rng.randrange(500)}",
                            user=f"u{run}_{i}")
            headers = {"Stripe-Signature": sign(body), "Content-Type": "application/json"}
            async with http.post(f"{ingest_url}/webhooks/stripe/sandbox", data=body, headers=headers) as r:
                if r.status == 200:
                    acked[eid] = time.monotonic()
                else:
                    failures += 1

        t0 = time.monotonic()
        tasks = []
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(i)))
        await asyncio.gather(*tasks)
        sent_s = time.monotonic() - t0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not set(acked) <= set(seen):
        await asyncio.sleep(0.2)
    stop.set()
    await reader
    await consumer.stop()
    lat = [seen[e] - acked[e] for e in acked if e in seen]
    return {
        "webhooks": total, "target_rate_per_s": rate, "achieved_rate_per_s": round(total / sent_s, 1),
        "ingest_failures": failures, "notifications_seen": len(lat), "missing": len(acked) - len(lat),
        "p50_s": round(percentile(lat, 0.50), 3) if lat else None,
        "p99_s": round(percentile(lat, 0.99), 3) if lat else None,
        "max_s": round(max(lat), 3) if lat else None,
        "mean_s": round(statistics.mean(lat), 3) if lat else None,
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--max-catch-up-s", type=int, default=900,
                    help="Stop waiting for the catch-up after this long and report the rate so far.")
    ap.add_argument("--profile", type=Path, default=None,
                    help="Sample the worker with py-spy during the catch-up and write collapsed "
                         "stacks (flamegraph input) to this file.")
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
    result: dict[str, object] = {"events": args.events, "partitions": PARTITIONS,
                                 "guarantee": "at-least-once stages + watermarks + transactional publisher "
                                              "(effectively exactly-once outputs, docs/pipeline.md)",
                                 "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                             "load_average_at_start": os.getloadavg()}}
    try:
        subprocess.run([REFSTREAM, "topics", "create", "--prefix", prefix, "--env", "sandbox",
                        "--partitions", str(PARTITIONS)], env=env, check=True, capture_output=True)
        sent, took = await preload(bootstrap, t.stripe_events, args.events)
        print(f"preloaded {sent} events into {t.stripe_events} in {took:.1f}s")
        result["preload"] = {"events": sent, "seconds": round(took, 1)}

        # our own broker's CPU during the catch-up: its share of the work per event
        broker_pids = [pid for n in cluster.nodes if (pid := localkafka._read_pid(n)) is not None] \
            if cluster is not None else []
        broker_cpu0 = sum(cpu_seconds(pid) for pid in broker_pids)
        web = free_port()
        t0 = time.monotonic()
        with (tmp / "worker.log").open("wb") as log:
            worker = subprocess.Popen([REFSTREAM, "worker", "--web-port", str(web), "--topic-prefix", prefix],
                                      env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(worker)
        spy = None
        if args.profile is not None:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                    str(worker.pid), "--format", "raw", "--rate", "200", "--nonblocking",
                                    "--output", str(args.profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await wait_http(f"http://127.0.0.1:{web}/readyz", worker, 120)
        ready = time.monotonic() - t0
        done = False
        while not (done := await caught_up(bootstrap, f"{prefix}-sandbox", t)):
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with {worker.returncode}; see {tmp / 'worker.log'}")
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
            print(f"one worker: start → caught up in {took:.1f}s (ready after {ready:.1f}s): "
                  f"{rate:,.0f} events/s")
        else:
            print(f"one worker: NOT caught up after {took:.0f}s: {finished} of {sent} events finished "
                  f"(stage 1 committed): {rate:,.0f} events/s")
        result["catch_up"] = {"caught_up": done, "seconds": round(took, 1), "events_finished": finished,
                              "ready_after_s": round(ready, 1), "events_per_s": round(rate),
                              "target_events_per_s": 5000, "met": done and rate >= 5000,
                              "worker_cpu_s": round(cpu, 1), "events_per_cpu_s": round(finished / cpu),
                              "broker_cpu_s": round(broker_cpu, 1) if broker_pids else None,
                              "load_average_after": os.getloadavg(), "worker_stats": stats}
        print(f"  the worker used {cpu:.0f} CPU seconds: {finished / cpu:,.0f} events per CPU second"
              + (f"; the broker {broker_cpu:.0f} CPU seconds" if broker_pids else "")
              + f"; load average {os.getloadavg()[0]:.1f}")
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(timeout=60)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)

        # latency on a caught-up worker: fresh topics, no backlog
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        t = Topics("sandbox", prefix)
        subprocess.run([REFSTREAM, "topics", "create", "--prefix", prefix, "--env", "sandbox",
                        "--partitions", str(PARTITIONS)], env=env, check=True, capture_output=True)
        web = free_port()
        with (tmp / "worker-2.log").open("wb") as log:
            worker = subprocess.Popen([REFSTREAM, "worker", "--web-port", str(web), "--topic-prefix", prefix],
                                      env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(worker)
        await wait_http(f"http://127.0.0.1:{web}/readyz", worker, 120)

        ingest_port = free_port()
        with (tmp / "ingest.log").open("wb") as log:
            ingest = subprocess.Popen(
                [REFSTREAM, "ingest", "--port", str(ingest_port), "--topic-prefix", prefix],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(ingest)
        await wait_http(f"http://127.0.0.1:{ingest_port}/readyz", ingest, 60)
        lat = await latency(bootstrap, t, f"http://127.0.0.1:{ingest_port}", args.rate, args.seconds)
        lat["target_p99_s"] = 2.0
        p99 = lat["p99_s"]
        lat["met"] = isinstance(p99, float) and p99 < 2.0 and lat["missing"] == 0
        print(f"ingest 200 → notification at {lat['achieved_rate_per_s']}/s: p50 {lat['p50_s']}s, "
              f"p99 {p99}s, max {lat['max_s']}s ({lat['notifications_seen']}/{lat['webhooks']} seen)")
        result["latency"] = lat
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
