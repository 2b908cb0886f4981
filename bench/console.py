"""Benchmark: the operator console with 10,000 referrers (docs/console.md#limits).

    .venv/bin/python -m bench.console [--customers 45000] [--referrers 12000] [--requests 20]

Generates a log with bench/gen.py and folds it with the console's own fold: all of it but
the last 1,000 records (what the console's first fold, or a fold that starts over, costs),
then those 1,000 on top (what it costs once the log has grown by that much: the console
folds only what was appended). Then serves the console in this process and times the
pages an operator opens most: the referrers list (sorted by several columns, a deep
page, a search) and one referrer with its whole ledger. No broker is needed: the fold is
handed to the app directly. Writes bench/results/console.json.

Target: a referrers page in ≤ 300 ms (median) with 10,000 referrers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_PAGE_MS = 300


TAIL = 1_000


def build_fold(customers: int, referrers: int) -> tuple[Any, int, float, float]:
    from bench.gen import Log
    from projections.logsource import LogRecord
    from refstream.console import model
    from schemas.rules import RuleBook, load_rules
    from schemas.topics import CONTROL, STRIPE_EVENTS

    records = []
    for i, (source, key, raw) in enumerate(Log(customers, referrers).iter_log()):
        kind = STRIPE_EVENTS if source == "stripe" else CONTROL
        records.append(LogRecord(kind, 0, i, i, key.encode() if isinstance(key, str) else key, (), raw))
    rules = load_rules(Path(__file__).resolve().parents[1] / "examples" / "rules.toml")
    book = RuleBook.of(rules)
    started = time.perf_counter()
    folded = model.fold([records[:-TAIL]], book)
    whole_s = time.perf_counter() - started
    started = time.perf_counter()
    more = folded.continued()
    model.fold([records[-TAIL:]], more.engine.book, into=more)
    return more, len(records), whole_s, time.perf_counter() - started


async def time_pages(folded: Any, requests: int) -> dict[str, float]:
    from aiohttp.test_utils import TestClient, TestServer

    from refstream.console.app import make_app
    from refstream.console.sources import Config
    from schemas.topics import Topics
    from tests.console.helpers import TOKEN, FixedProjector, sign_in

    cfg = Config("127.0.0.1:1", Topics("sandbox", "bench"))
    ucc = max(folded.engine.referrers, key=lambda u: len(folded.engine.referrers[u].referrals))
    pages = {
        "referrers, by ucc": "/referrers",
        "referrers, by net, descending": "/referrers?sort=net&dir=desc",
        "referrers, by payable, page 150": "/referrers?sort=payable&dir=desc&page=150",
        "referrers, a search": "/referrers?q=ucc_00",
        f"one referrer ({len(folded.engine.referrers[ucc].referrals)} referrals)": f"/referrers/{ucc}",
    }
    out: dict[str, float] = {}
    async with TestClient(TestServer(make_app(cfg, TOKEN, projector=FixedProjector(folded)))) as client:
        await sign_in(client)
        for name, path in pages.items():
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                resp = await client.get(path)
                await resp.read()
                assert resp.status == 200, (path, resp.status)
                times.append((time.perf_counter() - started) * 1000)
            out[name] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=45_000)
    parser.add_argument("--referrers", type=int, default=12_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()

    folded, events, fold_s, tail_s = build_fold(args.customers, args.referrers)
    n = len(folded.engine.referrers)
    print(f"log: {events:,} records, {n:,} referrers")
    rate = (events - TAIL) / fold_s
    print(f"  a whole fold of {events - TAIL:,} records: {fold_s:.1f} s ({rate:,.0f} records/s)")
    print(f"  then {TAIL:,} more records on top: {tail_s * 1000:.0f} ms")
    pages = asyncio.run(time_pages(folded, args.requests))
    for name, ms in pages.items():
        print(f"  {name:45} {ms:8.1f} ms (median of {args.requests})")
    worst = max(v for k, v in pages.items() if k.startswith("referrers"))
    print(f"slowest referrers page: {worst:.1f} ms (target ≤ {TARGET_PAGE_MS} ms): "
          f"{'met' if worst <= TARGET_PAGE_MS else 'NOT met'}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "console.json").write_text(json.dumps({
        "referrers": n, "records": events, "whole_fold_s": round(fold_s, 2),
        f"fold_{TAIL}_more_ms": round(tail_s * 1000, 1),
        "pages_median_ms": {k: round(v, 1) for k, v in pages.items()},
        "target_page_ms": TARGET_PAGE_MS, "met": worst <= TARGET_PAGE_MS,
        "python": sys.version.split()[0], "machine": platform.machine(),
    }, indent=2) + "\n")
    print(f"wrote {RESULTS / 'console.json'}")


if __name__ == "__main__":
    main()
