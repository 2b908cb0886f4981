"""Each refusal of the last mile's commands names the problem and the fix (docs/cli.md#payouts,
#ledger-adjust, #audit, #referrers): one test per refusal. The first ones need no broker
(they refuse before reaching it); the others run against the session's broker with a few
records written to their own topics."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from refstream.cli import main
from refstream.commands.topics import create_topics
from schemas import control
from schemas.topics import Topics
from tests.payouts.conftest import Log, payout


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    for name in ("REFSTREAM_STRIPE_API_KEY", "REFSTREAM_STRIPE_API_BASE", "REFSTREAM_TRANSFER_CURRENCIES",
                 "REFSTREAM_RULES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REFSTREAM_ENV", "sandbox")
    monkeypatch.setenv("REFSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # refused before the broker is asked
    return monkeypatch


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


# --- before the broker ------------------------------------------------------------------------


def test_a_payout_run_in_the_future_needs_force(env: pytest.MonkeyPatch) -> None:
    result = run("payouts", "run", "--as-of", str(int(time.time()) + 86400))
    assert result.exit_code == 1 and "is in the future" in result.output and "--force" in result.output


def test_an_adjustment_in_major_units_is_refused_naming_the_minor_units(env: pytest.MonkeyPatch) -> None:
    result = run("ledger", "adjust", "ucc_X", "--amount", "12.50", "--currency", "usd", "--reason", "gift")
    assert result.exit_code == 2 and "12.50 usd is --amount 1250" in result.output


def test_an_adjustment_of_zero_is_refused(env: pytest.MonkeyPatch) -> None:
    result = run("ledger", "adjust", "ucc_X", "--amount", "0", "--currency", "usd", "--reason", "goodwill")
    assert result.exit_code == 2 and "0 changes nothing" in result.output


def test_an_adjustment_in_something_that_is_not_a_currency_code_is_refused(env: pytest.MonkeyPatch) -> None:
    result = run("ledger", "adjust", "ucc_X", "--amount", "500", "--currency", "dollars", "--reason", "gift")
    assert result.exit_code == 2 and "three-letter ISO code" in result.output


def test_an_adjustment_without_a_reason_is_refused(env: pytest.MonkeyPatch) -> None:
    result = run("ledger", "adjust", "ucc_X", "--amount", "500", "--currency", "usd", "--reason", " ")
    assert result.exit_code == 2 and "--reason is empty" in result.output


def test_an_adjustment_of_no_referrer_is_refused(env: pytest.MonkeyPatch) -> None:
    result = run("ledger", "adjust", " ", "--amount", "500", "--currency", "usd", "--reason", "goodwill")
    assert result.exit_code == 2 and "the referrer's code is empty" in result.output


def test_an_account_that_is_neither_stripe_nor_email_is_refused(env: pytest.MonkeyPatch) -> None:
    result = run("referrers", "set-account", "ucc_X", "DE89370400440532013000", "--reason", "iban")
    assert result.exit_code == 2 and "neither a Stripe connected account id" in result.output


def test_an_account_without_a_reason_is_refused(env: pytest.MonkeyPatch) -> None:
    result = run("referrers", "set-account", "ucc_X", "acct_1NvAaAaAaAaA", "--reason", "")
    assert result.exit_code == 2 and "--reason is empty" in result.output


def test_mark_paid_without_a_reference_is_refused(env: pytest.MonkeyPatch) -> None:
    result = run("payouts", "mark-paid", "p1", "--reference", " ")
    assert result.exit_code == 2 and "--reference is empty" in result.output


def test_execute_without_a_stripe_key_says_where_to_find_one(env: pytest.MonkeyPatch) -> None:
    result = run("payouts", "execute")
    assert result.exit_code == 1 and "REFSTREAM_STRIPE_API_KEY is not set" in result.output
    assert "Developers → API keys" in result.output


def test_execute_refuses_a_live_key_in_sandbox(env: pytest.MonkeyPatch) -> None:
    env.setenv("REFSTREAM_STRIPE_API_KEY", "sk_live_abc123")
    result = run("payouts", "execute")
    assert result.exit_code == 1 and "is not a test-mode secret key" in result.output


def test_execute_refuses_a_test_key_in_production(env: pytest.MonkeyPatch) -> None:
    env.setenv("REFSTREAM_ENV", "production")
    env.setenv("REFSTREAM_STRIPE_API_KEY", "sk_test_abc123")
    result = run("payouts", "execute")
    assert result.exit_code == 1 and "is not a live-mode secret key" in result.output


def test_execute_refuses_transfer_currencies_it_cannot_read(env: pytest.MonkeyPatch) -> None:
    env.setenv("REFSTREAM_STRIPE_API_KEY", "sk_test_abc123")
    env.setenv("REFSTREAM_TRANSFER_CURRENCIES", "usd,euros")
    result = run("payouts", "execute")
    assert result.exit_code == 1 and "is not a list of currency codes" in result.output


def test_export_into_a_folder_that_does_not_exist_is_refused(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = str(tmp_path / "no" / "x.csv")
    result = run("payouts", "export", "--run", "run-1", "--format", "csv", "--out", out)
    assert result.exit_code == 1 and "does not exist" in result.output


# --- against the broker -----------------------------------------------------------------------

A = payout("ucc_A", "run-1", 2750)
E = payout("ucc_A", "run-1", 900, "eur")


@pytest.fixture
def log(env: pytest.MonkeyPatch, bootstrap: str, tmp_path: Path) -> Iterator[Log]:
    """Run run-1: ucc_A's usd and eur payouts, ucc_A with a Stripe account only; and the
    commands' environment pointed at these topics."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env.setenv("REFSTREAM_KAFKA_BOOTSTRAP", bootstrap)
    made = Log(bootstrap, Topics("sandbox", prefix), tmp_path)

    async def setup() -> None:
        await create_topics(bootstrap, ["sandbox"], prefix=prefix, partitions=1)
        await made.write(A, E, control.PayoutRun("run-1", 1771113600, 1771113700, "ana", ""),
                         control.ReferrerAccount("ucc_A", "acct_1NvAaAaAaAaA", 1, "ana", "Connect"))

    asyncio.run(setup())
    yield made


