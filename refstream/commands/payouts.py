"""`refstream payouts …`: payout runs, what became of each payout, paying through Stripe
Connect, and files for paying by hand (docs/cli.md#payouts-run, docs/cli.md#payouts)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from refstream.commands import kafka_access
from refstream.commands.kafka_access import NotWritten, Unconfirmed, failure, quiet_clients
from refstream.settings import Settings, SettingsError
from schemas import commands, control
from schemas.topics import Topics


def parse_ts(text: str) -> int:
    """ISO 8601 with an offset, or Unix seconds (docs/cli.md#timestamps) → Unix seconds."""
    raw = text.strip()
    if raw.lstrip("-").isdigit():
        return int(raw)
    try:
        d = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a timestamp. Use ISO 8601 with an offset, e.g. 2026-02-15T00:00:00+00:00, "
            "or Unix seconds, e.g. 1771113600."
        ) from None
    if d.tzinfo is None:
        example = raw if "T" in raw else f"{raw}T00:00:00"
        raise click.BadParameter(
            f"{text!r} has no UTC offset, so it could mean several instants. Add one, e.g. "
            f"{example}+00:00 (or Z)."
        )
    return int(d.timestamp())


def default_run_id(as_of: int) -> str:
    # derived from as_of alone, so running the same command twice pays nothing more
    return f"run-{as_of}"


async def append_control(bootstrap: str, topic: str, record: control.ControlRecord) -> tuple[int, int]:
    """Append one control record; (partition, offset). Raises NotWritten when the broker could
    not be reached or refused the record, and Unconfirmed when it did not answer the write."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    quiet_clients()
    timeout_s = kafka_access.TIMEOUT_S
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                request_timeout_ms=int(timeout_s * 1000))
    try:
        try:
            await asyncio.wait_for(producer.start(), timeout_s)
        except Exception as exc:
            raise NotWritten() from exc
        try:
            meta = await asyncio.wait_for(producer.send_and_wait(topic, control.encode(record)), timeout_s)
        except (TimeoutError, KafkaTimeoutError, KafkaConnectionError) as exc:
            raise Unconfirmed() from exc  # it may have arrived before the answer was lost
        except Exception as exc:
            raise NotWritten() from exc  # the broker refused it
    finally:
        await producer.stop()
    return meta.partition, meta.offset


def settings_or_fail() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


class ControlWriter:
    """One producer for several control records (execute appends one outcome per transfer)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.producer: Any = None

    async def __aenter__(self) -> ControlWriter:
        from aiokafka import AIOKafkaProducer

        quiet_clients()
        timeout_s = kafka_access.TIMEOUT_S
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                         enable_idempotence=True, request_timeout_ms=int(timeout_s * 1000))
        try:
            await asyncio.wait_for(self.producer.start(), timeout_s)
        except Exception as exc:
            await self.producer.stop()
            raise NotWritten() from exc
        return self

    async def append(self, record: control.ControlRecord) -> int:
        from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

        try:
            meta = await asyncio.wait_for(
                self.producer.send_and_wait(self.topic, control.encode(record)), kafka_access.TIMEOUT_S)
        except (TimeoutError, KafkaTimeoutError, KafkaConnectionError) as exc:
            raise Unconfirmed() from exc
        except Exception as exc:
            raise NotWritten() from exc
        return int(meta.offset)

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _money(amount: int, currency: str) -> str:
    from projections.report import money

    return money(amount, currency)


def _text_or_fail(value: str, option: str, example: str) -> str:
    if not value.strip():
        raise click.UsageError(f"{option} is empty. Say it, e.g. {option} {example!r}.")
    return value.strip()


def _read(settings: Settings, topics: list[str], problem: str, after: str = "") -> list[tuple[str, bytes]]:
    from refstream.commands.review import read_to_end

    try:
        return asyncio.run(read_to_end(settings.kafka_bootstrap, topics))
    except Exception as exc:
        raise failure(settings.kafka_bootstrap, problem, exc, after=after) from None


