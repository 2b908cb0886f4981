"""`refstream replay`: fold the log with the same pure code the workers run, then report.

The source (Kafka or an export file) yields the stripe events and control events already
merged in timestamp order (see `logsource`); this module feeds them to one `Engine` per
set of rules, in one pass, and reads each referrer's figures at the end. It writes
nothing anywhere but the report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from projections.logsource import LogRecord
from projections.report import Figures, Report, build_report
from schemas.rules import Rules
from schemas.topics import STRIPE_EVENTS


class Source(Protocol):
    """What replay reads: merged batches; `total` is the record count when known."""

    @property
    def total(self) -> int | None: ...

    def __iter__(self) -> Any: ...


def _engine(rules: Rules) -> Any:
    from processors.engine import Engine

    return Engine(rules)


def _unreadable() -> tuple[type[Exception], ...]:
    """Errors for a record the rules cannot read. The live worker dead-letters such a record
    and goes on; replay skips and counts it, so both fold the same remaining log."""
    errors: list[type[Exception]] = []
    try:
        from schemas.stripe import StripeParseError

        errors.append(StripeParseError)
    except ImportError:
        pass
    try:
        from schemas import control

        errors.extend(
            e for e in vars(control).values()
            if isinstance(e, type) and issubclass(e, Exception) and e.__module__ == control.__name__
        )
    except ImportError:
        pass
    return tuple(errors) or (ValueError,)


def figures_of(engine: Any, uccs: Iterable[str], as_of: int) -> dict[tuple[str, str], Figures]:
    """Each referrer's figures per currency from the engine's summary as of `as_of`."""
    out: dict[tuple[str, str], Figures] = {}
    for ucc in uccs:
        summary = engine.referrer(ucc, as_of=as_of)
        if summary is None:
            continue
        for currency, s in summary.currencies.items():
            out[(ucc, currency)] = Figures(
                referrals=summary.referrals,
                earned=s.earned,
                reversed=abs(s.reversed),
                payable=s.payable,
            )
    return out


def _referrers(engine: Any, seen: set[str]) -> Iterable[str]:
    known = getattr(engine, "referrers", None)
    return sorted(known()) if callable(known) else sorted(seen)


def fold(
    batches: Iterable[list[LogRecord]],
    rules: Rules,
    compare: Rules | None = None,
    *,
    as_of: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Folds every record up to `as_of` (Unix seconds, by record timestamp; default: the whole
    log) under `rules` and, in the same pass, under `compare`."""
    engines = [_engine(rules)] + ([_engine(compare)] if compare is not None else [])
    unreadable = _unreadable()
    until_ms = None if as_of is None else (as_of + 1) * 1000
    seen: set[str] = set()
    stripe = control = skipped = 0
    last_ms = 0
    for batch in batches:
        for rec in batch:
            ts = rec.timestamp
            if until_ms is not None and ts >= until_ms:
                continue
            if ts > last_ms:
                last_ms = ts
            is_stripe = rec.kind == STRIPE_EVENTS
            if is_stripe:
                stripe += 1
            else:
                control += 1
            value = rec.value
            try:
                for engine in engines:
                    outs = engine.feed_stripe(value) if is_stripe else engine.feed_control(value)
                    for routed in outs:
                        seen.add(routed.key)  # every output record is keyed by its ucc
            except unreadable:
                skipped += 1
        if progress is not None:
            progress(len(batch))
    at = as_of if as_of is not None else last_ms // 1000
    mine = figures_of(engines[0], _referrers(engines[0], seen), at)
    other = figures_of(engines[1], _referrers(engines[1], seen), at) if compare is not None else None
    return build_report(
        mine, other,
        rules_revision=rules.revision,
        compare_revision=compare.revision if compare is not None else None,
        as_of=at, stripe_events=stripe, control_events=control, skipped=skipped,
    )


class Progress:
    """A progress bar on stderr: events done and events/s (tqdm; silent when not a TTY)."""

    def __init__(self, source: Source, what: str, enabled: bool | None) -> None:
        from tqdm import tqdm

        self._source = source
        self._bar = tqdm(
            total=source.total, desc=what, unit=" events", unit_scale=True, file=sys.stderr,
            disable=(None if enabled is None else not enabled), mininterval=0.5, dynamic_ncols=True,
        )

    def __call__(self, n: int) -> None:
        if self._bar.total is None and self._source.total is not None:
            self._bar.total = self._source.total
            self._bar.refresh()
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()
