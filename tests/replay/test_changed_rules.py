"""Replay under changed rules gives the hand-computed results of a small scenario (docs/rules.md#rewards).

The scenario is in scenario.py. Current rules: 25 % for 12 months, signup bonus 5.00,
purchase bonus 10.00, cap 100.00 per referral, hold 30 days. Proposed: 30 % for 6 months,
signup bonus 5.00, no purchase bonus, same cap and hold. All amounts in usd cents.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from refstream.cli import main
from tests.replay.scenario import CURRENT_RULES, PROPOSED_RULES, records, write_export


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"log": tmp_path / "scenario.jsonl", "current": tmp_path / "current.toml",
             "proposed": tmp_path / "proposed.toml"}
    write_export(paths["log"], records())
    paths["current"].write_text(CURRENT_RULES)
    paths["proposed"].write_text(PROPOSED_RULES)
    return paths


def replay(*args: str) -> str:
    result = CliRunner().invoke(main, ["replay", "--no-progress", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


# --- ucc_X (cus_A): invoice base = amount_paid 11900 − tax (11900 − 10000) = 10000 ---------
# current:  signup 500; in_A1: purchase bonus 1000, then round(10000 × 25 %) = 2500;
#           in_A2 (2 months in) 2500; in_A3 (7 months in, inside 12) 2500.
#           earned 500 + 1000 + 2500 + 2500 + 2500 = 9000 (under the 10000 cap).
#           refund of 5950 of 11900 on in_A1's charge: reversal round(2500 × 5950 / 11900) = 1250.
#           net 9000 − 1250 = 7750.
#           payout run as of 02-15 pays what was earned 01-10 (payable 30 days later, 02-09):
#           500 + 1000 + 2500 = 4000. Payable as of 09-30: the rest, 2500 + 2500 − 1250 = 3750.
# proposed: signup 500; in_A1: no purchase bonus, round(10000 × 30 %) = 3000; in_A2 3000;
#           in_A3 is paid 2026-08-10, after 2026-01-10 + 6 months = 2026-07-10: nothing.
#           earned 500 + 3000 + 3000 = 6500; reversal round(3000 × 5950 / 11900) = 1500;
#           net 6500 − 1500 = 5000. Run as of 02-15 pays 500 + 3000 = 3500;
#           payable as of 09-30: 3000 − 1500 = 1500.
# --- ucc_Y (cus_B): base 50000, cap 10000 ------------------------------------------------------
# current:  500 + 1000 + round(50000 × 25 %) = 12500 cut to 10000 − 1500 = 8500 → earned 10000.
# proposed: 500 + round(50000 × 30 %) = 15000 cut to 10000 − 500 = 9500 → earned 10000.
#           Earned 02-01, payable 03-03: after the run, so all 10000 is payable on 09-30.
# --- ucc_Z (cus_C): signup bonus only, 500 under both, payable from 03-31. --------------------
EXPECTED = {
    # ucc: (referrals, earned, reversed, net, paid, payable) proposed, then current
    "ucc_X": ((1, 6500, 1500, 5000, 3500, 1500), (1, 9000, 1250, 7750, 4000, 3750)),
    "ucc_Y": ((1, 10000, 0, 10000, 0, 10000), (1, 10000, 0, 10000, 0, 10000)),
    "ucc_Z": ((1, 500, 0, 500, 0, 500), (1, 500, 0, 500, 0, 500)),
}


def test_replay_with_changed_rules_gives_the_hand_computed_figures_and_deltas(files):
    out = replay("--rules", str(files["proposed"]), "--compare", str(files["current"]),
                 "--source", str(files["log"]), "--as-of", "2026-09-30T00:00:00Z", "--format", "json")
    doc = orjson.loads(out)
    assert doc["as_of"] == "2026-09-30T00:00:00Z"
    assert (doc["rules_revision"], doc["compare_revision"]) == (4, 3)
    assert doc["events"] == {"stripe": 8, "control": 1, "skipped": 0}
    got = {
        r["ucc"]: (
            (r["referrals"], r["earned"], r["reversed"], r["net"], r["paid"], r["payable"]),
            (r["compare_referrals"], r["compare_earned"], r["compare_reversed"], r["compare_net"],
             r["compare_paid"], r["compare_payable"]),
        )
        for r in doc["rows"]
    }
    assert got == EXPECTED
    # sorted by impact: ucc_X loses 7750 − 5000 = 2750 of net; Y and Z do not change
    assert [(r["ucc"], r["delta_earned"], r["delta_net"], r["delta_payable"]) for r in doc["rows"]] == [
        ("ucc_X", 6500 - 9000, 5000 - 7750, 1500 - 3750),
        ("ucc_Y", 0, 0, 0),
        ("ucc_Z", 0, 0, 0),
    ]
    # totals per currency: proposed 6500 + 10000 + 500 = 17000 earned, current 9000 + 10000 + 500 = 19500
    (total,) = doc["totals"]
    assert (total["currency"], total["referrals"], total["earned"], total["reversed"], total["net"],
            total["payable"]) == ("usd", 3, 17000, 1500, 15500, 1500 + 10000 + 500)
    assert (total["compare_earned"], total["compare_net"], total["compare_payable"]) == (
        19500, 18250, 3750 + 10000 + 500)
    assert total["delta_net"] == 15500 - 18250


def test_payable_as_of_counts_entries_past_their_hold_and_reversals_at_once(files):
    # Current rules, the whole log folded, payable as of 2026-04-10 00:00:
    # X: the run of 02-15 paid 4000; in_A2's 2500 (earned 03-10 12:00) is payable from
    #    04-09 12:00; the reversal of 04-01 counts at once: 2500 − 1250 = 1250; in_A3 not yet.
    # Y: 10000 earned 02-01, payable from 03-03: 10000. Z: 500 earned 03-01, payable 03-31.
    out = replay("--rules", str(files["current"]), "--source", str(files["log"]),
                 "--as-of", "2026-04-10T00:00:00+00:00", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["row"], r["ucc"], r["earned"], r["reversed"], r["net"], r["paid"], r["payable"])
            for r in rows] == [
        ("referrer", "ucc_X", "9000", "1250", "7750", "4000", "1250"),
        ("referrer", "ucc_Y", "10000", "0", "10000", "0", "10000"),
        ("referrer", "ucc_Z", "500", "0", "500", "0", "500"),
        ("total", "", "19500", "1250", "18250", "4000", "11750"),
    ]
    # as of 2026-02-20 nothing unpaid is past its hold yet
    out = replay("--rules", str(files["current"]), "--source", str(files["log"]),
                 "--as-of", "1771545600", "--format", "csv")
    assert [r["payable"] for r in csv.DictReader(io.StringIO(out))] == ["0", "0", "0", "0"]


def test_table_shows_major_units_with_totals(files):
    out = replay("--rules", str(files["proposed"]), "--compare", str(files["current"]),
                 "--source", str(files["log"]), "--as-of", "2026-09-30T00:00:00Z")
    lines = out.splitlines()
    x = next(line for line in lines if line.startswith("ucc_X")).split()
    assert x == ["ucc_X", "usd", "1", "65.00", "15.00", "50.00", "35.00", "15.00", "77.50", "-27.50"]
    total = next(line for line in lines if line.startswith("TOTAL")).split()
    assert total == ["TOTAL", "usd", "3", "170.00", "15.00", "155.00", "35.00", "120.00", "182.50", "-27.50"]



def test_a_proposed_revision_on_top_of_the_logs_gives_the_hand_computed_deltas(tmp_path: Path) -> None:
    """docs/replay.md#which-rules: the log's first revision is the current rules (revision 3,
    as a worker publishes it); the proposed rules (revision 4) from 2026-03-01 on only."""
    from schemas import control

    first = control.encode(control.RulesRevision(3, 0, CURRENT_RULES, 0, "refstream-worker", "the first"))
    log = tmp_path / "log.jsonl"
    write_export(log, records(), first_revision=first)
    proposed = tmp_path / "proposed.toml"
    proposed.write_text(PROPOSED_RULES)
    doc = orjson.loads(replay("--rules", str(proposed), "--effective-from", "2026-03-01T00:00:00Z",
                              "--compare", "log", "--source", str(log), "--as-of", "2026-09-30T00:00:00Z",
                              "--format", "json"))
    # ucc_X: signup 500 and in_A1 (January: revision 3) 1000 + 2500 as before; in_A2 (paid 03-10:
    # revision 4) 30 % = 3000; in_A3 (paid 08-10) is past revision 4's 6-month window: nothing.
    # Earned 7000, the refund of in_A1 reverses 1250 as before: net 5750, against 7750 under the
    # log's rules; the run of 02-15 paid 4000 either way, so payable is 3000 − 1250 = 1750.
    # ucc_Y (everything in February: revision 3) and ucc_Z (signup bonus 500 either way): no change.
    rows = {r["ucc"]: r for r in doc["rows"]}
    assert (rows["ucc_X"]["earned"], rows["ucc_X"]["net"], rows["ucc_X"]["payable"]) == (7000, 5750, 1750)
    assert [(r["ucc"], r["delta_earned"], r["delta_net"], r["delta_payable"]) for r in doc["rows"]] == [
        ("ucc_X", -2000, -2000, -2000), ("ucc_Y", 0, 0, 0), ("ucc_Z", 0, 0, 0)]
    assert doc["rules_used"] == (f"the log's revisions and {proposed} from 2026-03-01T00:00:00Z: "
                                 "3 (from the start), 4 (from 2026-03-01T00:00:00Z)")
    assert doc["compare_used"] == "the log's revisions: 3 (from the start)"


def test_a_log_without_revisions_needs_rules_to_replay(files):
    result = CliRunner().invoke(main, ["replay", "--no-progress", "--source", str(files["log"])])
    assert result.exit_code == 1
    assert "holds no rules revision" in result.output and "--rules FILE" in result.output
