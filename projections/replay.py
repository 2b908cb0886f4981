"""`refstream replay`: fold the log with the same pure code the workers run, then report.

The source (Kafka or an export file) yields the stripe events and control events already
merged in timestamp order (see `logsource`); this module feeds them to one `Engine` per
set of rules, in one pass, and reads each referrer's figures at the end. It writes
nothing anywhere but the report.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from processors.rules.engine import Engine
from projections.logsource import (
    FileSource,
    KafkaSource,
    LogRecord,
    Send,
    SourceError,
    answer_parent,
    from_parent,
)
from projections.report import Figures, Report, build_report
from schemas.control import ControlDecodeError
from schemas.control import decode as decode_control
from schemas.rules import RuleBook, Rules
from schemas.stripe import StripeParseError, parse_event
from schemas.topics import STRIPE_EVENTS, marker_offset, placed_offset

UNREADABLE = (StripeParseError, ControlDecodeError)


class Source(Protocol):
    """What replay reads: merged batches; `total` is the record count when known."""

    @property
    def total(self) -> int | None: ...

    def __iter__(self) -> Any: ...


def figures_of(engine: Engine, as_of: int) -> dict[tuple[str, str], Figures]:
    """Each referrer's figures per currency from the engine's summaries as of `as_of`.

    A referrer with referrals but no money yet still gets a row (in the campaign's
    currency): an analyst asking who brought signups wants to see them.
    """
    out: dict[tuple[str, str], Figures] = {}
    for summary in engine.summaries(as_of):
        if not summary.currencies:
            if summary.referrals:
                out[(summary.ucc, engine.rules.currency)] = Figures(referrals=summary.referrals)
            continue
        for currency, s in summary.currencies.items():
            # the summary's payable already excludes what earlier payout runs paid
            out[(summary.ucc, currency)] = Figures(
                referrals=summary.referrals, earned=s.earned, reversed=abs(s.reversed), paid=s.paid,
                payable=s.payable,
            )
    return out


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the fold, back as it was afterwards.

    The engines' states are trees of immutable records without reference cycles, so
    reference counting frees everything the fold drops. Left on, the collector rescans the
    millions of live state objects again and again as the tables grow: measured on a
    1,075,277-event log, 48 of the fold's 135 CPU seconds went to it (34 in full
    collections). Objects already alive are frozen so the first collection afterwards does
    not walk them either.
    """
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class RuleSpec:
    """The rules a replay folds with (docs/replay.md#which-rules): a book of revisions to
    start from, and whether the revisions met in the log are added as the worker adds
    them (`follow_log`) or ignored (a what-if file that replaces them all)."""

    book: RuleBook
    follow_log: bool
    label: str

    @classmethod
    def fixed(cls, rules: Rules, label: str = "") -> RuleSpec:
        return cls(RuleBook.of(rules), False, label or f"revision {rules.revision}")


def _spec(rules: RuleSpec | Rules) -> RuleSpec:
    return rules if isinstance(rules, RuleSpec) else RuleSpec.fixed(rules)


def revisions_used(engine: Engine) -> str:
    """The revisions the fold ended with, e.g. "3 (from the start), 4 (from 2026-03-01T00:00:00Z)"."""
    from projections.report import iso

    parts = []
    for i, rev in enumerate(engine.book.revisions):
        when = "from the start" if i == 0 else f"from {iso(rev.effective_from)}"
        parts.append(f"{rev.rules.revision} ({when})")
    return ", ".join(parts)


