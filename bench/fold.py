"""Benchmark: fold a generated log of ≥ 1,000,000 events through the pure core.

    .venv/bin/python -m bench.fold [--customers 100000] [--referrers 10000] [--repeat 3] [--profile]
    .venv/bin/python -m bench.fold --instructions [--customers 1000] [--referrers 100]
    .venv/bin/python -m bench.fold --digest [--customers 5000] [--referrers 500] [--seed 11]
    .venv/bin/python -m bench.fold --growth [--customers 50000] [--referrers 5000] [--chunk 50000]

Generates the log with bench/gen.py (100,000 customers, 10,000 referrers, monthly payout
runs), renders it in chunks of raw bytes, and times the fold of those bytes in three parts
(rendering excluded): decoding (`parse_event` of each Stripe body, `control.decode` of each
control record), the rules (`Engine.feed_event`, everything it steps, and counting the
outputs) and the payout runs (`Engine.feed_control_record` of each run). Reports events per
CPU second and µs per event of each part, peak memory (max RSS of the process, and the RSS
the engine's states added), and the state per referral as table values (the encoded bytes
the workers store), then writes bench/results/fold.json. `--repeat 3` folds the log three
times and reports the best run. Targets (issue #15): ≥ 40,000 events per CPU second on this
1M log; < 1 KiB per referral.

`--instructions` counts instead of timing (seconds are noise on a shared machine): it runs
this script twice under valgrind's callgrind on the same small log, once only rendering
the log and once rendering and folding it, and reports the difference per event.

`--digest` is the check every optimisation must pass unchanged: it folds a fixed log
(deciding every review case after the payout run that follows it, approved or rejected by
its id, so approvals and rejections are covered too) and prints a SHA-256 over every
output record, every table value (`dumps` of every state) and the summaries.

`--growth` shows how the cost per event changes as the states grow, on a loaded machine:
after each `--chunk` events of the log it folds a small fresh log (the probe: same code,
tiny states) and prints the big fold's CPU time per event divided by the probe's.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import os
import platform
import pstats
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any

from bench.gen import Log
from processors.rules import invoice_link, referral, referrer
from processors.rules.engine import Engine
from schemas import commands, control
from schemas.events import Routed
from schemas.rules import parse_rules
from schemas.stripe import parse_event

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 40_000  # events per CPU second on the 1M log (issue #15)

# examples/rules.toml's rules, with euros configured too; pounds stay unconfigured (review cases)
RULES = """
[campaign]
revision = 3
currency = "usd"
reward_percent = 25
reward_months = 12
hold_days = 30
late_attribution_days = 30
organization_level = false
reward_one_off_charges = true

[currency.usd]
max_reward_per_referral = 10000
signup_bonus = 500
purchase_bonus = 1000
min_payout = 2000
review_above = 50000