def _book(settings: Settings, t: Topics, problem: str, after: str = "") -> Any:
    from projections.payouts import book_of

    return book_of(_read(settings, [t.control, t.payouts], problem, after), t)


def _append_one(settings: Settings, t: Topics, record: control.ControlRecord, what: str, again: str) -> int:
    """Append `record`; one message when it was not, or may not have been, appended."""
    try:
        _, offset = asyncio.run(append_control(settings.kafka_bootstrap, t.control, record))
    except NotWritten as exc:
        raise failure(settings.kafka_bootstrap, f"{what} was not recorded", exc) from None
    except Unconfirmed as exc:
        raise failure(settings.kafka_bootstrap, f"{what} may or may not have been recorded", exc,
                      after=again) from None
    return offset


@click.group(name="payouts")
def payouts() -> None:
    """Payout runs, their payouts and what became of them (docs/cli.md#payouts-run)."""


# --- run ---------------------------------------------------------------------------------------


FUTURE_SLACK_S = 60  # clocks differ a little: "now" on the operator's machine is not in the future


@payouts.command(name="run")
@click.option("--as-of", "as_of", required=True, help="Pay entries payable by then: ISO 8601 with an offset, "
              "or Unix seconds.")
@click.option("--run-id", default=None, help="Idempotency key of the run [default: derived from --as-of].")
@click.option("--reason", default="", help="Why this run (kept with it).")
@click.option("--actor", default=None, help="Who runs it [default: the OS user].")
@click.option("--yes", is_flag=True, help="Append without asking (the preview is still shown).")
@click.option("--dry-run", is_flag=True, help="Only show who would get how much; append nothing.")
@click.option("--force", is_flag=True, help="Allow an --as-of in the future.")
@click.option("--topic-prefix", default="refstream", hidden=True)
def run(as_of: str, run_id: str | None, reason: str, actor: str | None, yes: bool, dry_run: bool, force: bool,
        topic_prefix: str) -> None:
    """Show what a payout run as of TS pays, then append it; every worker then pays each
    referrer what is payable as of TS."""
    from refstream import control_log

    at = parse_ts(as_of)
    now = int(time.time())
    when = datetime.fromtimestamp(at, UTC).isoformat()
    if at > now + FUTURE_SLACK_S and not force:
        raise click.ClickException(
            f"--as-of {when} is in the future. A run as of then pays entries that are not payable yet "
            "(still in their hold, or earned later than now): use a time up to now, or add --force if "
            "that is what you mean.")
    settings = settings_or_fail()
    t = Topics(settings.env, topic_prefix)
    record = control.PayoutRun(run_id or default_run_id(at), at, now, control_log.actor(actor),
                               reason.strip())
    not_appended = f"The payout run {record.run_id!r} was not appended"
    records = control_log.decoded(
        v for _, v in _read(settings, [t.control], not_appended, after="Nothing is paid until it is."))
    earlier = next((r for r in records if isinstance(r, control.PayoutRun) and r.run_id == record.run_id),
                   None)
    if earlier is not None:
        click.echo(f"payout run {record.run_id!r} is in the log already (requested "
                   f"{_when(earlier.requested_at)} UTC by {earlier.actor or 'an earlier version'}): a run id "
                   f"pays once, so appending it again would pay nothing. `refstream payouts list --run "
                   f"{record.run_id}` shows what it paid.")
        return
    from projections import ledger

    try:
        engine = ledger.fold(settings.kafka_bootstrap, t, ledger.first_book(records, settings.rules_path))
    except Exception as exc:
        raise failure(settings.kafka_bootstrap, not_appended, exc,
                      after="Nothing is paid until it is.") from None
    paying = ledger.preview(engine, record)
    _show_preview(record, paying)
    if dry_run:
        click.echo("dry run: nothing appended.")
        return
    if not paying:
        click.echo("note: as of now the run pays nothing; it still records the run id (entries that become "
                   "payable later are paid by a later run).")
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException(
                "not appended: confirm with --yes when no one can answer the prompt (or --dry-run to "
                "only look).")
        if not click.confirm(f"Append payout run {record.run_id!r}?", default=False):
            click.echo("not appended.")
            return
    try:
        partition, offset = asyncio.run(append_control(settings.kafka_bootstrap, t.control, record))
    except NotWritten as exc:
        raise failure(settings.kafka_bootstrap, not_appended, exc,
                      after="Nothing is paid until it is.") from None
    except Unconfirmed as exc:
        raise failure(settings.kafka_bootstrap,
                      f"The payout run {record.run_id!r} may or may not have been appended", exc,
                      after="Running the same command again is safe: a run id pays once.") from None
    click.echo(f"appended payout run {record.run_id!r} as of {when} to {t.control} "
               f"(partition {partition}, offset {offset}):")
    click.echo(orjson.dumps(orjson.loads(control.encode(record)), option=orjson.OPT_SORT_KEYS).decode())


