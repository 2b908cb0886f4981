"""The operator console in a real browser, against a real broker, ingest and worker.

One test, one browser, one stack (starting them is the expensive part): sign in (a wrong
token refused), the overview's totals equal replay's and the workers', a referrer's
ledger explains every cent, a case approved and its withheld amount released, a second
case rejected, a payout previewed, run and found in the history, a form without its CSRF
token refused, and the control topic holds exactly those actions with their actor. Every
page is checked for labels and for being usable with the keyboard alone, and
photographed: into the test's temporary folder, or into REFSTREAM_CONSOLE_SHOTS
(`REFSTREAM_CONSOLE_SHOTS=docs/console` refreshes the README's pictures).
"""

from __future__ import annotations

import collections
import csv
import io
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from projections.demo import (
    Programme,
    customer,
    invoice_paid,
    late_attribution_example,
    programme,
    ts,
    worked_example,
)
from schemas import control
from schemas.commands import PayoutCommand
from tests.console.browser import assert_keyboard_ready, figures, launch, require_chromium, tab_to
from tests.console.helpers import TOKEN
from tests.pipeline.stack import REFSTREAM, Proc, Stack, free_port, of_kind

pytestmark = pytest.mark.kafka

JAN10 = ts("2026-01-10")
ACTOR = "Ada Lovelace"
AS_OF_RUN = "2026-03-01T00:00:00Z"
AS_OF_TOTALS = "2026-06-01T00:00:00Z"


def events() -> list[bytes]:
    return [
        *worked_example(),  # ucc_X: the worked example of docs/rules.md
        *late_attribution_example(),  # ucc_R: a late_attribution case, to approve
        *programme(Programme(referrers=4, customers=10, seed=3)),
        # ucc_E: an invoice in euros, which the rules do not price: an unsupported_currency case, to reject
        customer("evt_e_cus", "cus_E", JAN10, ucc="ucc_E", user="u_e"),
        invoice_paid("evt_e_inv", "in_E1", "cus_E", JAN10 + 3600, amount_paid=10000, total=10000,
                     total_excluding_tax=10000, charge="ch_E1", currency="eur"),
    ]