def fold(
    batches: Iterable[list[LogRecord]],
    rules: RuleSpec | Rules,
    compare: RuleSpec | Rules | None = None,
    *,
    as_of: int | None = None,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
    memory: list[float] | None = None,
) -> Report:
    """Folds the whole log under `rules` and under `compare`; with `jobs` > 1 the referrer
    stage of the `rules` fold runs in `jobs` − 1 more processes (projections/parallel.py),
    with the same result; `memory` gets each process's peak RSS in MiB; payable is reported as of
    `as_of` (Unix seconds; default: the latest event time in the log), the way the worker
    answers `GET /referrers/{ucc}?as_of=`.

    With `compare` and a `FileSource` or `KafkaSource`, a child process folds the compare
    rules over its own read of the same source while this one folds `rules` (two cores
    instead of one); given other batches, both engines fold in this process, in one pass.
    """
    rules = _spec(rules)
    compare = _spec(compare) if compare is not None else None
    compared: dict[tuple[str, str], Figures] | None = None
    compare_used: str | None = None
    compare_revision = 0
    with cyclic_gc_paused():
        if jobs > 1:
            return _fold_parallel(batches, rules, compare, as_of, progress, jobs, memory)
        if compare is not None and isinstance(batches, (FileSource, KafkaSource)):
            with CompareFold(batches, compare) as other:
                counts, engines = _feed(batches, [rules], progress)
                # default: the latest event time seen, as the worker's own summaries do
                at = as_of if as_of is not None else engines[0].latest
                compared, compare_used, compare_revision = other.figures(at, counts, engines[0].latest)
        else:
            counts, engines = _feed(batches, [rules] + ([compare] if compare is not None else []), progress)
            at = as_of if as_of is not None else engines[0].latest
            if compare is not None:
                compared = figures_of(engines[1], at)
                compare_used = revisions_used(engines[1])
                compare_revision = engines[1].book.at(at).revision
        stripe, control, skipped = counts
        return build_report(
            figures_of(engines[0], at),
            compared,
            rules_revision=engines[0].book.at(at).revision,
            compare_revision=None if compare is None else compare_revision,
            rules_used=f"{rules.label}: {revisions_used(engines[0])}",
            compare_used=None if compare is None else f"{compare.label}: {compare_used}",
            as_of=at, stripe_events=stripe, control_events=control, skipped=skipped,
        )


def _fold_parallel(batches: Iterable[list[LogRecord]], rules: RuleSpec, compare: RuleSpec | None,
                   as_of: int | None, progress: Callable[[int], None] | None, jobs: int,
                   memory: list[float] | None) -> Report:
    from projections.parallel import Shards, feed_parallel, peak_rss_mib

    engine = Engine(rules.book, follow_log=rules.follow_log)
    shards = Shards(jobs - 1, rules.book, rules.follow_log)  # forked before anything is read
    compared: dict[tuple[str, str], Figures] | None = None
    compare_used: str | None = None
    compare_revision = 0
    try:
        if compare is not None and isinstance(batches, (FileSource, KafkaSource)):
            with CompareFold(batches, compare) as other:
                counts = feed_parallel(batches, engine, shards, progress)
                at = as_of if as_of is not None else engine.latest
                compared, compare_used, compare_revision = other.figures(at, counts, engine.latest)
        else:
            if compare is not None:
                batches = list(batches)  # in-memory batches: folded twice, the compare fold here
            counts = feed_parallel(batches, engine, shards, progress)
            at = as_of if as_of is not None else engine.latest
            if compare is not None:
                _, (compare_engine,) = _feed(batches, [compare], None)
                compared = figures_of(compare_engine, at)
                compare_used = revisions_used(compare_engine)
                compare_revision = compare_engine.book.at(at).revision
        shards.ask(at)
        rules_revision = engine.book.at(at).revision
        rules_used = f"{rules.label}: {revisions_used(engine)}"
        # freed while the shards make their figures, on a core that would wait for them
        # (~0.3 s for the bench log's customer stage, after the report before)
        del engine
        mine, shard_rss = shards.answers()
    finally:
        shards.close()
    if memory is not None:
        memory[:] = [peak_rss_mib(), *shard_rss]
    stripe, control, skipped = counts
    return build_report(
        mine, compared,
        rules_revision=rules_revision,
        compare_revision=None if compare is None else compare_revision,
        rules_used=rules_used,
        compare_used=None if compare is None else f"{compare.label}: {compare_used}",
        as_of=at, stripe_events=stripe, control_events=control, skipped=skipped,
    )


class ControlValue(NamedTuple):
    """A control record's value in what `prepare` returns (a Stripe record's is plain bytes)."""

    value: bytes


def prepare(batch: list[LogRecord]) -> tuple[int, list[bytes | ControlValue]]:
    """What the fold reads of a batch: its record count (for the progress bar) and, in log
    order, each record's value, a control record's as a `ControlValue`; the markers are
    left out (the merge has placed their control records already).

    Run by the reader process when the source reads in one (`FileSource.prepared`), so
    what crosses the pipe is a list of bytes (a copy each, ~0.2 µs a record both ways
    together) rather than the records (~2 µs a record to pickle and rebuild); run here
    otherwise. Both give the same list."""
    out: list[bytes | ControlValue] = []
    append = out.append
    for rec in batch:
        key = rec.key
        if key is not None and key[:1] == b"\x00" and (
            marker_offset(key) is not None or placed_offset(key) is not None
        ):
            continue  # where a control event takes effect: the merge has placed it already
        append(rec.value if rec.kind == STRIPE_EVENTS else ControlValue(rec.value))
    return len(batch), out


