"""Benchmark: `refstream replay` from a JSONL.gz export and from Kafka, on ≥ 1,000,000 events.

    .venv/bin/python -m bench.replay [--customers 100000] [--referrers 10000] [--repeat 3]

Generates the log with bench/gen.py, writes it to a real broker the way ingest and the
CLI store it (key, headers, timestamps; a private topic prefix), exports it with
`refstream export`'s code to JSONL.gz, then replays each source in its own process, so
each peak RSS is that source's alone. Each source is measured twice: reading only (the
replay side's own cost) and reading + folding with the core's Engine (what an analyst
waits for). `--repeat 3` measures each run three times and keeps the best (the most
events/s), as issue #15 asks. Writes bench/results/replay.json. Targets (issue #15, with
`--jobs 2` on a 2-core machine): ≥ 70,000 events/s from the file, ≥ 45,000 from Kafka.

Uses REFSTREAM_KAFKA_BOOTSTRAP when set (its topics are deleted afterwards); otherwise
starts a throwaway broker on a free port and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"file": 70_000, "kafka": 45_000}  # issue #15: with --jobs 2 on this 2-core machine


def _free_port_pair() -> int:
    for port in range(27100, 29900, 2):
        ok = True
        for p in (port, port + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free port pair on 127.0.0.1")


async def _produce(bootstrap: str, prefix: str, customers: int, referrers: int, seed: int) -> dict[str, int]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from bench.gen import Log
    from schemas.topics import H_ENV, H_EVENT_ID, H_EVENT_TYPE, H_RECEIVED_AT, Topics

    topics = Topics("sandbox", prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # kept forever as in operation: the log's 2026 timestamps would fall to a default retention
        await admin.create_topics([NewTopic(s.name, s.partitions, 1, topic_configs=s.config)
                                   for s in topics.specs(8)[:2]])
    finally:
        await admin.close()
    log = Log(customers, referrers, seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=20, max_batch_size=1024 * 1024, max_request_size=8 * 1024 * 1024)
    await producer.start()
    env = b"sandbox"
    pending = []
    count = stripe = 0
    started = time.perf_counter()
    try:
        for source, key, raw in log.iter_log():
            # bench/gen's bodies start with {"id":"evt_…", … "created":T …}
            ts = int(raw[raw.index(b'"created":') + 10: raw.index(b",", raw.index(b'"created":'))]) \
                if source == "stripe" else int(json.loads(raw)["requested_at"])
            ms = ts * 1000
            if source == "stripe":
                eid = raw[7:raw.index(b'"', 7)]
                typ_at = raw.rindex(b'"type":"') + 8
                typ = raw[typ_at:raw.index(b'"', typ_at)]
                headers = [(H_EVENT_ID, eid), (H_EVENT_TYPE, typ), (H_ENV, env),
                           (H_RECEIVED_AT, str(ms).encode())]
                pending.append(await producer.send(topics.stripe_events, raw, key=key.encode(),
                                                   timestamp_ms=ms, headers=headers))
                stripe += 1
            else:
                pending.append(await producer.send(topics.control, raw, key=key.encode(), timestamp_ms=ms))
            count += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
                rate = count / (time.perf_counter() - started)
                print(f"\rwritten {count:,}/{len(log):,} ({rate:,.0f}/s)", end="", file=sys.stderr)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    print(file=sys.stderr)
    return {"events": count, "stripe_events": stripe, "control_events": count - stripe,
            "write_seconds": round(time.perf_counter() - started, 1)}


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from schemas.topics import Topics

    topics = Topics("sandbox", prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topics.stripe_events, topics.control])
    finally:
        await admin.close()


JOBS = 2  # --jobs of the measured parallel replay (this machine has 2 cores)


def _peak_rss_mib() -> float:
    # VmHWM belongs to this program's address space; ru_maxrss would carry over the
    # parent's peak across fork + exec on Linux.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _child(mode: str, source: str, bootstrap: str, prefix: str) -> None:
    """One measured run in this process: prints a JSON line with seconds, events, peak RSS."""
    from bench.fold import RULES
    from projections.logsource import FileSource, KafkaSource
    from projections.replay import fold
    from schemas.rules import parse_rules
    from schemas.topics import Topics

    src = (FileSource(Path(source), headers=False) if source != "kafka"
           else KafkaSource(bootstrap, Topics("sandbox", prefix), headers=False))
    started = time.perf_counter()
    cpu_started = _cpu_seconds(resource.RUSAGE_SELF)
    memory: list[float] = []
    if mode == "read":
        events = sum(len(batch) for batch in src)
        referrers = None
    else:  # "fold:N": with N jobs
        report = fold(src, parse_rules(RULES, "bench rules"), jobs=int(mode.partition(":")[2] or 1),
                      memory=memory)
        events = report.stripe_events + report.control_events
        referrers = len({r.ucc for r in report.rows})
    seconds = time.perf_counter() - started
    # CPU time: on a shared, loaded machine the wall clock mostly measures the neighbours.
    # This process (all its threads) folds; the source's reader process (waited for by
    # now) reads on the other core. Per CPU second counts both; the fold process's own
    # CPU seconds are what the wall time comes to on an idle machine with a core to spare.
    own = _cpu_seconds(resource.RUSAGE_SELF) - cpu_started
    reader = _cpu_seconds(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "events": events, "seconds": round(seconds, 2), "events_per_second": round(events / seconds),
        "cpu_seconds": round(own + reader, 2), "events_per_cpu_second": round(events / (own + reader)),
        "main_process_cpu_seconds": round(own, 2), "reader_process_cpu_seconds": round(reader, 2),
        "events_per_main_process_cpu_second": round(events / own),
        "peak_rss_mib": _peak_rss_mib(),
        "reader_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "referrers_reported": referrers,
        "peak_rss_per_job_mib": memory or None,
    }))


def _measure(mode: str, source: str, bootstrap: str, prefix: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.replay", "--child", mode, source, "--bootstrap", bootstrap,
         "--prefix", prefix],
        check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{mode:>4} {('kafka' if source == 'kafka' else 'file'):>5}: {result}", file=sys.stderr)
    return result


def _best(repeat: int, mode: str, source: str, bootstrap: str, prefix: str) -> dict[str, object]:
    """The fastest of `repeat` runs, with every run's rate kept beside it."""
    runs = [_measure(mode, source, bootstrap, prefix) for _ in range(repeat)]
    best = max(runs, key=lambda r: r["events_per_second"])  # type: ignore[arg-type,return-value]
    return {**best, "events_per_second_each_run": [r["events_per_second"] for r in runs]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--referrers", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS / "replay.json")
    ap.add_argument("--repeat", type=int, default=1, help="measure each run this many times, keep the best")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "SOURCE"), help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], args.bootstrap, args.prefix)
        return 0

    from projections.export import export_to
    from projections.logsource import KafkaSource
    from refstream import localkafka
    from schemas.topics import Topics

    work = Path(tempfile.mkdtemp(prefix="refstream-bench-replay-"))
    external = os.environ.get("REFSTREAM_KAFKA_BOOTSTRAP")
    cluster = None
    if external:
        bootstrap = external
    else:
        cluster = localkafka.Cluster(work / "kafka", port=_free_port_pair())
        localkafka.up(cluster)
        bootstrap = cluster.bootstrap
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    try:
        written = asyncio.run(_produce(bootstrap, prefix, args.customers, args.referrers, args.seed))
        print(f"wrote {written['events']:,} records in {written['write_seconds']} s", file=sys.stderr)
        export = work / "log.jsonl.gz"
        started = time.perf_counter()
        topics = Topics("sandbox", prefix)
        counts = export_to(KafkaSource(bootstrap, topics), export, topics)
        export_s = time.perf_counter() - started
        gz_mib = export.stat().st_size / 2**20
        exported = counts.stripe_events + counts.control_events
        print(f"exported {exported:,} records in {export_s:.1f} s "
              f"({gz_mib:.0f} MiB gz)", file=sys.stderr)
        runs = {
            source: {"read_only": _best(args.repeat, "read", where, bootstrap, prefix),
                     "replay_jobs_1": _best(args.repeat, "fold:1", where, bootstrap, prefix),
                     "replay": _best(args.repeat, f"fold:{JOBS}", where, bootstrap, prefix)}
            for source, where in (("file", str(export)), ("kafka", "kafka"))
        }
    finally:
        if cluster is not None:
            localkafka.down(cluster.data_dir)
        else:
            asyncio.run(_delete_topics(bootstrap, prefix))
        shutil.rmtree(work, ignore_errors=True)  # the broker's data and the export: ~1 GB
    result = {
        "log": written,
        "export": {"records": exported, "seconds": round(export_s, 1),
                   "records_per_second": round(exported / export_s),
                   "gz_mib": round(gz_mib, 1)},
        **runs,
        "targets_events_per_second": TARGETS,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        # the machine is shared: a load above the core count slows every number here
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    for source in TARGETS:
        one, many = runs[source]["replay_jobs_1"], runs[source]["replay"]
        scaling = many["events_per_second"] / one["events_per_second"]  # type: ignore[operator]
        bound = many["events"] / many["main_process_cpu_seconds"]  # type: ignore[operator]
        print(f"{source}: --jobs 1 {one['events_per_second']:,} events/s, --jobs {JOBS} "
              f"{many['events_per_second']:,} events/s: ×{scaling:.2f}; an 8-core machine at the same "
              f"scaling per doubling of jobs: {one['events_per_second'] * scaling ** 3:,.0f} events/s "
              f"(a PROJECTION, not a measurement; the main stage, parsing and the customer stage, "
              f"does not split: it bounds the rate at about {bound:,.0f} events/s)")
    for source, target in TARGETS.items():
        for what in ("replay", "read_only"):
            run = runs[source][what]
            rate, per_cpu = run["events_per_second"], run["events_per_cpu_second"]
            print(f"{what} from {source}: {rate:,} events/s wall, {per_cpu:,} per CPU second "
                  f"(target ≥ {target:,}: {'met' if isinstance(rate, int) and rate >= target else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