def _show_preview(record: control.PayoutRun, paying: list[commands.PayoutCommand]) -> None:
    as_of = datetime.fromtimestamp(record.as_of, UTC).isoformat()
    if not paying:
        click.echo(f"payout run {record.run_id!r} as of {as_of} pays no one: nothing is payable by then "
                   "(or every balance is below its min_payout).")
        return
    click.echo(f"payout run {record.run_id!r} as of {as_of} would pay, if it took effect now:")
    click.echo(f"  {'referrer':24} {'amount':>16}  entries")
    totals: dict[str, tuple[int, int]] = {}
    for p in sorted(paying, key=lambda p: (p.ucc, p.currency)):
        click.echo(f"  {p.ucc:24} {_money(p.amount, p.currency):>16}  {len(p.entry_ids)}")
        n, total = totals.get(p.currency, (0, 0))
        totals[p.currency] = (n + 1, total + p.amount)
    for currency, (n, total) in sorted(totals.items()):
        click.echo(f"  total {currency}: {_money(total, currency)} to {n} referrer{'s' if n != 1 else ''}")


# --- list --------------------------------------------------------------------------------------


@payouts.command(name="list")
@click.option("--run", "run_id", default=None, help="One run's payouts [default: every run].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--topic-prefix", default="refstream", hidden=True)
def list_(run_id: str | None, as_json: bool, topic_prefix: str) -> None:
    """Payout runs, their payouts and what became of each (pending, paid, failed, returned)."""
    from processors.answers import money

    settings = settings_or_fail()
    t = Topics(settings.env, topic_prefix)
    book = _book(settings, t, "Cannot list the payouts")
    if run_id is not None:
        if run_id not in book.runs:
            raise click.ClickException(
                f"there is no payout run {run_id!r} in {t.control}. `refstream payouts list` shows the runs.")
        views = book.of_run(run_id)
        if as_json:
            for v in views:
                p = v.payout
                click.echo(orjson.dumps({
                    "payout_id": p.payout_id, "run_id": p.run_id, "ucc": p.ucc,
                    "money": money(p.amount, p.currency),
                    "entries": len(p.entry_ids), "status": v.status, "reference": v.reference,
                    "outcomes": [{"status": o.status, "reference": o.reference, "at": o.at, "actor": o.actor,
                                  "reason": o.reason} for o in v.outcomes],
                }).decode())
            return
        r = book.runs[run_id]
        click.echo(f"run {run_id} as of {_when(r.as_of)} UTC, requested {_when(r.requested_at)} UTC"
                   + (f" by {r.actor}" if r.actor else "") + (f": {r.reason}" if r.reason else ""))
        if not views:
            click.echo(f"  no payouts on {t.payouts}: it paid no one, the worker has not applied it yet, "
                       "or its payouts are past the topic's retention (30 days; `refstream audit UCC` keeps "
                       "them)")
            return
        click.echo(f"  {'payout':34} {'referrer':20} {'amount':>14}  {'status':8}  reference")
        for v in views:
            p = v.payout
            click.echo(f"  {p.payout_id:34} {p.ucc:20} {_money(p.amount, p.currency):>14}  {v.status:8}  "
                       f"{v.reference}")
        return
    rows = []
    for rid, r in book.runs.items():
        views = book.of_run(rid)
        counts: dict[str, int] = {}
        totals: dict[str, int] = {}
        for v in views:
            counts[v.status] = counts.get(v.status, 0) + 1
            totals[v.payout.currency] = totals.get(v.payout.currency, 0) + v.payout.amount
        rows.append((r, views, counts, totals))
    if as_json:
        for r, views, counts, totals in rows:
            click.echo(orjson.dumps({
                "run_id": r.run_id, "as_of": r.as_of, "requested_at": r.requested_at, "actor": r.actor,
                "reason": r.reason, "payouts": len(views), "by_status": counts,
                "totals": [money(a, c) for c, a in sorted(totals.items())],
            }).decode())
        return
    if not rows:
        click.echo("No payout runs yet. Start one with `refstream payouts run --as-of TS`.")
        return
    click.echo(f"{'run':24} {'as of (UTC)':19} {'payouts':>7}  {'total':>16}  status")
    for r, views, counts, totals in rows:
        total = ", ".join(_money(a, c) for c, a in sorted(totals.items())) or "-"
        status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "-"
        click.echo(f"{r.run_id:24} {_when(r.as_of):19} {len(views):>7}  {total:>16}  {status}")