def prepared(batches: Iterable[list[LogRecord]]) -> Iterator[tuple[int, list[bytes | ControlValue]]]:
    """`prepare` of every batch, in the source's reader process when it has one."""
    if isinstance(batches, (FileSource, KafkaSource)):
        return batches.prepared(prepare)
    return map(prepare, batches)


def _feed(
    batches: Iterable[list[LogRecord]],
    rule_sets: list[RuleSpec],
    progress: Callable[[int], None] | None,
) -> tuple[tuple[int, int, int], list[Engine]]:
    """Folds every record into one engine per rule set; returns (stripe, control, skipped)
    counts and the engines."""
    engines = [Engine(r.book, follow_log=r.follow_log) for r in rule_sets]
    stripe = control = skipped = 0
    for count, values in prepared(batches):
        for value in values:
            try:
                # parsed once, folded by each engine
                if type(value) is ControlValue:
                    control += 1
                    order = decode_control(value.value)
                    for engine in engines:
                        engine.feed_control_record(order)
                else:
                    stripe += 1
                    event = parse_event(value)  # type: ignore[arg-type]
                    for engine in engines:
                        engine.feed_event(event)
            except UNREADABLE:
                # The live worker dead-letters a record it cannot read and goes on; replay
                # skips and counts it, so both fold the same remaining log.
                skipped += 1
        if progress is not None:
            progress(count)
    return (stripe, control, skipped), engines


# The child gets the parent's sys.path first (so it imports this same code), then its work.
_COMPARE_CHILD = (
    "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); "
    "from projections.replay import serve_compare; serve_compare()"
)


class CompareFold:
    """The compare rules folded in a child process over its own read of the source.

    The child folds, reports its counts and latest time, waits for the "as of" the caller
    settles on (the default is the latest time of the caller's own fold), and answers with
    its figures. Leaving the `with` block stops it.
    """

    def __init__(self, source: FileSource | KafkaSource, rules: RuleSpec) -> None:
        own = copy.copy(source)
        own.in_child = False  # the child reads inline: its own fold is the slower side anyway
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _COMPARE_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert self._proc.stdin is not None
        pickle.dump(sys.path, self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump((own, rules), self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self._proc.stdin.flush()

    def __enter__(self) -> CompareFold:
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if proc.poll() is None:
            proc.terminate()  # it only reads: nothing to undo
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _receive(self, expected: str) -> Any:
        assert self._proc.stdout is not None
        try:
            what, item = pickle.load(self._proc.stdout)
        except EOFError:
            raise SourceError(
                f"the process folding the compare rules stopped (exit code {self._proc.wait()}). "
                f"Try again; if it happens again, its message is above."
            ) from None
        if what == "error":
            raise SourceError(item)
        if what == "crash":
            raise RuntimeError(f"the process folding the compare rules failed:\n{item}")
        assert what == expected, (what, expected)
        return item

    def figures(
        self, as_of: int, counts: tuple[int, int, int], latest: int
    ) -> tuple[dict[tuple[str, str], Figures], str, int]:
        """The compare rules' figures as of `as_of`, once the child has folded the same log
        (`counts` and `latest` from the caller's fold: anything else is a bug, not a result)."""
        their_counts, their_latest = self._receive("folded")
        if (tuple(their_counts), their_latest) != (counts, latest):
            raise RuntimeError(
                f"the compare fold read a different log: {their_counts}, latest {their_latest}, "
                f"against {counts}, latest {latest}"
            )
        assert self._proc.stdin is not None
        pickle.dump(as_of, self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self._proc.stdin.flush()
        figures, used, revision = self._receive("figures")
        return figures, used, revision


def serve_compare() -> None:
    """The child's side of `CompareFold`."""
    parent = os.getppid()

    def parent_alive(_: int) -> None:
        # a killed caller cannot stop this fold, and it would otherwise run to the end
        if os.getppid() != parent:
            os._exit(1)

    def fold_compare(send: Send) -> None:
        source, rules = from_parent()
        gc.disable()  # as in `fold`: the states have no cycles
        counts, (engine,) = _feed(source, [rules], parent_alive)
        send("folded", (counts, engine.latest))
        as_of = from_parent()
        send("figures", (figures_of(engine, as_of), revisions_used(engine), engine.book.at(as_of).revision))

    answer_parent(fold_compare)
    # the engine's millions of objects die with the process: no need to free them one by one
    os._exit(0)


class Progress:
    """A progress bar on stderr: events done and events/s (tqdm; silent when not a TTY)."""

    def __init__(self, source: Source, what: str, enabled: bool | None) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]

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