def on(log: Log, *args: str) -> Result:
    return run(*args, "--topic-prefix", log.topics.prefix)


def test_a_payout_run_no_one_confirms_is_not_appended(log: Log) -> None:
    result = on(log, "payouts", "run", "--as-of", "1771113600", "--run-id", "run-2")
    assert result.exit_code == 1 and "confirm with --yes" in result.output
    assert "pays no one" in result.output  # the preview came first
    assert not _has_run(log, "run-2")


def test_a_dry_run_appends_nothing(log: Log) -> None:
    result = on(log, "payouts", "run", "--as-of", "1771113600", "--run-id", "run-2", "--dry-run")
    assert result.exit_code == 0 and "dry run: nothing appended" in result.output
    assert not _has_run(log, "run-2")


def _has_run(log: Log, run_id: str) -> bool:
    return any(isinstance(r, control.PayoutRun) and r.run_id == run_id for r in asyncio.run(log.control()))


def test_a_run_id_already_in_the_log_is_not_appended_again(log: Log) -> None:
    result = on(log, "payouts", "run", "--as-of", "1771113600", "--run-id", "run-1", "--yes")
    assert result.exit_code == 0 and "is in the log already" in result.output and "by ana" in result.output
    assert sum(isinstance(r, control.PayoutRun) for r in asyncio.run(log.control())) == 1


def test_listing_an_unknown_run_is_refused(log: Log) -> None:
    result = on(log, "payouts", "list", "--run", "run-9")
    assert result.exit_code == 1 and "there is no payout run 'run-9'" in result.output


def test_executing_an_unknown_run_is_refused(log: Log) -> None:
    log_env = {"REFSTREAM_STRIPE_API_KEY": "sk_test_abc123"}
    result = CliRunner(env=log_env).invoke(main, ["payouts", "execute", "--run", "run-9", "--topic-prefix",
                                                  log.topics.prefix])
    assert result.exit_code == 1 and "there is no payout run 'run-9'" in result.output


def test_exporting_an_unknown_run_is_refused(log: Log) -> None:
    result = on(log, "payouts", "export", "--run", "run-9", "--format", "csv")
    assert result.exit_code == 1 and "there is no payout run 'run-9'" in result.output


def test_a_paypal_file_of_a_run_in_two_currencies_needs_one_chosen(log: Log) -> None:
    result = on(log, "payouts", "export", "--run", "run-1", "--format", "paypal")
    assert result.exit_code == 1 and "holds one currency" in result.output
    assert "--currency eur" in result.output


def test_exporting_a_currency_the_run_does_not_pay_is_refused(log: Log) -> None:
    result = on(log, "payouts", "export", "--run", "run-1", "--format", "csv", "--currency", "gbp")
    assert result.exit_code == 1 and "pays no gbp" in result.output


def test_a_paypal_file_leaves_out_a_referrer_without_an_email_and_says_how_to_add_one(log: Log) -> None:
    result = on(log, "payouts", "export", "--run", "run-1", "--format", "paypal", "--currency", "usd")
    assert result.exit_code == 1
    assert f"left out {A.payout_id} ucc_A $27.50: ucc_A has no e-mail" in result.output
    assert "refstream referrers set-account UCC someone@example.com" in result.output


def test_marking_an_unknown_payout_is_refused(log: Log) -> None:
    result = on(log, "payouts", "mark-paid", "p-unknown", "--reference", "wire 1")
    assert result.exit_code == 1 and "there is no payout 'p-unknown'" in result.output


def test_marking_a_paid_payout_paid_again_is_refused(log: Log) -> None:
    assert on(log, "payouts", "mark-paid", A.payout_id, "--reference", "wire 1").exit_code == 0
    result = on(log, "payouts", "mark-paid", A.payout_id, "--reference", "wire 2")
    assert result.exit_code == 1 and "it is paid already (reference wire 1)" in result.output


def test_a_failed_payout_cannot_fail_again_or_be_paid(log: Log) -> None:
    assert on(log, "payouts", "mark-failed", E.payout_id, "--reason", "account closed").exit_code == 0
    for args in (("mark-failed", E.payout_id, "--reason", "again"),
                 ("mark-paid", E.payout_id, "--reference", "x")):
        result = on(log, "payouts", *args)
        assert result.exit_code == 1 and "it failed already: its amount is owed again" in result.output


def test_the_audit_of_an_unknown_referrer_is_refused(log: Log) -> None:
    result = on(log, "audit", "ucc_nobody")
    assert result.exit_code == 1 and "there is no referrer 'ucc_nobody'" in result.output
