"""`refstream demo`: signed sample webhooks to a running ingest, then what came out.

Sends the worked example of docs/rules.md, a late attribution that opens a review case and
a small programme (projections/demo.py), signed with the configured sandbox secret, and
waits for the worker to fold them. Then it shows the referrer tables (the worker's web API)
before and after a payout run as of 2026-02-15, the commands on the output topics
(read_committed) counted by kind (`--all` lists each one), and the review case with the
command that decides it. With `--wait-for-review` (what `make demo` uses) it then waits for
that decision and shows what it released, and what a second payout run pays for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from refstream.commands import refstream_command
from refstream.commands.kafka_access import NotWritten, Unconfirmed, failure
from refstream.commands.payouts import append_control, settings_or_fail
from refstream.commands.review import Queue, load_queue, read_to_end
from schemas import commands, control
from schemas.events import CASES
from schemas.topics import Topics

AS_OF = "2026-02-15T00:00:00+00:00"
RUN_ID = "demo-2026-02-15"
REVIEW_RUN_ID = "demo-2026-02-15-after-review"
T = TypeVar("T")


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


class Worker:
    """The worker's web API: a referrer's summary as of a time."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def summaries(self, uccs: Sequence[str], as_of: int) -> dict[str, dict[str, Any]]:
        import aiohttp

        out: dict[str, dict[str, Any]] = {}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                for ucc in uccs:
                    url = f"{self.url}/referrers/{ucc}?as_of={as_of}"
                    async with http.get(url, headers=self.headers) as r:
                        body = await r.json(content_type=None)
                        if r.status != 200:
                            raise click.ClickException(
                                f"the worker at {self.url} answered {r.status} for {ucc}: "
                                f"{body.get('error', body) if isinstance(body, dict) else body}"
                            )
                        out[ucc] = body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise click.ClickException(
                f"the worker at {self.url} did not answer ({type(exc).__name__}). Start it with "
                "`refstream worker`, or pass --worker-url."
            ) from None
        return out


_COLUMNS = (("earned", "earned", 9), ("reversed", "reversed", 9), ("net", "net", 9),
            ("paid", "paid so far", 11), ("payable", "payable", 9))


def print_table(summaries: dict[str, dict[str, Any]],
                this_run: dict[tuple[str, str], int] | None = None) -> None:
    head = f"  {'ucc':14} {'referrals':>9} {'open cases':>10}  {'currency':8} " + " ".join(
        f"{title:>{width}}" for _, title, width in _COLUMNS)
    click.echo(head + ("  this run" if this_run is not None else ""))
    for ucc, summary in summaries.items():
        for cur, s in sorted(summary["currencies"].items()):
            line = (f"  {ucc:14} {summary['referrals']:>9} {summary['open_cases']:>10}  {cur.upper():8} "
                    + " ".join(f"{s[key]['amount'] / 100:>{width},.2f}" for key, _, width in _COLUMNS))
            if this_run is not None:
                paid = this_run.get((ucc, cur))
                line += f"  {paid / 100:>8,.2f}" if paid else f"  {'—':>8}"
            click.echo(line)


def _amount(currencies: dict[str, Any], currency: str, figure: str) -> int:
    """A figure of the worker's summary (money as {"amount", "currency"}), 0 when absent."""
    money = currencies.get(currency, {}).get(figure)
    return int(money["amount"]) if money else 0


def _id(c: commands.Command) -> str:
    """A command's id: derived from the facts, so the same input gives the same ids on a rerun."""
    if isinstance(c, commands.NotificationCommand):
        return c.notification_id
    if isinstance(c, commands.ReviewCase):
        return c.case_id
    return c.payout_id


def _kind(c: commands.Command) -> str:
    return "payout" if isinstance(c, commands.PayoutCommand) else c.kind


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