# --- execute -----------------------------------------------------------------------------------

API_KEY_VAR = "REFSTREAM_STRIPE_API_KEY"
API_BASE_VAR = "REFSTREAM_STRIPE_API_BASE"
CURRENCIES_VAR = "REFSTREAM_TRANSFER_CURRENCIES"
EXECUTE_ACTOR_REASON = "transferred with Stripe Connect by refstream payouts execute"


def stripe_settings(env: str) -> tuple[str, str | None, frozenset[str]]:
    """The secret key (a test key for sandbox, a live one for production), the API's
    address (None: Stripe's own) and the currencies the platform transfers."""
    key = os.environ.get(API_KEY_VAR, "").strip()
    if not key:
        raise click.ClickException(
            f"{API_KEY_VAR} is not set: `payouts execute` pays through Stripe Connect with the platform's "
            "secret key (or a restricted key allowed to create transfers). Copy it from the Dashboard, "
            "Developers → API keys: sk_test_… for sandbox, sk_live_… for production.")
    mode = "live" if env == "production" else "test"
    if not re.match(rf"^(sk|rk)_{mode}_\S+$", key):
        other = "sk_test_… or rk_test_…" if mode == "test" else "sk_live_… or rk_live_…"
        raise click.ClickException(
            f"{API_KEY_VAR} is not a {mode}-mode secret key, and REFSTREAM_ENV is {env!r}: {env} pays with "
            f"{other} only, so sandbox never moves real money and production never fakes it.")
    base = os.environ.get(API_BASE_VAR, "").strip() or None
    raw = os.environ.get(CURRENCIES_VAR, "usd")
    currencies = frozenset(c.strip().lower() for c in raw.split(",") if c.strip())
    if not currencies or any(not re.fullmatch(r"[a-z]{3}", c) for c in currencies):
        raise click.ClickException(f"{CURRENCIES_VAR}={raw!r} is not a list of currency codes. Set it to the "
                                   "currencies your platform balance transfers, e.g. usd,eur.")
    return key, base, currencies


