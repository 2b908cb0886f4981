"""`refstream demo`: signed sample webhooks to a running ingest, then what came out.

Sends the worked example of docs/rules.md and a small programme (projections/demo.py), signed with
the configured sandbox secret; waits for the worker to fold them; prints the referrer
tables (from the worker's web API), the commands on the output topics (read_committed)
and the result of a payout run as of 2026-02-15.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import click

from refstream.commands.payouts import append_control, settings_or_fail
from refstream.commands.review import read_to_end
from schemas import commands, control
from schemas.topics import Topics

AS_OF = "2026-02-15T00:00:00+00:00"


def _sign(body: bytes, secret: str) -> str:
    t = int(time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _day(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def _money(amount: int, currency: str | None) -> str:
    return f"{amount / 100:,.2f} {(currency or '').upper()}".strip()


async def _post_all(url: str, bodies: list[bytes], secret: str) -> Counter[int]:
    import aiohttp

    answers: Counter[int] = Counter()
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            try:
                async with http.post(f"{url}/webhooks/stripe/sandbox", data=body,
                                     headers={"Stripe-Signature": _sign(body, secret),
                                              "Content-Type": "application/json"}) as resp:
                    answers[resp.status] += 1
            except aiohttp.ClientError as exc:
                raise click.ClickException(
                    f"ingest at {url} did not answer ({exc.__class__.__name__}). Start it with "
                    "`refstream ingest`, or pass --ingest-url."
                ) from None
    return answers


async def _get(url: str, token: str | None) -> tuple[int, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers,
                                                          timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.json(content_type=None)


async def _outputs(bootstrap: str, t: Topics) -> list[commands.Command]:
    records = await read_to_end(bootstrap, [t.payouts, t.notifications, t.reviews])
    return [commands.decode(v) for _, v in records]


async def _wait_for(what: str, check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"timed out after {timeout_s:.0f}s waiting for {what}. Is `refstream worker` running "
                "against the same Kafka and environment? Its log says why it is not keeping up."
            )
        await asyncio.sleep(0.5)


def _order(c: commands.Command) -> tuple[str, int, str]:
    if isinstance(c, commands.NotificationCommand):
        return (c.ucc, c.occurred_at, c.kind)
    if isinstance(c, commands.ReviewCase):
        return (c.ucc, c.opened_at, c.kind)
    return (c.ucc, c.as_of, "payout")


def _print_command(c: commands.Command) -> None:
    if isinstance(c, commands.NotificationCommand):
        click.echo(f"  notification {c.kind:27} {c.ucc:14} {c.referral_id or '':16} "
                   f"{_money(c.amount, c.currency):>14}  {_day(c.occurred_at)}  id {c.notification_id[:12]}…")
    elif isinstance(c, commands.ReviewCase):
        click.echo(f"  review case  {c.kind:27} {c.ucc:14} {c.referral_id:16} {'':>14}  "
                   f"{_day(c.opened_at)}  id {c.case_id}")
    else:
        click.echo(f"  payout       run {c.run_id:23} {c.ucc:14} {len(c.entry_ids):3} entries    "
                   f"{_money(c.amount, c.currency):>14}  as of {_day(c.as_of)}  id {c.payout_id[:12]}…")


async def _demo(ingest_url: str, worker_url: str, timeout_s: float, topic_prefix: str) -> None:
    import os

    from processors.engine import Engine
    from projections.demo import Programme, programme, worked_example
    from refstream.commands.payouts import parse_ts
    from schemas.rules import load_rules

    settings = settings_or_fail()
    secrets = settings.stripe_secrets.get("sandbox") or ()
    if not secrets:
        raise click.ClickException(
            "No sandbox signing secret is configured, so the demo cannot sign its webhooks. Set "
            "REFSTREAM_STRIPE_SECRETS_SANDBOX to the secret ingest uses (`make demo` writes one "
            "into .data/demo.env)."
        )
    token = os.environ.get("REFSTREAM_WEB_TOKEN", "").strip() or None
    t = Topics(settings.env, topic_prefix)
    bodies = worked_example() + list(programme(Programme(referrers=4, customers=12, seed=2026)))

    # what the pure core computes for the same events: how much output to wait for
    from processors.app import DEFAULT_RULES

    engine = Engine(load_rules(settings.rules_path or DEFAULT_RULES))
    folded = [r for b in bodies for r in engine.feed_stripe(b)]
    uccs = sorted({r.record.ucc for r in folded})

    click.echo(f"Sending {len(bodies)} signed webhooks to {ingest_url} (docs/rules.md's worked example for "
               f"ucc_X, and {len(uccs) - 1} more referrers; some delivered twice, as Stripe does)…")
    answers = await _post_all(ingest_url, bodies, secrets[0])
    click.echo("  ingest answered: " + ", ".join(f"{n} × {status}" for status, n in sorted(answers.items())))
    if set(answers) != {200}:
        raise click.ClickException("ingest refused some webhooks: its log names the reason for each.")

    async def folded_enough() -> list[commands.Command] | None:
        got = await _outputs(settings.kafka_bootstrap, t)
        ids = {commands.encode(c) for c in got}
        return got if all(commands.encode(r.record) in ids for r in folded) else None

    await _wait_for("the worker to fold the webhooks", folded_enough, timeout_s)

    as_of = parse_ts(AS_OF)
    run = control.PayoutRun(f"demo-{_day(as_of)}", as_of, int(time.time()))
    await append_control(settings.kafka_bootstrap, t.control, run)
    paid = [r.record for r in engine.feed_control(control.encode(run))
            if isinstance(r.record, commands.PayoutCommand)]

    async def run_done() -> list[commands.Command] | None:
        got = await _outputs(settings.kafka_bootstrap, t)
        have = {c.payout_id for c in got if isinstance(c, commands.PayoutCommand) and c.run_id == run.run_id}
        return got if {p.payout_id for p in paid} <= have else None

    outputs = await _wait_for(f"payout run {run.run_id}", run_done, timeout_s)

    click.echo(f"\nReferrer tables (GET {worker_url}/referrers/{{ucc}}, payable as of {_day(as_of)}):")
    click.echo(f"  {'ucc':14} {'referrals':>9} {'cases':>5}  {'currency':8} {'earned':>10} {'reversed':>10} "
               f"{'net':>10} {'paid':>10} {'payable':>10}")
    for ucc in uccs:
        status, summary = await _get(f"{worker_url}/referrers/{ucc}?as_of={as_of}", token)
        if status != 200:
            click.echo(f"  {ucc:14} (worker answered {status}: {summary.get('error', summary)})")
            continue
        for cur, s in sorted(summary["currencies"].items()):
            click.echo(f"  {ucc:14} {summary['referrals']:>9} {summary['open_cases']:>5}  {cur.upper():8} "
                       + " ".join(f"{s[k] / 100:>10,.2f}" for k in ("earned", "reversed", "net", "paid",
                                                                      "payable")))

    mine = {commands.encode(r.record) for r in folded} | {commands.encode(p) for p in paid}
    shown = [c for c in outputs if commands.encode(c) in mine and not isinstance(c, commands.PayoutCommand)]
    click.echo(f"\nCommands on {t.notifications} and {t.reviews} (read_committed), {len(shown)}:")
    for c in sorted(shown, key=_order):
        _print_command(c)
    click.echo(f"\nPayout run {run.run_id!r} as of {_day(as_of)} → {t.payouts}:")
    for c in outputs:
        if isinstance(c, commands.PayoutCommand) and c.run_id == run.run_id:
            _print_command(c)
    click.echo("  (ucc_X is the worked example of docs/rules.md: 500 + 2,500 + 1,000 − 1,250 = 27.50 USD)")
    click.echo("\nTry: refstream review list · refstream payouts run --as-of 2026-03-01T00:00:00Z · "
               f"curl {worker_url}/referrers/ucc_X")


@click.command(name="demo")
@click.option("--ingest-url", default="http://127.0.0.1:8080", show_default=True)
@click.option("--worker-url", default="http://127.0.0.1:6066", show_default=True,
              help="A worker's web API (any worker answers for every referrer).")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True,
              help="Seconds to wait for the worker.")
@click.option("--topic-prefix", default="refstream", hidden=True)
def demo(ingest_url: str, worker_url: str, timeout_s: float, topic_prefix: str) -> None:
    """Send signed sample webhooks to a running ingest and print what came out."""
    asyncio.run(_demo(ingest_url.rstrip("/"), worker_url.rstrip("/"), timeout_s, topic_prefix))