async def _wait_for(what: str, check: Callable[[], Awaitable[T | None]], timeout_s: float | None) -> T:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        result = await check()
        if result is not None:
            return result
        if deadline is not None and time.monotonic() > deadline:
            raise click.ClickException(
                f"timed out after {timeout_s:.0f}s waiting for {what}. Is `refstream worker` running "
                "against the same Kafka and environment? Its log says why it is not keeping up."
            )
        await asyncio.sleep(0.5)


class Demo:
    def __init__(self, ingest_url: str, worker_url: str, timeout_s: float, topic_prefix: str) -> None:
        from processors.app import DEFAULT_RULES
        from processors.rules.engine import Engine
        from schemas.rules import load_rules

        self.settings = settings_or_fail()
        secrets = self.settings.stripe_secrets.get("sandbox") or ()
        if not secrets:
            raise click.ClickException(
                "No sandbox signing secret is configured, so the demo cannot sign its webhooks. Set "
                "REFSTREAM_STRIPE_SECRETS_SANDBOX to the secret ingest uses (`make demo` writes one "
                "into .data/demo.env; load it with `set -a; . .data/demo.env; set +a`)."
            )
        self.secret = secrets[0]
        self.ingest_url = ingest_url
        self.worker = Worker(worker_url, os.environ.get("REFSTREAM_WEB_TOKEN", "").strip() or None)
        self.timeout_s = timeout_s
        self.topics = Topics(self.settings.env, topic_prefix)
        self.bootstrap = self.settings.kafka_bootstrap
        # what the pure core computes for the same input: which outputs to wait for
        self.engine = Engine(load_rules(self.settings.rules_path or DEFAULT_RULES))
        self.as_of = int(datetime.fromisoformat(AS_OF).timestamp())
        self.wanted: set[str] = set()  # the ids of the commands the demo's input makes

    def expect(self, control_record: bytes) -> list[commands.Command]:
        """What the worker will write for this control record, by the pure core's reckoning."""
        made = [r.record for r in self.engine.feed_control(control_record) if r.dest != CASES]
        self.wanted |= {_id(c) for c in made}
        return made

    async def outputs(self) -> list[commands.Command]:
        t = self.topics
        try:
            records = await read_to_end(self.bootstrap, [t.payouts, t.notifications, t.reviews])
        except Exception as exc:
            raise failure(self.bootstrap, "Cannot read the commands the worker wrote", exc) from None
        return [commands.decode(v) for _, v in records]

    async def queue(self) -> Queue:
        try:
            return await load_queue(self.bootstrap, self.topics)
        except Exception as exc:
            raise failure(self.bootstrap, "Cannot read the review queue", exc) from None

    async def append(self, record: control.ControlRecord, what: str) -> None:
        try:
            await append_control(self.bootstrap, self.topics.control, record)
        except NotWritten as exc:
            raise failure(self.bootstrap, f"{what} was not appended", exc) from None
        except Unconfirmed as exc:
            raise failure(self.bootstrap, f"{what} may or may not have been appended", exc,
                          after="Running the demo again is safe.") from None

    async def pay(self, run_id: str) -> tuple[list[commands.PayoutCommand], bool]:
        """Appends payout run `run_id` as of AS_OF; returns its payouts once the worker made
        them, and whether an earlier demo had already made them (a run id pays once)."""
        before = {c.payout_id for c in await self.outputs() if isinstance(c, commands.PayoutCommand)
                  and c.run_id == run_id}
        run = control.PayoutRun(run_id, self.as_of, int(time.time()))
        await self.append(run, f"The payout run {run_id!r}")
        expected = {c.payout_id for c in self.expect(control.encode(run))
                    if isinstance(c, commands.PayoutCommand)}

        async def done() -> list[commands.PayoutCommand] | None:
            mine = [c for c in await self.outputs()
                    if isinstance(c, commands.PayoutCommand) and c.run_id == run_id]
            return mine if expected <= {c.payout_id for c in mine} else None

        payouts = await _wait_for(f"payout run {run_id}", done, self.timeout_s)
        return payouts, bool(before) and before >= {c.payout_id for c in payouts}

    async def run(self, show_all: bool, wait_for_review: bool) -> None:
        from projections.demo import LATE_UCC, Programme, late_attribution_example, programme, worked_example

        bodies = (worked_example() + late_attribution_example()
                  + list(programme(Programme(referrers=4, customers=12, seed=2026))))
        # the commands; the case states (review-cases topic) are the review queue's, not shown here
        folded = [r.record for b in bodies for r in self.engine.feed_stripe(b) if r.dest != CASES]
        uccs = sorted({r.ucc for r in folded})
        t = self.topics

        click.echo(f"Sending {len(bodies)} signed webhooks to {self.ingest_url}: the worked example of "
                   f"docs/rules.md (ucc_X), a late attribution that opens a review case ({LATE_UCC}) and "
                   f"{len(uccs) - 2} more referrers; some delivered twice, as Stripe does.")
        answers = await _post_all(self.ingest_url, bodies, self.secret)
        click.echo("  ingest answered: " + ", ".join(f"{n} × {s}" for s, n in sorted(answers.items())))
        if set(answers) != {200}:
            raise click.ClickException("ingest refused some webhooks: its log names the reason for each.")
        wanted = {_id(c) for c in folded}
        self.wanted |= wanted

        async def all_folded() -> list[commands.Command] | None:
            got = await self.outputs()
            return got if wanted <= {_id(c) for c in got} else None

        started = time.monotonic()
        await _wait_for("the worker to fold the webhooks", all_folded, self.timeout_s)
        click.echo(f"  the worker folded them: {len(folded)} commands out after "
                   f"{time.monotonic() - started:.1f} s")

        before = await self.worker.summaries(uccs, self.as_of)
        click.echo(f"\nReferrers before the payout run (GET {self.worker.url}/referrers/{{ucc}}?as_of=…):")
        print_table(before)
        click.echo(f"  earned, reversed, net: everything in the log so far; paid so far: by every payout run "
                   f"until now;\n  payable: due by {_day(self.as_of)}, unpaid, and not paused by an open "
                   "review case.")

        payouts, repeated = await self.pay(RUN_ID)
        total = Counter[str]()
        for p in payouts:
            total[p.currency] += p.amount
        click.echo(f"\nPayout run {RUN_ID!r} as of {_day(self.as_of)} → {t.payouts}: {len(payouts)} payouts, "
                   + (", ".join(_money(a, c) for c, a in sorted(total.items())) or "nothing"))
        if repeated:
            click.echo("  (an earlier demo already made this run: a run id pays once, so nothing more was "
                       "paid now; `this run` shows what it paid then)")
        after = await self.worker.summaries(uccs, self.as_of)
        click.echo("Referrers after it:")
        print_table(after, {(p.ucc, p.currency): p.amount for p in payouts})
        click.echo("  ucc_X is the worked example of docs/rules.md: "
                   "5.00 + 25.00 + 10.00 − 12.50 = 27.50 USD.")

        shown = [c for c in await self.outputs() if _id(c) in self.wanted]
        click.echo("\nCommands the worker wrote for them (read_committed):")
        for topic, kinds in ((t.notifications, commands.NotificationCommand),
                             (t.reviews, commands.ReviewCase), (t.payouts, commands.PayoutCommand)):
            counts = Counter(_kind(c) for c in shown if isinstance(c, kinds))
            click.echo(f"  {topic:34} {sum(counts.values()):3}: "
                       + ", ".join(f"{kind} {n}" for kind, n in counts.most_common()))
        if show_all:
            for c in sorted(shown, key=_order):
                _print_command(c)
        else:
            click.echo(f"  (`{refstream_command()} demo --all` lists each one)")

        case = next(c for c in folded if isinstance(c, commands.ReviewCase))
        await self.review(case, wait_for_review)

    async def review(self, case: commands.ReviewCase, wait: bool) -> None:
        from projections.demo import LATE_REFERRED_AT

        details = case.details
        click.echo(f"\nReview case {case.case_id} ({case.kind}, {case.ucc}):")
        paid_on = _day(int(str(details["created"])))
        click.echo(f"  {details['customer_id']} paid {details['payment_id']} on {paid_on} "
                   f"but was attributed to {case.ucc} only on {_day(LATE_REFERRED_AT)}, later than the "
                   f"{self.engine.rules.late_attribution_days} days the rules allow.\n  The payment is held "
                   f"and {case.ucc}'s referral paused until a person decides.")
        decision = (await self.queue()).decisions.get(case.case_id)
        before: dict[str, dict[str, Any]] | None = None
        if decision is None:
            click.echo(f"  Decide it{' from another terminal' if wait else ''}:\n"
                       f"    {refstream_command()} review resolve {case.case_id} --approve --reason "
                       "\"referral confirmed by the customer\"\n"
                       "  (--reject instead voids the referral's unpaid rewards).")
            if not wait:
                click.echo(f"  `{refstream_command()} demo --wait-for-review` waits for the decision and "
                           "shows what it released.")
                return
            click.echo("  Waiting for the decision; this then shows what it released.")
            before = await self.worker.summaries([case.ucc], self.as_of)

            async def applied() -> bool | None:
                now = await self.worker.summaries([case.ucc], self.as_of)
                return True if now[case.ucc]["open_cases"] == 0 else None

            await _wait_for("the decision", applied, None)
            decision = (await self.queue()).decisions.get(case.case_id)
            if decision is None:
                return  # closed, but not by a decision on this control topic: nothing to show
            heading = (f"\nCase {case.case_id} {'approved' if decision.approve else 'rejected'} "
                       f"({decision.reason!r}), and the worker applied it:")
        else:
            heading = (f"  It was {'approved' if decision.approve else 'rejected'} on "
                       f"{_day(decision.decided_at)} ({decision.reason!r}).")
        self.expect(control.encode(decision))
        after = await self.worker.summaries([case.ucc], self.as_of)
        click.echo(heading)
        if before is None:
            print_table(after)
        else:
            print_table({f"{case.ucc} before": before[case.ucc], f"{case.ucc} after": after[case.ucc]})
            was, now = before[case.ucc]["currencies"], after[case.ucc]["currencies"]
            for cur in sorted(set(was) | set(now)):
                earned = _amount(now, cur, "earned") - _amount(was, cur, "earned")
                payable = _amount(now, cur, "payable") - _amount(was, cur, "payable")
                if decision.approve:
                    click.echo(f"  The approval released {_money(payable, cur)} to pay "
                               f"({_money(earned, cur)} of it newly earned).")
                else:
                    click.echo(f"  The rejection voided {_money(-earned, cur)} of unpaid rewards.")
        payouts, _ = await self.pay(REVIEW_RUN_ID)
        paid = [p for p in payouts if p.ucc == case.ucc]
        click.echo(f"Payout run {REVIEW_RUN_ID!r} as of {_day(self.as_of)} pays "
                   + ("; ".join(f"{_money(p.amount, p.currency)} to {p.ucc} ({len(p.entry_ids)} entries)"
                                for p in paid) or f"nothing to {case.ucc}") + ".")


@click.command(name="demo")
@click.option("--ingest-url", default="http://127.0.0.1:8080", show_default=True)
@click.option("--worker-url", default="http://127.0.0.1:6066", show_default=True,
              help="A worker's web API (any worker answers for every referrer).")
@click.option("--all", "show_all", is_flag=True, help="List every command the demo's webhooks produced.")
@click.option("--wait-for-review", is_flag=True,
              help="After the run, wait for the review case to be decided and show what that released.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True,
              help="Seconds to wait for the worker.")
@click.option("--topic-prefix", default="refstream", hidden=True)
def demo(ingest_url: str, worker_url: str, show_all: bool, wait_for_review: bool, timeout_s: float,
         topic_prefix: str) -> None:
    """Send signed sample webhooks to a running ingest and show what came out."""
    runner = Demo(ingest_url.rstrip("/"), worker_url.rstrip("/"), timeout_s, topic_prefix)
    asyncio.run(runner.run(show_all, wait_for_review))
