"""`refstream replay` (docs/replay.md): recompute rewards from the log under any rules.

Reads from Kafka (read-only: no consumer group, no commits) or from an export file, and
never writes to Kafka. Every mistake an analyst can make ends with one clear message and
exit code 1, never a traceback.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

import click

from schemas.rules import Revision, RuleBook, Rules, RulesError, load_rules


def parse_ts(value: str) -> int:
    """A command-line TS (docs/cli.md#timestamps): ISO 8601 with an offset, or Unix seconds."""
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a time. Use ISO 8601 with an offset, e.g. 2026-02-15T00:00:00Z, "
            f"or Unix seconds, e.g. 1771113600."
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(
            f"{value!r} has no UTC offset, so it could mean any time zone. Add one, e.g. "
            f"{text}Z or {text}+01:00."
        )
    return int(moment.timestamp())


def ts_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else parse_ts(value)


def rules_or_fail(path: Path) -> Rules:
    try:
        return load_rules(path)
    except RulesError as exc:
        raise click.ClickException(
            f"{exc} (check it with `refstream rules check {path}`)"
        ) from None


def _identity_key() -> bytes | None:
    """REFSTREAM_IDENTITY_KEY, which the fraud signals that compare e-mail addresses and cards
    need; the worker's own key gives the worker's cases (docs/rules.md#fraud-signals)."""
    from refstream.settings import SettingsError, identity_key_from_env

    try:
        key = identity_key_from_env(dotenv=True)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if key is None and sys.stderr.isatty():
        click.echo("note: REFSTREAM_IDENTITY_KEY is not set, so this replay compares no e-mail address or "
                   "card: self_referral and shared_card cases do not open (set the worker's key to see "
                   "what the worker did).", err=True)
    return key


def _iso(t: int) -> str:
    from projections.report import iso

    return iso(t)


def _first_revision(src: object, source: str) -> Revision:
    """The log's first rules revision: every later one is in the log itself."""
    from processors.rules.engine import revision_of
    from projections.logsource import KafkaSource, read_export_header
    from schemas import control

    raw: bytes | None = None
    if isinstance(src, KafkaSource):
        import asyncio

        from refstream import control_log

        found = control_log.revisions(asyncio.run(control_log.read(src.bootstrap, src.topics.control)))
        raw = control.encode(found[0]) if found else None
    else:
        header = read_export_header(Path(source)) or {}
        text = header.get("first_rules_revision")
        raw = text.encode() if isinstance(text, str) else None
    if raw is None:
        raise click.ClickException(
            f"{source} holds no rules revision (no worker has run on this log, or the export predates "
            "revisions): pass --rules FILE to fold it with a rules file.")
    record = control.decode(raw)
    assert isinstance(record, control.RulesRevision)
    try:
        return revision_of(record)
    except RulesError as exc:
        raise click.ClickException(f"the log's first rules revision cannot be read: {exc}") from None


def open_source(source: str, topic_prefix: str = "refstream", *, headers: bool = True) -> tuple[object, str]:
    """The source named by --source, and how to name it in messages. The fold never reads
    headers, so replay asks for none (export keeps them)."""
    from projections.logsource import FileSource, KafkaSource
    from refstream.settings import Settings, SettingsError
    from schemas.topics import Topics

    if source == "kafka":
        try:
            settings = Settings.from_env()
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from None
        return KafkaSource(settings.kafka_bootstrap, Topics(settings.env, topic_prefix),
                           headers=headers), (
            f"Kafka {settings.kafka_bootstrap} ({settings.env})"
        )
    return FileSource(Path(source), headers=headers), source


def write_out(data: str | bytes, out: Path | None) -> None:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if out is None:
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
        return
    try:
        out.write_bytes(raw)
    except OSError as exc:
        raise click.ClickException(
            f"cannot write {out}: {exc.strerror}. Check that the folder exists and is writable, "
            f"or choose another --out."
        ) from None


@click.command(name="replay")
@click.option("--rules", "rules_path", type=click.Path(path_type=Path),
              help="A rules file (TOML, docs/rules.md) to fold the log with, in place of the revisions "
                   "in the log [default: the log's own revisions, as the worker priced it].")
@click.option("--effective-from", "effective_from", callback=ts_option, metavar="TS",
              help="With --rules: add that file as a proposed revision from TS on top of the log's "
                   "revisions, instead of replacing them.")
@click.option("--source", default="kafka", show_default=True, metavar="kafka|FILE",
              help="`kafka` (REFSTREAM_KAFKA_BOOTSTRAP, REFSTREAM_ENV) or a file written by "
                   "`refstream export` (.jsonl or .jsonl.gz).")
@click.option("--as-of", "as_of", callback=ts_option, metavar="TS",
              help="Report what is payable at TS (ISO 8601 with offset, or Unix seconds). "
                   "Default: the latest event time in the log. The whole log is folded; to see "
                   "only what was known by a time, export with --until and replay that file.")
@click.option("--compare", "compare_path", metavar="OTHER_RULES|log",
              help="Also fold with these rules (a file, or `log`: the log's own revisions) and report "
                   "the per-referrer deltas, largest first.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Write the report here "
              "instead of stdout.")
@click.option("--html", "html_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a what-if page: the rules compared, charts and a sortable table, "
                   "in one self-contained HTML file (opens offline, can be mailed).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("--jobs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Processes for the fold: the referrer stage runs in N − 1 of them [default: the "
                   "number of cores]. The report is the same for every N.")
@click.option("--topic-prefix", default="refstream", show_default=True, hidden=True,
              help="Topic name prefix (tests and benchmarks use a private one).")
def replay(
    rules_path: Path | None,
    effective_from: int | None,
    source: str,
    as_of: int | None,
    compare_path: str | None,
    fmt: str,
    out: Path | None,
    html_path: Path | None,
    progress: bool | None,
    jobs: int | None,
    topic_prefix: str,
) -> None:
    """Fold the stripe-events and control logs and report, per referrer and currency:
    referrals, earned, reversed, net, paid and payable as of TS. By default under the rules
    revisions in the log (what the worker did); --rules replaces them, --rules with
    --effective-from adds a proposed one (docs/replay.md). Never writes to Kafka."""
    from projections import report as rep
    from projections.logsource import SourceError
    from projections.replay import Progress, RuleSpec, fold

    if effective_from is not None and rules_path is None:
        raise click.BadParameter("--effective-from needs --rules FILE: the proposed revision it starts.",
                                 param_hint="--effective-from")
    for option, path in (("--out", out), ("--html", html_path)):
        # checked before a fold that may take minutes, not after it
        if path is not None and not (path.parent if str(path.parent) else Path(".")).is_dir():
            raise click.ClickException(
                f"cannot write {path}: the folder {path.parent} does not exist. Create it first, or "
                f"choose another {option}."
            )
    src, name = open_source(source, topic_prefix, headers=False)
    if source == "kafka":
        from refstream.commands.kafka_access import FIX, require

        require(src.bootstrap, "Cannot replay the log", fix=FIX.rstrip(".")  # type: ignore[attr-defined]
                + ", or replay an export with --source FILE.jsonl.gz.")
    shown: list[tuple[str, int, Rules]] = []
    key = _identity_key()

    def spec_of(path: str | Path | None, start: int | None) -> RuleSpec:
        if path is None or str(path) == "log":
            first = _first_revision(src, source)
            shown.append(("the log's revisions", first.rules.revision, first.rules))
            return RuleSpec(RuleBook([first], key), True, "the log's revisions")
        rules = rules_or_fail(Path(path))
        shown.append((str(path), rules.revision, rules))
        if start is None:
            return RuleSpec(RuleBook.of(rules, key), False, f"{path}, in place of the log's revisions")
        first = _first_revision(src, source)
        book = RuleBook([first], key).adding(Revision(start, rules, key=f"proposed {path}"))
        return RuleSpec(book, True, f"the log's revisions and {path} from {_iso(start)}")

    rules = spec_of(rules_path, effective_from)
    compare = spec_of(compare_path, None) if compare_path is not None else None
    bar = Progress(src, "replay", progress)  # type: ignore[arg-type]
    try:
        memory: list[float] = []
        result = fold(src, rules, compare, as_of=as_of, progress=bar,  # type: ignore[arg-type]
                      jobs=jobs or os.cpu_count() or 1, memory=memory)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        bar.close()
    if fmt == "csv":
        write_out(rep.to_csv(result), out)
    elif fmt == "json":
        write_out(rep.to_json(result), out)
    else:
        write_out(rep.to_table(result), out)
    if html_path is not None:
        write_out(rep.to_html(result, shown), html_path)
    if len(memory) > 1:
        click.echo("peak memory per job: " + ", ".join(
            f"{'main' if i == 0 else f'referrers {i}/{len(memory) - 1}'} {mib:,.0f} MiB"
            for i, mib in enumerate(memory)), err=True)
    if out is not None or html_path is not None:
        click.echo(
            f"replayed {result.stripe_events:,} stripe events and {result.control_events:,} control "
            f"events from {name}"
            + (f"; report in {out}" if out is not None else "")
            + (f"; HTML report in {html_path}" if html_path is not None else ""),
            err=True,
        )