async def start_console(stack: Stack, name: str, **env: str) -> Proc:
    """`refstream console` as an operator runs it, stopped with the stack."""
    port = free_port()
    log = stack.tmp / f"{name}.log"
    args = [REFSTREAM, "console", "--port", str(port), "--topic-prefix", stack.prefix]
    for proc in stack.procs:
        if proc.name.startswith("worker"):
            args += ["--worker-url", proc.url]
        elif proc.name == "ingest":
            args += ["--ingest-url", proc.url]
    with log.open("ab") as out:
        popen = subprocess.Popen(args, env=stack.env(REFSTREAM_CONSOLE_TOKEN=TOKEN, **env), cwd=stack.tmp,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc = Proc(name, popen, log, port)
    stack.procs.append(proc)

    async def up() -> bool:
        if not proc.alive():
            raise AssertionError(f"{name} exited with {popen.returncode}:\n{proc.tail()}")
        try:
            async with aiohttp.ClientSession() as http, http.get(proc.url + "/healthz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await stack.until(f"{name} /healthz", up, 30)
    return proc


def minor(amount: Any) -> int:
    """An amount of the worker's JSON: minor units, or {"amount": minor units, "currency": …}."""
    return int(amount["amount"] if isinstance(amount, dict) else amount)


class Shots:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    async def take(self, page: Any, name: str) -> None:
        await page.evaluate("() => document.activeElement && document.activeElement.blur()")  # no focus ring
        await page.screenshot(path=str(self.folder / f"{name}.png"), full_page=True)


async def visit(page: Any, url: str, shots: Shots | None = None, name: str = "") -> None:
    resp = await page.goto(url)
    assert resp is not None and resp.status == 200, f"{url}: {resp and resp.status}"
    await assert_keyboard_ready(page)
    if shots is not None:
        await shots.take(page, name)


async def replay_totals(stack: Stack, as_of: str) -> dict[tuple[str, str], int]:
    result = stack.cli("replay", "--format", "json", "--as-of", as_of, "--no-progress")
    doc = orjson.loads(result.stdout)
    return {(t["currency"], k): t[k] for t in doc["totals"] for k in ("earned", "reversed", "net", "paid",
                                                                      "payable")}


async def test_an_operator_runs_the_programme_from_the_console(stack: Stack, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    require_chromium()
    shots = Shots(Path(os.environ.get("REFSTREAM_CONSOLE_SHOTS") or tmp_path / "shots"))
    await stack.start_ingest()
    worker = await stack.start_worker()
    await stack.post(events())
    await stack.assert_outputs_match_engine()  # the worker has folded them: the review queue is there
    console = await start_console(stack, "console")
    url = console.url

    async with async_playwright() as pw:
        context = await launch(pw, tmp_path / "chromium-profile")
        page = context.pages[0] if context.pages else await context.new_page()

        # --- sign in: a wrong token is refused, then the right one, with the keyboard only ---
        await page.goto(url + "/")
        assert page.url.startswith(url + "/signin")
        await assert_keyboard_ready(page)
        await shots.take(page, "signin")
        await tab_to(page, "#name")
        await page.keyboard.type("Mallory")
        await page.keyboard.press("Tab")
        await page.keyboard.type(TOKEN + "-guess")
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#signin-error")
        assert "not the console's token" in await page.inner_text("#signin-error")
        assert (await page.goto(url + "/review")) is not None and page.url.startswith(url + "/signin")
        await page.fill("#name", "")
        await tab_to(page, "#name")
        await page.keyboard.type(ACTOR)
        await page.keyboard.press("Tab")
        await page.keyboard.type(TOKEN)
        await page.keyboard.press("Enter")
        await page.wait_for_url(url + "/review")
        assert ACTOR in await page.inner_text("header")

        # --- the review queue, the referrers, one referrer's ledger ---
        await visit(page, url + "/review", shots, "review")
        assert await page.eval_on_selector_all("#open-cases tr[data-case]", "rs => rs.length") == 2
        await visit(page, url + "/referrers", shots, "referrers")
        await tab_to(page, "#q")
        await page.keyboard.type("ucc_x")
        await page.keyboard.press("Enter")
        await page.wait_for_url("**/referrers?q=ucc_x*")
        found = await page.inner_text("#found")
        assert found == "1 row (7 referrers in the log; one row per referrer and currency)."
        await tab_to(page, 'a[href="/referrers/ucc_X"]')
        await page.keyboard.press("Enter")
        await page.wait_for_url(url + "/referrers/ucc_X")
        await assert_keyboard_ready(page)
        await shots.take(page, "referrer")
        lines = await page.eval_on_selector_all(
            "#ledger tbody tr.money",
            "rs => rs.map(r => [r.dataset.kind, r.dataset.currency, Number(r.dataset.minor), "
            "r.cells[2].innerText, r.cells[3].innerText, r.cells[5].innerText])")
        # every cent of the worked example, each with the Stripe event that made it and its terms
        assert [(k, c, a, src) for k, c, a, src, _, _ in lines] == [
            ("signup", "usd", 500, "evt_demo_cus_A"), ("purchase_bonus", "usd", 1000, "evt_demo_inv_A1"),
            ("reward", "usd", 2500, "evt_demo_inv_A1"), ("reversal", "usd", -1250, "evt_demo_ref_A1"),
        ]
        assert [about for *_, about, _ in lines] == ["cus_A", "in_A1", "in_A1", "in_A1"]
        assert "signup bonus $5.00" in lines[0][5]
        reward_terms = lines[2][5]
        assert "25 % of the invoice base" in reward_terms and "cap $100.00" in reward_terms
        assert "hold 30 days: payable from 2026-02-09" in reward_terms
        ledger_sum = await figures(page, "#ledger tfoot")
        owed = await figures(page, "#summary")
        assert sum(a for _, _, a, *_ in lines) == 2750
        assert ledger_sum[("usd", "ledger-sum")] == owed[("usd", "owed")] == 2750
        _, live = await stack.get_json(worker, "/referrers/ucc_X")
        assert minor(live["currencies"]["usd"]["net"]) - minor(live["currencies"]["usd"]["paid"]) == 2750
        summary_text = await page.inner_text("#summary")
        assert "$27.50" in summary_text and "2750" not in summary_text  # dollars, never cents

        # --- approve ucc_R's case with the keyboard: what it withheld is released ---
        await visit(page, url + "/review")
        await page.click('#open-cases tr:has(a[href="/referrers/ucc_R"]) th a')
        await assert_keyboard_ready(page)
        await shots.take(page, "case")
        withheld = await page.eval_on_selector_all(
            "#withholds li[data-minor]", "ls => ls.map(l => [l.dataset.currency, Number(l.dataset.minor)])")
        assert withheld == [["usd", 500]]  # the signup bonus; the held payment has no reward yet
        await tab_to(page, "#reason")
        await page.keyboard.type("the customer confirmed ucc_R referred them")
        await tab_to(page, "button[value=approve]")
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#decision")
        effect = await page.eval_on_selector_all(
            ".effect li[data-effect]", "ls => ls.map(l => [l.dataset.effect, l.dataset.currency, "
            "Number(l.dataset.minor)])")
        # released: the withheld bonus; computed by the normal rule: 25 % of 100.00 and the purchase bonus
        assert effect == [["released", "usd", 500], ["computed", "usd", 3500]]
        assert f"Approved by {ACTOR}" in await page.inner_text("#decision")
        await assert_keyboard_ready(page)
        await shots.take(page, "case-decided")

        # --- reject ucc_E's case: its withheld signup bonus is voided ---
        await visit(page, url + "/review")
        await page.click('#open-cases tr:has(a[href="/referrers/ucc_E"]) th a')
        await page.fill("#reason", "no euro deal with this partner")
        await page.click("button[value=reject]")
        await page.wait_for_selector("#decision")
        effect = await page.eval_on_selector_all(
            ".effect li[data-effect]", "ls => ls.map(l => [l.dataset.effect, l.dataset.currency, "
            "Number(l.dataset.minor)])")
        assert effect == [["voided", "usd", 500]]
        await visit(page, url + "/review")
        assert await page.eval_on_selector_all("#open-cases tr[data-case]", "rs => rs.length") == 0
        assert "No open review cases" in await page.inner_text("main")

        # --- preview a payout run, run it after confirming, find it in the history ---
        await visit(page, url + "/payouts")
        await page.fill("#as_of", AS_OF_RUN)
        await page.get_by_role("button", name="Preview").click()
        await page.wait_for_selector("#confirm")
        await assert_keyboard_ready(page)
        await shots.take(page, "payout-preview")
        preview = await page.eval_on_selector_all(
            "#preview tbody tr", "rs => rs.map(r => [r.cells[0].innerText, r.cells[1].innerText, "
            "Number(r.cells[3].dataset.minor)])")
        assert ["ucc_X", "USD", 2750] in preview and len(preview) >= 3
        # a form sent without its CSRF token is refused and appends nothing
        await page.evaluate("() => document.querySelector('form[action=\"/payouts/run\"] input[name=csrf]')"
                            ".remove()")
        await page.fill("#reason", "forged")
        await page.check("#confirm")
        await page.get_by_role("button", name="Append payout run").click()
        await page.wait_for_selector("h1:has-text('Form refused')")
        assert "nothing was changed" in await page.inner_text("main")
        # now for real
        await page.go_back()
        await page.reload()
        await page.fill("#reason", "March payouts")
        await tab_to(page, "#confirm")
        await page.keyboard.press("Space")
        await tab_to(page, "form[action='/payouts/run'] button")
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#appended")
        await assert_keyboard_ready(page)
        await shots.take(page, "payout-run")
        run_id = f"run-{ts('2026-03-01')}"
        paid = await page.eval_on_selector_all(
            "#run-payouts tbody tr", "rs => rs.map(r => [r.cells[0].innerText, r.cells[2].innerText, "
            "Number(r.cells[4].dataset.minor)])")
        assert paid == preview
        await visit(page, url + "/payouts", shots, "payouts")
        assert await page.inner_text(f'#runs tr[data-run="{run_id}"] td:nth-child(4)') == ACTOR
        async with page.expect_download() as download_info:
            await page.click(f'#runs tr[data-run="{run_id}"] a[download]')
        download = await download_info.value
        rows = list(csv.DictReader(io.StringIO(Path(await download.path()).read_text())))
        assert [[r["ucc"], r["currency"].upper(), int(r["amount_minor"])] for r in rows] == preview
        assert {r["run_id"] for r in rows} == {run_id}

        # --- the control topic holds exactly those actions, each with its actor ---
        records = [control.decode(v) for v in await stack.control_records()]
        actions = [r for r in records if isinstance(r, (control.ReviewDecision, control.PayoutRun))]
        assert [(type(r).__name__, r.actor) for r in actions] == [
            ("ReviewDecision", ACTOR), ("ReviewDecision", ACTOR), ("PayoutRun", ACTOR)]
        approve, reject, run = actions
        assert isinstance(approve, control.ReviewDecision) and isinstance(reject, control.ReviewDecision)
        assert (approve.ucc, approve.approve, reject.ucc, reject.approve) == ("ucc_R", True, "ucc_E", False)
        assert isinstance(run, control.PayoutRun)
        assert (run.run_id, run.as_of, run.reason) == (run_id, ts("2026-03-01"), "March payouts")

        # the workers paid exactly what the preview showed
        outputs = await stack.assert_outputs_match_engine()
        workers_paid = sorted([p.ucc, p.currency.upper(), p.amount] for p in of_kind(outputs, PayoutCommand)
                              if p.run_id == run_id)
        assert workers_paid == sorted(preview)

        # --- the overview's totals are replay's, and the workers' ---
        await visit(page, url + "/?as_of=" + AS_OF_TOTALS, shots, "overview")
        shown = {k: v for k, v in (await figures(page, "#totals")).items() if k[1] != "withheld"}
        assert shown == await replay_totals(stack, AS_OF_TOTALS)
        # every referrer's live summary from the worker, added up
        await visit(page, url + "/referrers?sort=ucc")
        uccs = sorted(set(await page.eval_on_selector_all("#referrers tbody th a",
                                                          "as => as.map(a => a.innerText)")))
        live: collections.Counter[tuple[str, str]] = collections.Counter()
        for ucc in uccs:
            _, summary = await stack.get_json(worker, f"/referrers/{ucc}?as_of={ts('2026-06-01')}")
            for cur, s in summary["currencies"].items():
                for k in ("earned", "reversed", "net", "paid", "payable"):
                    live[(cur, k)] += minor(s[k])
        assert dict(live) == shown
        await visit(page, url + "/rules", shots, "rules")
        assert "revision 3" in await page.inner_text("#rules-summary")

        # --- a broker that is down: a page that says so and what to do, never a traceback ---
        down = await start_console(stack, "console-no-broker",
                                   REFSTREAM_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
        other = await context.new_page()
        await other.goto(down.url + "/signin")
        await other.fill("#name", ACTOR)
        await other.fill("#token", TOKEN)
        await other.press("#token", "Enter")
        await other.wait_for_selector("h1:has-text('Kafka cannot be reached')")
        text = await other.inner_text("main")
        assert "refused the connection" in text and "refstream kafka up" in text and "Traceback" not in text
        await shots.take(other, "broker-down")
        await context.close()
