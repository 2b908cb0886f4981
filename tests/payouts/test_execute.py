"""`refstream payouts execute` (docs/cli.md#payouts-execute): Stripe Connect transfers against
stripe-mock, Stripe's own API mock, which refuses any request that does not match Stripe's
API; a referrer with no account or an unsupported currency left unpaid and reported; a
payout marked paid by hand never executed; and, with a fake Stripe that remembers
idempotency keys (stripe-mock does not), a kill -9 mid-run that transfers nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter

import pytest

from refstream import stripemock
from schemas import control
from tests.payouts.conftest import TEST_KEY, FakeStripe, Log, lines, payout
from tests.pipeline.stack import until

pytestmark = pytest.mark.kafka

ACCOUNT_A, ACCOUNT_B, ACCOUNT_D = "acct_1NvAaAaAaAaAaAaA", "acct_1NvBbBbBbBbBbBbB", "acct_1NvDdDdDdDdDdDdD"


async def test_execute_transfers_what_it_can_and_reports_the_rest(log: Log,
                                                                  stripe_mock: stripemock.StripeMock) -> None:
    a, b = payout("ucc_A", "run-1", 2750), payout("ucc_B", "run-1", 1000)
    c, d = payout("ucc_C", "run-1", 500), payout("ucc_D", "run-1", 700, "eur")
    await log.write(a, b, c, d, control.PayoutRun("run-1", 1771113600, 1771113700, "ana", "monthly"))
    for ucc, account in (("ucc_A", ACCOUNT_A), ("ucc_B", ACCOUNT_B), ("ucc_D", ACCOUNT_D)):
        done = log.cli("referrers", "set-account", ucc, account, "--reason", "onboarded to Connect")
        assert done.returncode == 0, done.stderr
    # ucc_B was paid by hand before anyone ran execute
    done = log.cli("payouts", "mark-paid", b.payout_id, "--reference", "wire 2026-02-16", "--actor", "ana")
    assert done.returncode == 0 and "as paid" in done.stdout, done.stderr

    env = log.env(REFSTREAM_STRIPE_API_KEY=TEST_KEY, REFSTREAM_STRIPE_API_BASE=stripe_mock.url)
    first = log.cli("payouts", "execute", "--actor", "payroll-bot", env=env)
    assert first.returncode == 1, first.stderr  # some were left unpaid
    assert f"paid {a.payout_id} ucc_A $27.50: transfer tr_" in first.stdout
    assert b.payout_id not in first.stdout + first.stderr  # paid by hand: not even considered
    assert f"left unpaid {c.payout_id} ucc_C $5.00: ucc_C has no Stripe connected account" in first.stderr
    assert f"left unpaid {d.payout_id} ucc_D €7.00: eur is not among the currencies transferred (usd)" \
        in first.stderr
    assert "refstream referrers set-account UCC acct_" in first.stderr and "REFSTREAM_TRANSFER_CURRENCIES" \
        in first.stderr
    assert "2 payouts were left unpaid" in first.stderr

    outcomes = {o.payout_id: o for o in await log.outcomes()}
    assert set(outcomes) == {a.payout_id, b.payout_id}
    paid_a = outcomes[a.payout_id]
    assert (paid_a.status, paid_a.ucc, paid_a.actor) == (control.PAID, "ucc_A", "payroll-bot")
    assert paid_a.reference.startswith("tr_")  # the transfer stripe-mock made, as Stripe answers
    assert (outcomes[b.payout_id].reference, outcomes[b.payout_id].actor) == ("wire 2026-02-16", "ana")

    # again: nothing is transferred twice, the two still wait for their fix
    again = log.cli("payouts", "execute", env=env)
    assert again.returncode == 1 and "paid 0 payouts" in again.stdout
    assert len(await log.outcomes()) == 2
    listed = {p["payout_id"]: p for p in lines(log.cli("payouts", "list", "--run", "run-1", "--json").stdout)}
    assert {k: v["status"] for k, v in listed.items()} == {
        a.payout_id: "paid", b.payout_id: "paid", c.payout_id: "pending", d.payout_id: "pending"}
    assert listed[a.payout_id]["money"] == {"amount": 2750, "currency": "usd"}
    assert listed[a.payout_id]["reference"] == paid_a.reference


async def test_execute_killed_mid_run_and_run_again_transfers_each_payout_once(
        log: Log, fake_stripe: FakeStripe) -> None:
    payouts = [payout(f"ucc_{i}", "run-1", 1000 + i) for i in range(5)]
    await log.write(*payouts, control.PayoutRun("run-1", 1771113600, 1771113700),
                    *(control.ReferrerAccount(p.ucc, f"acct_1Nv{i:013d}", 1, "ana", "onboarded")
                      for i, p in enumerate(payouts)))
    env = log.env(REFSTREAM_STRIPE_API_KEY=TEST_KEY, REFSTREAM_STRIPE_API_BASE=fake_stripe.url)
    # the third transfer is made, and execute killed before it hears of it
    fake_stripe.hold_at = 3
    proc = log.popen("payouts", "execute", env=env)
    try:
        await until("the third transfer", lambda: _requests(fake_stripe, 3, proc), 60, every_s=0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(await log.outcomes()) == 2  # the first two were recorded; the third only transferred
    held = fake_stripe.requests[2]
    fake_stripe.gate.set()

    done = await log.acli("payouts", "execute", env=env)
    assert done.returncode == 0, done.stderr
    assert "paid 3 payouts" in done.stdout
    # every payout transferred once: the third's key came twice and got its first transfer back
    assert len(fake_stripe.transfers) == len(payouts)
    assert Counter(fake_stripe.requests) == Counter({p.payout_id: 1 for p in payouts} | {held: 2})
    outcomes = await log.outcomes()
    assert sorted(o.payout_id for o in outcomes) == sorted(p.payout_id for p in payouts)
    for o in outcomes:
        made = fake_stripe.transfers[o.payout_id]
        assert o.reference == made["id"] and made["metadata"]["payout_id"] == o.payout_id
    amounts = {p.payout_id: p.amount for p in payouts}
    assert all(t["amount"] == amounts[k] and t["currency"] == "usd" for k, t in fake_stripe.transfers.items())


async def _requests(fake: FakeStripe, n: int, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "execute ended before the held transfer"
    return len(fake.requests) >= n
