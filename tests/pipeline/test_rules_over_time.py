"""Rules that change over time, through the real ingest and worker (docs/rules.md#revisions).

A revision and a partner assignment are published while webhooks flow; each payment is
priced by the revision and campaign in force at its paid time; the worker's tables equal
`refstream replay` from Kafka (by default under the log's revisions) and from an export.
The operator commands' refusals are checked against the same log.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from schemas.commands import NotificationCommand, decode
from tests.pipeline.stack import RULES, Stack
from tests.unit.builders import customer, invoice_paid

pytestmark = pytest.mark.kafka

HOUR = 3600


def revision_4(tmp: Path) -> Path:
    """20 % instead of 25 %, and a partner campaign at 40 %."""
    text = RULES.read_text().replace("revision = 3", "revision = 4").replace(
        "reward_percent = 25", "reward_percent = 20")
    path = tmp / "rules-v4.toml"
    path.write_text(text + "\n[campaigns.partners]\nreward_percent = 40\n")
    return path


async def placed(stack: Stack, offset: int) -> None:
    """Until the worker has written the markers of the control record at `offset`."""
    from schemas import control

    async def done() -> bool:
        for raw in await stack.control_records():
            record = control.decode(raw)
            if isinstance(record, control.ControlPlaced) and record.control_offset == offset:
                return True
        return False

    await stack.until(f"control record {offset} to be placed", done, 60)


def earned(outputs: list[bytes]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for raw in outputs:
        rec = decode(raw)
        if isinstance(rec, NotificationCommand) and rec.kind == "reward_earned":
            out.setdefault(rec.ucc, []).append(rec.amount)
    return {k: sorted(v) for k, v in out.items()}


async def test_a_revision_and_a_partner_assignment_published_while_webhooks_flow(
    stack: Stack, tmp_path: Path,
) -> None:
    await stack.start_ingest()
    worker = await stack.start_worker()  # publishes examples/rules.toml (revision 3) as the first
    now = int(time.time())
    t0, switch = now + HOUR, now + 2 * HOUR
    await stack.post([customer("cus_X", t0, ucc="ucc_X", user="ux"),
                      customer("cus_P", t0, ucc="ucc_P", user="up"),
                      invoice_paid("in_X1", "cus_X", t0, amount_paid=4000),
                      invoice_paid("in_P1", "cus_P", t0, amount_paid=4000)])
    v4 = revision_4(tmp_path)
    publishing = asyncio.create_task(asyncio.to_thread(
        stack.cli, "rules", "publish", str(v4), "--effective-from", str(switch), "--reason", "launch is over",
        "--actor", "ops@example.com"))
    await stack.post([invoice_paid("in_X2", "cus_X", t0 + 60, amount_paid=4000)])  # still before switch
    await publishing
    # the partner campaign exists in the latest revision: the assignment is accepted; it takes
    # effect where the worker places it in the log, so wait for that before paying again
    said = stack.cli("referrers", "assign", "ucc_P", "--campaign", "partners", "--reason", "signed").stdout
    await placed(stack, int(said.split("(offset ")[1].split()[0]))
    await stack.post([invoice_paid("in_X3", "cus_X", switch + 60, amount_paid=4000),
                      invoice_paid("in_P2", "cus_P", switch + 60, amount_paid=4000)])
    await stack.wait_drained()

    got = earned(await stack.outputs())
    # X: 1,000 purchase bonus + 25 % of 4,000, then 25 % (before the switch), then 20 %
    # P: 1,000 + 25 %, then the partners' 40 % (assigned now, in force for P2's time)
    assert got == {"ucc_X": sorted([2000, 1000, 800]), "ucc_P": sorted([2000, 1600])}

    history = stack.cli("rules", "history").stdout
    assert "ops@example.com: launch is over" in history and "refstream-worker" in history
    shown = stack.cli("rules", "show", "--at", str(switch + 1)).stdout
    assert shown.startswith("# revision 4") and "reward_percent = 20" in shown

    # replay, by default under the log's revisions, equals the worker's tables; so does an export
    as_of = switch + 400 * 86400
    from_kafka = stack.cli("replay", "--format", "json", "--as-of", str(as_of), "--no-progress").stdout
    export = tmp_path / "log.jsonl.gz"
    stack.cli("export", "--out", str(export), "--no-progress")
    from_file = stack.cli("replay", "--format", "json", "--as-of", str(as_of), "--source", str(export),
                          "--no-progress").stdout
    assert from_file == from_kafka
    report = orjson.loads(from_kafka)
    assert "3 (from the start), 4 (from" in report["rules_used"]
    for row in report["rows"]:
        status, live = await stack.get_json(worker, f"/referrers/{row['ucc']}?as_of={as_of}")
        assert status == 200, live
        money = live["currencies"][row["currency"]]
        assert {k: row[k] for k in ("earned", "reversed", "net", "paid", "payable")} == {
            k: money[k]["amount"] if isinstance(money[k], dict) else money[k]
            for k in ("earned", "reversed", "net", "paid", "payable")}, row["ucc"]

    # refusals, each naming the fix
    again = stack.cli("rules", "publish", str(v4), "--effective-from", str(switch + 86400), "--reason", "x",
                      check=False)
    assert again.returncode == 1 and "revision 4 is already published" in again.stderr
    assert "revision = 5" in again.stderr
    v5 = tmp_path / "rules-v5.toml"
    v5.write_text(v4.read_text().replace("revision = 4", "revision = 5"))
    past = stack.cli("rules", "publish", str(v5), "--effective-from", str(now - 86400), "--reason", "x",
                     check=False)
    assert past.returncode == 1 and "never re-prices" in past.stderr and "--compare log" in past.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(v5.read_text().replace("reward_percent = 20", "reward_percent = 250"))
    invalid = stack.cli("rules", "publish", str(bad), "--effective-from", str(switch + 86400),
                        "--reason", "x", check=False)
    assert invalid.returncode == 1 and "reward_percent" in invalid.stderr and "bad.toml:" in invalid.stderr
    unknown = stack.cli("referrers", "assign", "ucc_X", "--campaign", "vip", "--reason", "x", check=False)
    assert unknown.returncode == 1 and "no campaign 'vip'" in unknown.stderr and "partners" in unknown.stderr