def stripe_transfer(key: str, base: str | None) -> Callable[[commands.PayoutCommand, str], str]:
    """`Transfer.create` of the stripe library, the payout id as the idempotency key."""
    import stripe

    from projections.payouts import TransferRefused, TransferUnconfirmed, transfer_params

    if base:
        stripe.api_base = base
    stripe.max_network_retries = 2  # the library retries with the same idempotency key

    def transfer(p: commands.PayoutCommand, destination: str) -> str:
        try:
            made = stripe.Transfer.create(api_key=key, idempotency_key=p.payout_id,
                                          **transfer_params(p, destination))  # type: ignore[arg-type]
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise click.ClickException(
                f"Stripe refused {API_KEY_VAR} ({exc.user_message or exc}): no further transfer is tried. "
                "Check the key (a restricted key needs write access to transfers).") from None
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise TransferUnconfirmed(f"Stripe did not answer ({type(exc).__name__})") from None
        except stripe.StripeError as exc:
            if exc.http_status is not None and exc.http_status >= 500:
                raise TransferUnconfirmed(f"Stripe answered {exc.http_status}") from None
            code = f" [{exc.code}]" if exc.code else ""
            raise TransferRefused(f"Stripe refused the transfer{code}: {exc.user_message or exc}") from None
        return str(made.id)

    return transfer


@payouts.command(name="execute")
@click.option("--run", "run_id", default=None,
              help="Only this run's payouts [default: every pending payout].")