[currency.eur]
max_reward_per_referral = 9000
purchase_bonus = 900
min_payout = 2000
"""


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def calibration_ns() -> float:
    """ns per iteration of a fixed pure-Python loop (about 30 ns on an idle modern core):
    how much slower this machine was than that while the benchmark ran."""
    import timeit
    return min(timeit.repeat("x = {'a': 1}; x.get('a')", number=200_000, repeat=5)) / 200_000 * 1e9


def instructions(args: argparse.Namespace) -> int:
    """Instructions per folded event: callgrind(render + fold) − callgrind(render only)."""
    counts = {}
    for phase in ("render", "fold"):
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
               "bench.fold", "--customers", str(args.customers), "--referrers", str(args.referrers),
               "--seed", str(args.seed), "--phase", phase]
        # a fixed hash seed: dict and set layouts (and so the counts) repeat exactly
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        found = re.search(r"Collected : (\d+)", run.stderr)
        events = re.search(r"^events (\d+)$", run.stdout, re.M)
        if found is None or events is None:
            raise SystemExit(f"no instruction count from valgrind:\n{run.stderr[-2000:]}")
        counts[phase] = int(found.group(1))
        total = int(events.group(1))
    per_event = (counts["fold"] - counts["render"]) / total
    result = {"events": total, "customers": args.customers, "referrers_planned": args.referrers,
              "seed": args.seed, "instructions": counts, "instructions_per_event": round(per_event),
              "python": platform.python_version()}
    out = args.out if args.out != RESULTS / "fold.json" else RESULTS / "fold_instructions.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def phase(args: argparse.Namespace) -> int:
    """What `--instructions` runs under callgrind: render the log, then maybe fold it."""
    items = list(Log(args.customers, args.referrers, args.seed).iter_log())
    engine = Engine(parse_rules(RULES, "bench rules"))
    gc.collect()
    gc.freeze()
    gc.disable()
    if args.phase == "fold":
        feed_stripe, feed_control = engine.feed_stripe, engine.feed_control
        for source, _, raw in items:
            feed_stripe(raw) if source == "stripe" else feed_control(raw)
    print(f"events {len(items)}")
    return 0


def digest(args: argparse.Namespace) -> int:
    """SHA-256 over everything the fold produces: equal digests, equal behaviour."""
    engine = Engine(parse_rules(RULES, "bench rules"))
    h = hashlib.sha256()
    events = decisions = 0

    def record(out: list[Routed]) -> None:
        for r in out:
            h.update(f"{r.dest}\x1f{r.key}\x1f".encode() + commands.encode(r.record) + b"\x1e")

    open_cases: dict[str, str] = {}  # case id → ucc, in the order opened
    for source, _, raw in Log(args.customers, args.referrers, args.seed).iter_log():
        events += 1
        out = engine.feed_stripe(raw) if source == "stripe" else engine.feed_control(raw)
        record(out)
        for r in out:
            if isinstance(r.record, commands.ReviewCase):
                open_cases[r.record.case_id] = r.record.ucc
        if source == "control":
            # decide every case opened since the last run: approve or reject by its id
            for case_id, ucc in open_cases.items():
                approve = int(case_id[:2], 16) % 2 == 0
                decision = control.ReviewDecision(case_id, ucc, approve, "bench", engine.latest)
                record(engine.feed_control(control.encode(decision)))
                decisions += 1
            open_cases.clear()
    for name, table, module in (("customer", engine.customers, referral),
                                ("invoice", engine.invoices, invoice_link),
                                ("referrer", engine.referrers, referrer)):
        for key in sorted(table):
            h.update(f"{name}\x1f{key}\x1f".encode() + module.dumps(table[key]) + b"\x1e")  # type: ignore[attr-defined]
    for s in engine.summaries():
        h.update(repr(s).encode() + b"\x1e")
    print(json.dumps({"events": events, "decisions": decisions, "customers": args.customers,
                      "referrers_planned": args.referrers, "seed": args.seed,
                      "sha256": h.hexdigest()}, indent=2))
    return 0


def growth(args: argparse.Namespace) -> int:
    """CPU time per event of each chunk, relative to a fresh small fold measured around it."""
    rules = parse_rules(RULES, "bench rules")
    probe_items = list(islice(Log(300, 30, 99).iter_log(), 3000))

    def probe() -> float:
        best = float("inf")
        for _ in range(3):
            small = Engine(rules)
            start = time.process_time()
            for source, _, raw in probe_items:
                small.feed_stripe(raw) if source == "stripe" else small.feed_control(raw)
            best = min(best, time.process_time() - start)
        return best / len(probe_items)

    engine = Engine(rules)
    records = Log(args.customers, args.referrers, args.seed).iter_log()
    gc.collect()
    gc.freeze()
    gc.disable()
    done = 0
    rows = []
    while chunk := list(islice(records, args.chunk)):
        before = probe()
        start = time.process_time()
        for source, _, raw in chunk:
            engine.feed_stripe(raw) if source == "stripe" else engine.feed_control(raw)
        per_event = (time.process_time() - start) / len(chunk)
        ratio = per_event / min(before, probe())
        done += len(chunk)
        rows.append({"events": done, "us_per_event": round(per_event * 1e6, 1), "vs_probe": round(ratio, 2)})
        print(f"{done:>9,} events  {per_event * 1e6:6.1f} us/event  {ratio:.2f}x the probe", flush=True)
    gc.enable()
    out = args.out if args.out != RESULTS / "fold.json" else RESULTS / "fold_growth.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"customers": args.customers, "referrers_planned": args.referrers,
                               "seed": args.seed, "chunks": rows}, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, help="default 100,000 (--instructions: 1,000)")
    ap.add_argument("--referrers", type=int, help="default 10,000 (--instructions: 100)")
    ap.add_argument("--seed", type=int, help="default 7 (--digest: 11)")
    ap.add_argument("--chunk", type=int, help="default 20,000 (--growth: 50,000)")
    ap.add_argument("--profile", action="store_true", help="cProfile the fold, print the top 25")
    ap.add_argument("--repeat", type=int, default=1,
                    help="fold the log this many times, report the best (the least CPU time)")
    ap.add_argument("--keep-gc", action="store_true",
                    help="leave Python's cyclic garbage collector on during the fold")
    ap.add_argument("--out", type=Path, default=RESULTS / "fold.json")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per event with callgrind, on a small log")
    ap.add_argument("--digest", action="store_true",
                    help="fold a fixed log and print a SHA-256 over outputs, table values, summaries")
    ap.add_argument("--growth", action="store_true",
                    help="CPU time per event as the states grow, relative to a small probe fold")
    ap.add_argument("--phase", choices=("render", "fold"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    small = args.instructions or args.phase  # under valgrind: ~50x slower, so 1 % of the log
    if args.digest:
        args.customers = args.customers or 5_000
        args.referrers = args.referrers or 500
        args.seed = 11 if args.seed is None else args.seed
        return digest(args)
    if args.seed is None:
        args.seed = 7
    if args.growth:
        args.customers = args.customers or 50_000
        args.referrers = args.referrers or 5_000
        args.chunk = args.chunk or 50_000
        return growth(args)
    if args.chunk is None:
        args.chunk = 20_000
    if args.customers is None:
        args.customers = 1_000 if small else 100_000
    if args.referrers is None:
        args.referrers = 100 if small else 10_000
    if args.phase:
        return phase(args)
    if args.instructions:
        return instructions(args)

    t = time.perf_counter()
    log = Log(args.customers, args.referrers, args.seed)
    gen_s = time.perf_counter() - t
    total = len(log)
    print(f"generated {total:,} log records ({log.stripe_events:,} Stripe events) in {gen_s:.1f} s",
          file=sys.stderr)

    runs = []
    for i in range(args.repeat):
        if i:
            print(f"run {i + 1} of {args.repeat}", file=sys.stderr)
        runs.append(timed_fold(args, log, profiler=cProfile.Profile() if args.profile and not i else None))
    best = min(runs, key=lambda r: r["fold_cpu_seconds"])
    result = {
        **{k: v for k, v in best.items() if k != "profile"},
        "stripe_events": log.stripe_events,
        "control_events": total - log.stripe_events,
        "customers": args.customers,
        "referrers_planned": args.referrers,
        # the best of --repeat runs (the least CPU time), and every run's rate
        "runs": args.repeat,
        "events_per_cpu_second_each_run": [r["events_per_cpu_second"] for r in runs],
        "python": platform.python_version(),
        "compiled_core": _compiled_status(),
        "cyclic_gc_during_fold": args.keep_gc,
        "generated_seconds": round(gen_s, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok_speed = result["events_per_cpu_second"] >= TARGET
    ok_state = result["state_bytes_per_referral"] < 1024
    us = result["us_per_event"]
    print(f"events/s: {result['events_per_second']:,} wall, "
          f"{result['events_per_cpu_second']:,} per CPU second, best of {args.repeat} "
          f"(target ≥ {TARGET:,}: {'met' if ok_speed else 'MISSED'}); µs per event: decoding "
          f"{us['decoding']}, rules {us['rules']}, payout runs {us['payout_runs']}; "
          f"state per referral: {result['state_bytes_per_referral']:,} B "
          f"(target < 1024: {'met' if ok_state else 'MISSED'})")
    if runs[0].get("profile") is not None:  # only the first run is profiled
        pstats.Stats(runs[0]["profile"], stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return 0


def _compiled_status() -> str:
    from schemas import _compiled, stripe

    return "compiled" if _compiled.is_compiled(stripe) else f"interpreted ({_compiled.status()})"


def timed_fold(args: argparse.Namespace, log: Log, profiler: cProfile.Profile | None) -> dict[str, Any]:
    """One fold of the whole log, timed in three parts: decoding (the Stripe bodies read into
    records, the control records decoded), the rules (`Engine.feed_event` of every Stripe
    event, everything it steps), and the payout runs (`feed_control_record` of each run)."""
    calibration_before = calibration_ns()
    engine = Engine(parse_rules(RULES, "bench rules"))
    outputs: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    wall = decode_cpu = rules_cpu = payout_cpu = 0.0
    raw_bytes = stripe = 0
    rss_before = rss_mib()
    records = log.iter_log()
    done = 0
    total = len(log)
    gc.collect()
    if not args.keep_gc:
        # The states are immutable trees without reference cycles: reference counting
        # frees them. The cyclic collector would only rescan millions of live objects
        # again and again as the tables grow (replay can do the same).
        gc.freeze()
        gc.disable()
    feed_event, feed_control, clock = engine.feed_event, engine.feed_control_record, time.process_time
    while True:
        chunk = list(islice(records, args.chunk))
        if not chunk:
            break
        raw_bytes += sum(len(raw) for _, _, raw in chunk)
        if profiler:
            profiler.enable()
        start, t0 = time.perf_counter(), clock()
        decoded = [(True, parse_event(raw)) if source == "stripe" else (False, control.decode(raw))
                   for source, _, raw in chunk]
        t1 = clock()
        decode_cpu += t1 - t0
        for is_stripe, record in decoded:
            if is_stripe:
                out = feed_event(record)
                stripe += 1
            else:
                t2 = clock()
                out = feed_control(record)
                t3 = clock()
                payout_cpu += t3 - t2
            for r in out:
                outputs[r.dest] += 1
                kinds[getattr(r.record, "kind", r.dest)] += 1
        rules_cpu += clock() - t1
        wall += time.perf_counter() - start
        if profiler:
            profiler.disable()
        done += len(chunk)
        del decoded
        print(f"\r{done:,}/{total:,} folded, {done / wall:,.0f} events/s", end="", file=sys.stderr)
    print(file=sys.stderr)
    rules_cpu -= payout_cpu
    fold_cpu = decode_cpu + rules_cpu + payout_cpu
    gc.enable()
    rss_after = rss_mib()

    referrals = sum(len(s.referrals) for s in engine.referrers.values())
    state_bytes = {
        "customer": sum(len(referral.dumps(s)) for s in engine.customers.values()),
        "invoice": sum(len(invoice_link.dumps(s)) for s in engine.invoices.values()),
        "referrer": sum(len(referrer.dumps(s)) for s in engine.referrers.values()),
    }
    # per referral: its referrer's share and its customers' states; the invoice-link
    # states are per invoice, reported on their own
    attributed = [s for s in engine.customers.values() if s.referral_id is not None]
    per_referral = (state_bytes["referrer"] + sum(len(referral.dumps(s)) for s in attributed)) / max(
        referrals, 1)
    result = {
        "events": total,
        "referrers_with_referrals": len(engine.referrers),
        "referrals": referrals,
        "avg_event_bytes": round(raw_bytes / total),
        "fold_seconds": round(wall, 2),
        "fold_cpu_seconds": round(fold_cpu, 2),
        # wall clock on a shared machine counts time waiting for a core; CPU time is
        # what one core spent, the figure the target ("on one core") is about
        "events_per_second": round(total / wall),
        "events_per_cpu_second": round(total / fold_cpu),
        "cpu_seconds": {"decoding": round(decode_cpu, 2), "rules": round(rules_cpu, 2),
                        "payout_runs": round(payout_cpu, 2)},
        # each part over every event of the log (decoding and rules per Stripe event are
        # within a few per cent: 24 of the events are payout runs)
        "us_per_event": {"decoding": round(1e6 * decode_cpu / total, 2),
                         "rules": round(1e6 * rules_cpu / total, 2),
                         "payout_runs": round(1e6 * payout_cpu / total, 2)},
        "us_per_payout_run_per_referrer": round(
            1e6 * payout_cpu / max(1, total - stripe) / max(1, len(engine.referrers)), 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "calibration_loop_ns": [round(calibration_before, 1), round(calibration_ns(), 1)],
        "cores": os.cpu_count(),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "engine_rss_growth_mib": round(rss_after - rss_before, 1),
        "state_bytes": state_bytes,
        "state_bytes_per_referral": round(per_referral),
        "invoice_link_bytes_per_invoice": round(state_bytes["invoice"] / max(len(engine.invoices), 1)),
        "outputs": dict(sorted(outputs.items())),
        "output_kinds": dict(sorted(kinds.items())),
        "profile": profiler,
    }
    del engine
    gc.collect()
    return result


if __name__ == "__main__":
    raise SystemExit(main())
