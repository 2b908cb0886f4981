"""A self-referral through the real ingest and worker (docs/rules.md#self-referral): the
referrer's own customer is linked with `refstream referrers link`, a referral of that
referrer signs up under the same mailbox and pays with the same card, and exactly one
`suspected_fraud` case opens, pausing that referral alone. `refstream replay` with the
worker's identity key withholds what the worker withholds; without the key it cannot see
the self-referral."""

from __future__ import annotations

import orjson
import pytest

from schemas.commands import SELF_REFERRAL, SUSPECTED_FRAUD, CaseState, ReviewCase
from tests.pipeline.stack import Stack, of_kind
from tests.unit.builders import charge, customer, ts

pytestmark = pytest.mark.kafka

T = ts("2026-01-10")
DAY = 86_400
AS_OF = T + 40 * DAY  # the signup bonuses (500 each, 30 days' hold) are payable by then
KEY = "pipeline-identity-key-0123456789"


async def test_a_self_referral_opens_one_case_and_replay_withholds_what_the_worker_withholds(
    stack: Stack,
) -> None:
    stack.identity_key = KEY
    await stack.start_ingest()
    worker = await stack.start_worker()
    await stack.post([
        customer("cus_OWN", T - 90 * DAY, email="ana.silva@gmail.com"),
        charge("ch_OWN", "cus_OWN", T - 80 * DAY, amount=1500, card="fp_ana_visa"),
    ])
    linked = stack.cli("referrers", "link", "ucc_X", "--customer", "cus_OWN", "--reason", "Ana's own account",
                       "--actor", "ops@example.com").stdout
    assert "linked cus_OWN to referrer ucc_X" in linked
    await stack.post([
        # Ana refers herself: another customer, her mailbox (another spelling) and her card
        customer("cus_B", T, ucc="ucc_X", user="u_b", email="Ana.Silva+new@GMail.com"),
        charge("ch_B", "cus_B", T + 600, amount=1500, card="fp_ana_visa"),
        # an honest referral of the same referrer
        customer("cus_C", T + 3600, ucc="ucc_X", user="u_c", email="carla@example.com"),
        charge("ch_C", "cus_C", T + 4200, amount=1500, card="fp_carla_visa"),
    ])
    got = await stack.assert_outputs_match_engine()  # what the pure core makes of the log

    [case] = of_kind(got, ReviewCase)
    assert (case.kind, case.ucc, case.referral_id) == (SUSPECTED_FRAUD, "ucc_X", "user:u_b")
    assert case.opened_at == T  # the referral's signup, the fact under suspicion
    assert case.details == {"signal": SELF_REFERRAL, "customer_id": "cus_B"}
    [opened] = of_kind(got, CaseState)
    assert (opened.case_id, opened.status) == (case.case_id, "open")
    listed = stack.cli("review", "list").stdout
    assert case.case_id in listed and "suspected_fraud" in listed and "1 open" in listed
    for raw in got:  # the outputs name neither the mailbox nor the card
        assert b"ana.silva" not in raw.lower() and b"fp_ana_visa" not in raw

    # the worker pays C's bonus and withholds B's
    status, live = await stack.get_json(worker, f"/referrers/ucc_X?as_of={AS_OF}")
    assert status == 200 and live["open_cases"] == 1
    usd = live["currencies"]["usd"]
    payable = usd["payable"]["amount"] if isinstance(usd["payable"], dict) else usd["payable"]
    assert payable == 500

    def replayed(**env: str) -> int:
        import subprocess

        from tests.pipeline.stack import REFSTREAM

        result = subprocess.run(
            [REFSTREAM, "replay", "--format", "json", "--as-of", str(AS_OF), "--no-progress",
             "--topic-prefix", stack.prefix], env=stack.env(**env), cwd=stack.tmp, capture_output=True,
            text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        [row] = [r for r in orjson.loads(result.stdout)["rows"] if r["ucc"] == "ucc_X"]
        return int(row["payable"])

    assert replayed() == payable  # replay under the worker's key: the same case, the same withholding
    assert replayed(REFSTREAM_IDENTITY_KEY="") == 1000  # without it nothing is compared