@click.option("--actor", default=None, help="Who pays [default: the OS user].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def execute(run_id: str | None, actor: str | None, topic_prefix: str) -> None:
    """Pay the pending payouts with Stripe Connect transfers, each to its referrer's connected
    account, and record each as paid. Safe to run again, also after a crash."""
    from projections.payouts import execute as pay
    from refstream import control_log

    settings = settings_or_fail()
    key, base, currencies = stripe_settings(settings.env)
    t = Topics(settings.env, topic_prefix)
    book = _book(settings, t, "Cannot read the payouts to execute", after="Nothing was transferred.")
    if run_id is not None and run_id not in book.runs:
        raise click.ClickException(f"there is no payout run {run_id!r} in {t.control}. "
                                   "`refstream payouts list` shows the runs.")
    views = [v for v in book.payouts.values() if run_id is None or v.payout.run_id == run_id]
    pending = [v for v in views if v.status == control.PENDING]
    if not pending:
        click.echo("nothing to pay: every payout" + (f" of run {run_id}" if run_id else "")
                   + " is paid, failed or returned already.")
        return
    who = control_log.actor(actor)
    transfer = stripe_transfer(key, base)
    done: list[tuple[commands.PayoutCommand, str]] = []

    async def main() -> list[Any]:
        async with ControlWriter(settings.kafka_bootstrap, t.control) as writer:
            loop = asyncio.get_running_loop()

            def paid(view: Any, transfer_id: str) -> None:
                p = view.payout
                outcome = control.PayoutOutcome(p.payout_id, p.ucc, control.PAID, transfer_id,
                                                int(time.time()), who, EXECUTE_ACTOR_REASON)
                asyncio.run_coroutine_threadsafe(writer.append(outcome), loop).result()
                done.append((p, transfer_id))
                click.echo(f"paid {p.payout_id} {p.ucc} {_money(p.amount, p.currency)}: "
                           f"transfer {transfer_id}")

            # the stripe library blocks: the transfers run on a thread, the appends on this loop
            return await asyncio.to_thread(pay, pending, book.accounts, currencies, transfer, paid)

    try:
        unpaid = asyncio.run(main())
    except NotWritten as exc:
        raise failure(settings.kafka_bootstrap, "A transfer's outcome was not recorded", exc,
                      after=f"{len(done)} payouts were paid and recorded; the last transfer is made but not "
                            "recorded: run `refstream payouts execute` again once Kafka is back (the same "
                            "idempotency key returns the same transfer).") from None
    except Unconfirmed as exc:
        raise failure(settings.kafka_bootstrap, "A transfer's outcome may or may not have been recorded", exc,
                      after="Run `refstream payouts execute` again: a payout recorded paid is skipped, and "
                            "one that is not gets the same transfer back.") from None
    totals: dict[str, int] = {}
    for p, _ in done:
        totals[p.currency] = totals.get(p.currency, 0) + p.amount
    click.echo(f"paid {len(done)} payout{'s' if len(done) != 1 else ''}"
               + (": " + ", ".join(_money(a, c) for c, a in sorted(totals.items())) if totals else ""))
    if unpaid:
        fixes = {
            "no_account": "set one with `refstream referrers set-account UCC acct_… --reason …`",
            "unsupported_currency": f"add the currency to {CURRENCIES_VAR} if the platform transfers it, or "
                                    "pay by hand (`refstream payouts export`, then `payouts mark-paid`)",
            "refused": "fix what Stripe named and run execute again (after 24 h Stripe forgets the key's "
                       "answer), or `refstream payouts mark-failed PAYOUT --reason …` to owe it again",
            "unreachable": "run execute again: the same idempotency key never transfers twice",
        }
        for u in unpaid:
            p = u.view.payout
            click.echo(f"left unpaid {p.payout_id} {p.ucc} {_money(p.amount, p.currency)}: {u.detail}",
                       err=True)
        for why in sorted({u.why for u in unpaid}):
            click.echo(f"  fix ({why}): {fixes[why]}", err=True)
        raise click.ClickException(f"{len(unpaid)} payout{'s were' if len(unpaid) != 1 else ' was'} left "
                                   "unpaid (listed above, with the fix).")


# --- export ------------------------------------------------------------------------------------


@payouts.command(name="export")
@click.option("--run", "run_id", required=True, help="The payout run to export.")
@click.option("--format", "fmt", type=click.Choice(["csv", "paypal", "wise"]), required=True,
              help="csv: every payout of the run; paypal: a PayPal Payouts file; wise: a Wise batch file.")
@click.option("--currency", default=None,
              help="Only this currency (paypal: PayPal takes one currency per file).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the file here [default: stdout].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def export(run_id: str, fmt: str, currency: str | None, out: Path | None, topic_prefix: str) -> None:
    """A file of a run's payouts for paying by hand: PayPal Payouts, a Wise batch, or CSV.
    Record each payment afterwards with `payouts mark-paid`."""
    from projections.payouts import export as render

    settings = settings_or_fail()
    t = Topics(settings.env, topic_prefix)
    if out is not None and not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise click.ClickException(f"cannot write {out}: the folder {out.parent} does not exist. Create it, "
                                   "or choose another --out.")
    book = _book(settings, t, f"Cannot export run {run_id}")
    if run_id not in book.runs:
        raise click.ClickException(f"there is no payout run {run_id!r} in {t.control}. "
                                   "`refstream payouts list` shows the runs.")
    views = book.of_run(run_id)
    if not views:
        raise click.ClickException(f"run {run_id} has no payouts on {t.payouts}: it paid no one, the worker "
                                   "has not applied it yet, or they are past the topic's retention "
                                   "(30 days).")
    currencies = sorted({v.payout.currency for v in views})
    if currency is not None:
        currency = currency.strip().lower()
        if currency not in currencies:
            raise click.ClickException(f"run {run_id} pays no {currency}: its currencies are "
                                       f"{', '.join(currencies)}.")
        views = [v for v in views if v.payout.currency == currency]
    elif fmt == "paypal" and len(currencies) > 1:
        raise click.ClickException(
            f"run {run_id} pays in {', '.join(currencies)}, and a PayPal Payouts file holds one currency. "
            f"Export one file per currency: --currency {currencies[0]}, then --currency {currencies[1]}.")
    made = render(views, book.accounts, fmt)
    if out is None:
        sys.stdout.write(made.text)
        sys.stdout.flush()
    else:
        try:
            out.write_text(made.text, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot write {out}: {exc.strerror}.") from None
        click.echo(f"wrote {made.rows} payout{'s' if made.rows != 1 else ''} of run {run_id} to {out} "
                   f"({fmt})", err=True)
    for view, why in made.left_out:
        p = view.payout
        click.echo(f"left out {p.payout_id} {p.ucc} {_money(p.amount, p.currency)}: {why}", err=True)
    if any("e-mail" in why for _, why in made.left_out):
        raise click.ClickException(
            "payouts were left out for want of an e-mail account: set one with `refstream referrers "
            "set-account UCC someone@example.com --reason …` and export again.")


# --- outcomes by hand --------------------------------------------------------------------------


def _outcome(payout_id: str, status: str, reference: str, reason: str, actor: str | None,
             topic_prefix: str) -> None:
    from projections.payouts import status_after
    from refstream import control_log

    settings = settings_or_fail()
    t = Topics(settings.env, topic_prefix)
    verb = {control.PAID: "paid", control.FAILED: "failed", control.RETURNED: "returned"}[status]
    book = _book(settings, t, f"Cannot look up payout {payout_id}", after="Nothing was recorded.")
    view = book.payouts.get(payout_id)
    if view is None:
        raise click.ClickException(
            f"there is no payout {payout_id!r} on {t.payouts}. `refstream payouts list --run RUN` shows a "
            "run's payouts with their ids (a payout older than the topic's 30-day retention is no longer "
            "there).")
    current = status_after(book.outcomes.get(payout_id, []))
    if not control.outcome_applies(current, status):
        why = {
            control.PAID: f"it is paid already (reference {view.reference or 'none'})",
            control.FAILED: "it failed already: its amount is owed again, and the next payout run pays it "
                            "under a new payout id",
            control.RETURNED: "it was returned already: its amount is owed again, and the next payout run "
                              "pays it under a new payout id",
        }[current]
        raise click.ClickException(f"payout {payout_id} cannot be marked {verb}: {why}.")
    p = view.payout
    record = control.PayoutOutcome(payout_id, p.ucc, status, reference, int(time.time()),
                                   control_log.actor(actor), reason)
    offset = _append_one(settings, t, record, f"The outcome of payout {payout_id}",
                         "Marking it again is harmless: a payout takes each outcome once.")
    owed = "" if status == control.PAID else "; its amount is owed again and the next payout run pays it"
    click.echo(f"recorded payout {payout_id} ({p.ucc}, {_money(p.amount, p.currency)}) as {verb} "
               f"(offset {offset} of {t.control}){owed}")


@payouts.command(name="mark-paid")
@click.argument("payout_id", metavar="PAYOUT_ID")
@click.option("--reference", required=True, help="Your reference of the payment (bank, PayPal or Wise id).")
@click.option("--reason", default="paid by hand", show_default=True, help="Kept with the outcome.")
@click.option("--actor", default=None, help="Who paid [default: the OS user].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def mark_paid(payout_id: str, reference: str, reason: str, actor: str | None, topic_prefix: str) -> None:
    """Record a payment made by hand: the payout is paid and is never executed."""
    reference = _text_or_fail(reference, "--reference", "PAYPAL-5TY05013RB002845M")
    _outcome(payout_id, control.PAID, reference, _text_or_fail(reason, "--reason", "paid by hand"), actor,
             topic_prefix)


@payouts.command(name="mark-failed")
@click.argument("payout_id", metavar="PAYOUT_ID")
@click.option("--reason", required=True, help="Why it failed (kept with the outcome).")
@click.option("--returned", is_flag=True, help="It reached the referrer and came back (else: it never did).")
@click.option("--reference", default="", help="A reference of the failure, if any.")
@click.option("--actor", default=None, help="Who records it [default: the OS user].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def mark_failed(payout_id: str, reason: str, returned: bool, reference: str, actor: str | None,
                topic_prefix: str) -> None:
    """Record that a payout failed (or, with --returned, came back): its amount is owed again
    and the next payout run pays it (docs/rules.md#the-payout-lifecycle)."""
    _outcome(payout_id, control.RETURNED if returned else control.FAILED, reference.strip(),
             _text_or_fail(reason, "--reason", "the account is closed"), actor, topic_prefix)
