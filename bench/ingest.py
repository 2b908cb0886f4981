"""Benchmark: signed webhooks into a real ingest process over loopback, durably into Kafka.

    .venv/bin/python bench/ingest.py [--bootstrap HOST:PORT] [--duration 10] [--concurrency 64]

Starts a local broker with refstream's own localkafka when no --bootstrap is given, creates
private topics, starts `refstream ingest` as a separate process, and drives pre-signed
events at it from this process (aiohttp, one connection pool). Then, with the same load
generator, it measures the reference handler Stripe's docs show (Flask +
`stripe.Webhook.construct_event` under gunicorn, no Kafka) and prints the ratio.
Results go to bench/results/ingest.json. Needs the `bench` extra (flask, gunicorn).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refstream import localkafka  # noqa: E402
from refstream.commands.topics import create_topics  # noqa: E402
from schemas.topics import Topics  # noqa: E402
from tests.conftest import sign  # noqa: E402

SECRET = "whsec_bench_0123456789abcdef0123456789abcdef"
FIXTURE = ROOT.parent / "shared" / "stripe-fixtures" / "current" / "invoice.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_bodies(n: int) -> list[tuple[bytes, str]]:
    """n distinct invoice.paid events (a real fixture object, ~5 KB), signed now."""
    invoice = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {"id": "in_1", "customer": "cus_1"}
    out = []
    for i in range(n):
        invoice["id"] = f"in_bench{i:07d}"
        invoice["customer"] = f"cus_bench{i % 5000:05d}"
        doc = {"id": f"evt_bench{uuid.uuid4().hex[:16]}", "object": "event", "type": "invoice.paid",
               "api_version": "2026-06-24.dahlia", "created": int(time.time()), "livemode": False,
               "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
               "data": {"object": invoice}}
        body = orjson.dumps(doc)
        out.append((body, sign(body, SECRET)))
    return out


async def drive(url: str, bodies: list[tuple[bytes, str]], duration_s: float, concurrency: int,
                warmup_s: float, mark: Callable[[], object] = lambda: None) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    next_i = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def worker() -> None:
            nonlocal next_i, errors
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                body, header = bodies[next_i % len(bodies)]
                next_i += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers={
                        "Stripe-Signature": header, "Content-Type": "application/json"}) as resp:
                        await resp.read()
                        status = resp.status
                except aiohttp.ClientError:
                    errors += 1
                    continue
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    latencies.append(t1 - t0)
                    statuses[status] = statuses.get(status, 0) + 1

        async def start_measuring() -> None:
            await asyncio.sleep(warmup_s)
            mark()

        await asyncio.gather(start_measuring(), *(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - measure_from
    latencies.sort()
    ok = statuses.get(200, 0)

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {"requests": len(latencies), "ok": ok, "statuses": statuses, "client_errors": errors,
            "seconds": round(elapsed, 2), "per_second": round(ok / elapsed, 1),
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "sent_total": next_i, "measured_requests": len(latencies)}


WRK_SCRIPT = r"""
local reqs = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    local tab = line:find("\t")
    reqs[#reqs + 1] = wrk.format("POST", args[2], {
      ["Stripe-Signature"] = line:sub(1, tab - 1),
      ["Content-Type"] = "application/json",
    }, line:sub(tab + 1))
  end
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
done = function(summary, latency, requests)
  io.write(string.format(
    "RESULT %d %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
"""


def drive_wrk(url: str, bodies: list[tuple[bytes, str]], duration_s: float, concurrency: int,
              warmup_s: float, workdir: Path, mark: Callable[[], object] = lambda: None) -> dict[str, Any]:
    """The same load from `wrk` (C, epoll): a load generator that leaves the cores to the server."""
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    script = workdir / "webhooks.lua"
    script.write_text(WRK_SCRIPT)
    data = workdir / "webhooks.tsv"
    with data.open("wb") as f:
        # a pool of distinct events, cycled: a repeat is a duplicated delivery, written again like
        # the first (building each request costs wrk CPU once, at start-up, so keep it small)
        for body, header in bodies[:2000]:
            f.write(header.encode() + b"\t" + body + b"\n")
    base = ["wrk", "-t1", f"-c{concurrency}", "--latency", "-s", str(script),
            f"{parts.scheme}://{parts.netloc}", "--", str(data), parts.path]

    def run(seconds: float) -> list[int]:
        out = subprocess.run([*base[:1], f"-d{max(1, round(seconds))}s", *base[1:]],
                             capture_output=True, text=True, check=True).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
        return [int(x) for x in line.split()[1:]]

    warm = run(warmup_s)[0] if warmup_s > 0 else 0
    mark()
    n, dur_us, p50, p90, p99, non2xx, *errs = run(duration_s)
    seconds = dur_us / 1e6
    ok = n - non2xx
    return {"client": "wrk", "requests": n, "ok": ok, "statuses": {"2xx": ok, "other": non2xx},
            "client_errors": sum(errs), "seconds": round(seconds, 2), "per_second": round(ok / seconds, 1),
            "p50_ms": round(p50 / 1000, 2), "p90_ms": round(p90 / 1000, 2), "p99_ms": round(p99 / 1000, 2),
            "sent_total": n + warm, "measured_requests": n}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def jit_cpu_seconds(pids: list[int]) -> float:
    """CPU time of the JVM's JIT compiler threads ("C1/C2 CompilerThread") in `pids`: how much
    of the broker's CPU in a window went to compiling rather than serving."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                if "CompilerThre" in (task / "comm").read_text():
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # the process may have exited
            total += cpu_seconds(pid)
    return total


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout_s}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def count_records(bootstrap: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="a running Kafka; default: start a local broker for the run")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per target")
    # a broker started for the run is still JIT-compiling after 15 s and 45 s of load, which
    # counts a one-time start-up cost as per-webhook broker CPU; after 60 s it has settled
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="seconds of load before measuring (a fresh broker's JIT compiles meanwhile)")
    ap.add_argument("--concurrency", type=int, default=64, help="connections in flight")
    ap.add_argument("--workers", type=int, default=1, help="`refstream ingest --workers N`: processes "
                    "sharing the port")
    ap.add_argument("--linger-ms", type=int, default=5, help="ingest's producer batching")
    ap.add_argument("--gunicorn-workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto",
                    help="load generator: wrk when installed (apt-get install wrk), else aiohttp")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ingest.json"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="refstream-bench-"))
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)

    def load(url: str, bodies: list[tuple[bytes, str]], pids: list[list[int]]
             ) -> tuple[dict[str, Any], list[float]]:
        """Drive `url`; also the CPU seconds each group of `pids` spent in the measured window
        (after the warm-up), the last group being this process and its reaped children (wrk)."""
        at_start: list[float] = []

        def mark() -> None:
            at_start[:] = [cpu_of(group) for group in pids] + [jit_cpu_seconds(pids[1])]

        if use_wrk:
            result = drive_wrk(url, bodies, args.duration, args.concurrency, args.warmup, tmp, mark)
        else:
            result = asyncio.run(drive(url, bodies, args.duration, args.concurrency, args.warmup, mark))
        if not at_start:
            mark()
        now = [cpu_of(group) for group in pids] + [jit_cpu_seconds(pids[1])]
        return result, [after - before for after, before in zip(now, at_start, strict=True)]

    cluster = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        bootstrap = args.bootstrap
        if not bootstrap:
            port = random.randrange(21000, 29000, 2)
            while not (localkafka._port_free(port) and localkafka._port_free(port + 1)):
                port = random.randrange(21000, 29000, 2)
            cluster = localkafka.Cluster(tmp / "kafka", port=port)
            print(f"starting a local broker on {cluster.bootstrap} …", flush=True)
            bootstrap = localkafka.up(cluster)
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        asyncio.run(create_topics(bootstrap, ["sandbox"], prefix=prefix))
        topic = Topics("sandbox", prefix).stripe_events

        # wrk cycles through a pool of 2,000 (see drive_wrk); the aiohttp client sends each once
        n = 2000 if use_wrk else int((args.duration + args.warmup) * 6000) + 1000
        print(f"signing {n} events …", flush=True)
        bodies = make_bodies(n)
        env = {**os.environ, "REFSTREAM_KAFKA_BOOTSTRAP": bootstrap,
               "REFSTREAM_STRIPE_SECRETS_SANDBOX": SECRET, "PYTHONUNBUFFERED": "1"}
        refstream = str(Path(sys.executable).parent / "refstream")

        port = free_port()
        log = open(tmp / "ingest.log", "wb")  # noqa: SIM115
        cmd = [refstream, "ingest", "--port", str(port), "--topic-prefix", prefix,
               "--linger-ms", str(args.linger_ms), "--workers", str(args.workers)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True))
        wait_http(f"http://127.0.0.1:{port}/healthz", 30, procs[0])
        ingest_pids = [procs[0].pid]
        if args.workers > 1:  # the workers are the parent's children; the warm-up covers their start
            deadline = time.monotonic() + 30
            while len(ingest_pids) < args.workers + 1 and time.monotonic() < deadline:
                time.sleep(0.2)
                ingest_pids = [procs[0].pid] + [int(c) for c in Path(
                    f"/proc/{procs[0].pid}/task/{procs[0].pid}/children").read_text().split()]
        print(f"driving ingest ({args.workers} worker(s)) for {args.duration:g}s at "
              f"concurrency {args.concurrency} …", flush=True)
        broker_pids = [int(n.pid_file.read_text()) for n in cluster.nodes] if cluster else []
        ingest, cpu = load(f"http://127.0.0.1:{port}/webhooks/stripe/sandbox", bodies,
                           [ingest_pids, broker_pids, [os.getpid()]])
        measured = max(ingest["measured_requests"], 1)
        # CPU per webhook in the measured window (steady state, after the warm-up): what the
        # 2 shared cores were spent on
        ingest["cpu_ms_per_webhook"] = {
            name: round(seconds / measured * 1000, 3)
            for name, seconds in zip(("ingest", "broker", "load_generator", "broker_jit_compiler"), cpu,
                                     strict=True)
        }
        for p in procs:
            stop(p)
        procs.clear()
        stored = asyncio.run(count_records(bootstrap, topic))
        ingest["stored_records"] = stored
        acked_total = ingest["ok"]
        print(f"ingest:    {ingest['per_second']:8.1f} durable webhooks/s  p50 {ingest['p50_ms']} ms  "
              f"p99 {ingest['p99_ms']} ms  statuses {ingest['statuses']}  records in topic {stored}\n"
              f"           CPU ms per webhook: {ingest['cpu_ms_per_webhook']}")
        if stored < acked_total:
            print("ERROR: fewer records in the topic than 200 answers", file=sys.stderr)

        reference: dict[str, Any] | None = None
        if not args.skip_reference:
            if not shutil.which("gunicorn", path=str(Path(sys.executable).parent)):
                raise SystemExit("gunicorn is missing: .venv/bin/pip install -e '.[bench]'")
            rport = free_port()
            gunicorn = str(Path(sys.executable).parent / "gunicorn")
            rlog = open(tmp / "reference.log", "wb")  # noqa: SIM115
            rp = subprocess.Popen(
                [gunicorn, "-w", str(args.gunicorn_workers), "-b", f"127.0.0.1:{rport}",
                 "--log-level", "warning", "bench.reference_flask:app"],
                env=env, cwd=ROOT, stdout=rlog, stderr=rlog, start_new_session=True)
            procs.append(rp)
            deadline = time.monotonic() + 30
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", rport)) == 0:
                        break
                if time.monotonic() > deadline or rp.poll() is not None:
                    raise SystemExit(f"the reference gunicorn did not start; see {tmp / 'reference.log'}")
                time.sleep(0.2)
            bodies = make_bodies(n)  # fresh timestamps
            print(f"driving the reference (Flask + construct_event, gunicorn -w {args.gunicorn_workers}) …",
                  flush=True)
            ref_pids = [rp.pid] + [int(c) for c in Path(f"/proc/{rp.pid}/task/{rp.pid}/children")
                                   .read_text().split()]
            reference, ref_cpu = load(f"http://127.0.0.1:{rport}/webhooks/stripe/sandbox", bodies,
                                      [ref_pids, [], [os.getpid()]])
            rmeasured = max(reference["measured_requests"], 1)
            reference["cpu_ms_per_webhook"] = {
                "reference": round(ref_cpu[0] / rmeasured * 1000, 3),
                "load_generator": round(ref_cpu[2] / rmeasured * 1000, 3),
            }
            stop(rp)
            procs.clear()
            print(f"reference: {reference['per_second']:8.1f} verified webhooks/s "
                  f"p50 {reference['p50_ms']} ms  p99 {reference['p99_ms']} ms  "
                  f"statuses {reference['statuses']}\n"
                  f"           CPU ms per webhook: {reference['cpu_ms_per_webhook']}")

        ratio = round(ingest["per_second"] / reference["per_second"], 2) if reference else None
        if ratio is not None:
            print(f"ratio ingest/reference: {ratio}")
        result = {
            "benchmark": "ingest",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_avg_at_end": os.getloadavg()},
            "params": vars(args) | {"body_bytes": len(bodies[0][0])},
            "kafka": {"bootstrap": bootstrap, "started_by_bench": cluster is not None},
            "ingest": ingest,
            "reference": reference,
            "ratio": ratio,
            "targets": {"webhooks_per_s": 3000, "p99_ms": 50, "ratio": 1.0},
            "met": {"webhooks_per_s": ingest["per_second"] >= 3000, "p99_ms": ingest["p99_ms"] < 50,
                    "ratio": ratio is not None and ratio >= 1.0},
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    finally:
        for p in procs:
            stop(p)
        if cluster is not None:
            localkafka.down(cluster.data_dir)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
