"""Fuzz a real `refstream ingest` process and a real broker with 100,000+ hostile requests.

    .venv/bin/python bench/fuzz.py [--cases 100000] [--concurrency 32] [--seed 19]

Starts a local broker (or uses --bootstrap), creates private topics, starts `refstream
ingest` as a process with sandbox and production secrets, then sends the cases of the six
families of tests/faults/test_fuzz_webhook.py (the same functions, here driven by a seeded
random.Random per case, so case i of a seed is always the same request) over raw sockets.
Every answer is judged as in the test (no 5xx, JSON, no header value echoed, the family's
expected status); afterwards both topics are read back and every record must be a body that
was signed with that environment's secret and a fresh timestamp, answered 200 and readable
by the worker's envelope reader.

Prints, and writes to bench/results/fuzz.json: cases per family, the statuses answered, the
number of 5xx (must be 0), unverified bytes written (must be 0), and ingest's RSS before,
during (every --sample-every cases, with the time /healthz took to answer meanwhile) and after.
Exits 1 when any of those checks failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import free_port, stop, wait_http  # noqa: E402
from refstream import localkafka  # noqa: E402
from refstream.commands.topics import create_topics  # noqa: E402
from schemas.topics import Topics  # noqa: E402
from tests.faults.test_fuzz_webhook import ENVS, FAMILIES, Context, Judge, _bomb, exchange  # noqa: E402
from tests.ingest.helpers import (  # noqa: E402
    PRODUCTION_SECRET,
    SANDBOX_OLD_SECRET,
    SANDBOX_SECRET,
    read_topic,
)

# shares of the cases; raw HTTP gets the most, it has the most variants
WEIGHTS = {"valid": 15, "hostile": 15, "raw_http": 25, "signature": 15, "encoding": 12, "strange_body": 18}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def healthz_ms(port: int) -> float:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await reader.read()
    writer.close()
    return round((time.perf_counter() - t0) * 1000, 1)


async def run(port: int, pid: int, args: argparse.Namespace, judge: Judge) -> list[dict[str, Any]]:
    names = list(WEIGHTS)
    weights = [WEIGHTS[n] for n in names]
    ctx = Context(limit=args.max_body_bytes, customers=args.customers)
    samples: list[dict[str, Any]] = []
    next_case = 0
    started = time.monotonic()
    health: list[float] = []

    async def probe_health() -> None:  # /healthz answered while the fuzz runs
        while True:
            try:
                health.append(await healthz_ms(port))
            except OSError:
                health.append(float("inf"))
            await asyncio.sleep(0.5)

    def sample() -> None:
        done = sum(judge.cases.values())
        samples.append({"cases": done, "seconds": round(time.monotonic() - started, 1), "rss_mb": rss_mb(pid),
                        "healthz_max_ms": max(health, default=0.0)})
        health.clear()
        print(f"  {done:>7} cases  {samples[-1]['seconds']:>7.1f} s  ingest RSS {samples[-1]['rss_mb']} MB  "
              f"/healthz max {samples[-1]['healthz_max_ms']} ms  5xx {judge.server_errors}  "
              f"failures {len(judge.failures)}", flush=True)

    async def worker() -> None:
        nonlocal next_case
        while next_case < args.cases:
            i = next_case
            next_case += 1
            rng = random.Random(args.seed * 1_000_003 + i)
            family = rng.choices(names, weights)[0]
            case = FAMILIES[family](rng, ctx)
            judge.answer(case, await exchange(port, case))
            if (i + 1) % args.sample_every == 0:
                sample()

    prober = asyncio.create_task(probe_health())
    sample()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    prober.cancel()
    sample()
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=32, help="connections in flight")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--sample-every", type=int, default=5_000, help="cases between RSS samples")
    ap.add_argument("--max-body-bytes", type=int, default=64 * 1024,
                    help="ingest's REFSTREAM_MAX_BODY_BYTES (smaller than the default 512 KiB, so the "
                         "oversized cases cost the loopback less)")
    ap.add_argument("--customers", type=int, default=None,
                    help="draw the events' customer ids from this many (default: every one new); ingest "
                         "remembers the partition of up to 100,000 keys, so this bounds that cache")
    ap.add_argument("--bootstrap", help="a running Kafka; default: start a local broker for the run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fuzz.json"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="refstream-fuzz-"))
    cluster = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        bootstrap = args.bootstrap
        if not bootstrap:
            port = random.randrange(21000, 29000, 2)
            while not (localkafka._port_free(port) and localkafka._port_free(port + 1)):
                port = random.randrange(21000, 29000, 2)
            cluster = localkafka.Cluster(tmp / "kafka", port=port)
            print(f"starting a local broker on {cluster.bootstrap} …", flush=True)
            bootstrap = localkafka.up(cluster)
        prefix = f"fuzz{uuid.uuid4().hex[:8]}"
        asyncio.run(create_topics(bootstrap, list(ENVS), prefix=prefix))
        env = {**os.environ, "REFSTREAM_KAFKA_BOOTSTRAP": bootstrap,
               "REFSTREAM_STRIPE_SECRETS_SANDBOX": f"{SANDBOX_SECRET},{SANDBOX_OLD_SECRET}",
               "REFSTREAM_STRIPE_SECRETS_PRODUCTION": PRODUCTION_SECRET,
               "REFSTREAM_MAX_BODY_BYTES": str(args.max_body_bytes), "PYTHONUNBUFFERED": "1"}
        ingest_port = free_port()
        log = open(tmp / "ingest.log", "wb")  # noqa: SIM115
        refstream = str(Path(sys.executable).parent / "refstream")
        proc = subprocess.Popen([refstream, "ingest", "--port", str(ingest_port), "--topic-prefix", prefix],
                                env=env, stdout=log, stderr=log, start_new_session=True)
        wait_http(f"http://127.0.0.1:{ingest_port}/healthz", 30, proc)
        rss_start = rss_mb(proc.pid)
        print(f"ingest pid {proc.pid} on :{ingest_port}, RSS {rss_start} MB; {args.cases} cases, "
              f"concurrency {args.concurrency}, seed {args.seed} …", flush=True)
        judge = Judge()
        _bomb("gzip"), _bomb("deflate")  # made once, before the clock starts
        t0 = time.monotonic()
        samples = asyncio.run(run(ingest_port, proc.pid, args, judge))
        elapsed = time.monotonic() - t0
        rss_end = rss_mb(proc.pid)
        alive = proc.poll() is None
        stop(proc)
        print("reading the topics back …", flush=True)
        records = {e: [r.value for r in asyncio.run(read_topic(bootstrap, Topics(e, prefix).stripe_events,
                                                                timeout_s=300)) if r.value is not None]
                   for e in ENVS}
        counts = judge.log(records)
        errors_logged = sum(1 for line in (tmp / "ingest.log").read_text(errors="replace").splitlines()
                            if '"level": "error"' in line or '"level":"error"' in line)

        statuses = {f: dict(sorted(c.items())) for f, c in sorted(judge.statuses.items())}
        all_statuses: Counter[str] = Counter()
        for c in judge.statuses.values():
            all_statuses.update(c)
        result = {
            "benchmark": "fuzz",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_avg_at_end": os.getloadavg()},
            "params": vars(args),
            "seconds": round(elapsed, 1),
            "cases_per_second": round(sum(judge.cases.values()) / elapsed, 1),
            "cases": dict(sorted(judge.cases.items())) | {"total": sum(judge.cases.values())},
            "statuses": statuses,
            "statuses_total": dict(sorted(all_statuses.items())),
            "server_errors_5xx": judge.server_errors,
            "unanswered": dict(judge.unanswered),
            "log": counts,
            "ingest_error_lines": errors_logged,
            "ingest_alive_at_end": alive,
            "rss_mb": {"at_start": rss_start, "at_end": rss_end, "samples": samples},
            "failures": judge.failures[:50],
        }
        ok = (judge.server_errors == 0 and counts["unverified_written"] == 0 and not judge.failures
              and counts["written_after_a_refusal"] == 0 and counts["acknowledged_but_lost"] == 0 and alive)
        result["ok"] = ok
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

        print(f"\n{result['cases']['total']} cases in {result['seconds']} s "
              f"({result['cases_per_second']}/s), seed {args.seed}\n")
        print("| family | cases | answers (status: count) |\n|---|---:|---|")
        for family, n in sorted(judge.cases.items()):
            answers = ", ".join(f"{s}: {c:,}" for s, c in statuses[family].items())
            print(f"| `{family}` | {n:,} | {answers} |")
        print(f"\n5xx: {judge.server_errors}; unverified bytes written: {counts['unverified_written']}; "
              f"records {counts['records']:,} (written after a refusal: {counts['written_after_a_refusal']}, "
              f"written while the sender saw no answer: {counts['written_answer_unseen']}, "
              f"unreadable for the worker: {counts['unreadable_for_the_worker']}, acknowledged but not "
              f"stored: {counts['acknowledged_but_lost']}); error lines in ingest's log: {errors_logged}")
        print(f"ingest RSS: {rss_start} MB at start, {rss_end} MB at the end; samples: "
              + ", ".join(f"{s['cases']}: {s['rss_mb']}" for s in samples))
        for failure in judge.failures[:10]:
            print("FAILURE:", failure[:400])
        print(f"wrote {out}")
        if not ok:
            raise SystemExit(1)
    finally:
        if proc is not None:
            stop(proc)
        if cluster is not None:
            localkafka.down(cluster.data_dir)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
