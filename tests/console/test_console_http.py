"""The console over HTTP, without a browser: sign-in, sessions, CSRF, 10,000 referrers,
a broker that is down, a log with nothing in it (docs/console.md)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from projections.demo import customer, invoice_paid, ts
from refstream.console import model, security
from refstream.console.app import make_app
from refstream.console.sources import Config
from schemas.topics import Topics
from tests.console.helpers import TOKEN, FixedProjector, csrf_of, fold_of, sign_in
from tests.pipeline.stack import free_port

JAN5 = ts("2026-01-05")


def ten_thousand() -> list[bytes]:
    """10,000 referrers, one referral each; every tenth referral paid an invoice."""
    out = []
    for i in range(10_000):
        out.append(customer(f"evt_c{i}", f"cus_{i}", JAN5 + i, ucc=f"ucc_{i:05d}", user=f"u{i}"))
        if i % 10 == 0:
            amount = 1000 * (1 + i % 97)
            out.append(invoice_paid(f"evt_i{i}", f"in_{i}", f"cus_{i}", JAN5 + i + 60, amount_paid=amount,
                                    total=amount, total_excluding_tax=amount, charge=f"ch_{i}"))
    return out


@pytest.fixture(scope="module")
def big() -> model.Fold:
    return fold_of(ten_thousand())


@pytest.fixture
async def client(big: model.Fold) -> AsyncIterator[TestClient]:
    cfg = Config("127.0.0.1:1", Topics("sandbox", "tconsole"))
    async with TestClient(TestServer(make_app(cfg, TOKEN, projector=FixedProjector(big)))) as c:
        yield c


def ucc_column(html: str) -> list[str]:
    return re.findall(r'<th scope="row"><a href="/referrers/(ucc_\d+)">', html)


# --- the token and sessions -----------------------------------------------------------------


def test_the_console_needs_a_token_of_16_characters_or_more() -> None:
    with pytest.raises(security.TokenError, match="REFSTREAM_CONSOLE_TOKEN is not set"):
        security.check_token(None)
    with pytest.raises(security.TokenError, match="at least 16"):
        security.check_token("short")
    assert security.check_token(f"  {TOKEN} ") == TOKEN
    assert security.token_matches(TOKEN, TOKEN)
    assert not security.token_matches(TOKEN[:-1], TOKEN) and not security.token_matches("", TOKEN)


def test_a_session_ends_when_idle_or_old_and_signing_in_gives_a_new_id() -> None:
    sessions = security.Sessions()
    anon = sessions.anonymous(0.0)
    signed = sessions.sign_in(anon, "Grace", 10.0)
    assert signed.sid != anon.sid and signed.csrf != anon.csrf
    assert sessions.get(anon.sid, 11.0) is None  # the id seen before sign-in is worth nothing
    assert sessions.get(signed.sid, 10.0 + security.IDLE_S - 1) is signed
    assert sessions.get(signed.sid, 10.0 + 2 * security.IDLE_S) is None  # idle too long
    kept = sessions.sign_in(None, "Ada", 0.0)
    t = 0.0
    while t <= security.MAX_S:  # used all along, it still ends MAX_S after sign-in
        t += security.IDLE_S / 2
        got = sessions.get(kept.sid, t)
    assert got is None


async def test_sign_in_refuses_a_wrong_token_and_every_page_wants_a_session(client: TestClient) -> None:
    resp = await client.get("/referrers", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/signin?next=")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = await client.get("/signin")
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    wrong = await client.post("/signin", data={"name": "Mallory", "token": TOKEN + "x",
                                               "csrf": csrf_of(await page.text())})
    assert wrong.status == 401
    assert "not the console&#39;s token" in await wrong.text()
    assert (await client.get("/referrers", allow_redirects=False)).status == 303  # still signed out
    no_csrf = await client.post("/signin", data={"name": "Mallory", "token": TOKEN})
    assert no_csrf.status == 403 and "Form refused" in await no_csrf.text()
    assert "10,000 referrers" in await sign_in(client)


async def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(client: TestClient) -> None:
    html = await sign_in(client)
    csrf = csrf_of(html)
    for path, data in [("/review/case_1", {"decision": "approve", "reason": "ok"}),
                       ("/payouts/run", {"as_of": "1771113600", "reason": "r", "confirm": "yes"}),
                       ("/signout", {})]:
        refused = await client.post(path, data=data)
        assert refused.status == 403, path
        assert "nothing was changed" in await refused.text()
        forged = await client.post(path, data={**data, "csrf": csrf[:-2] + "xx"})
        assert forged.status == 403, path
    assert (await client.get("/referrers")).status == 200  # still signed in: the sign-out was refused too
    out = await client.post("/signout", data={"csrf": csrf}, allow_redirects=False)
    assert out.status == 303
    assert (await client.get("/referrers", allow_redirects=False)).status == 303


async def test_a_page_that_fails_says_so_with_a_reference_and_never_shows_a_traceback(
    big: model.Fold, caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(FixedProjector):
        async def current(self) -> tuple[model.Fold, bool]:
            raise RuntimeError("secret detail of a bug")

    cfg = Config("127.0.0.1:1", Topics("sandbox", "tconsole"))
    async with TestClient(TestServer(make_app(cfg, TOKEN, projector=Broken(big)))) as client:
        await sign_in(client)
        resp = await client.get("/referrers")
        html = await resp.text()
    assert resp.status == 500 and "Something went wrong" in html and "Nothing was changed" in html
    assert "Traceback" not in html and "secret detail" not in html
    [ref] = re.findall(r"error ([0-9a-f]{8})", html)[:1]
    assert any(getattr(r, "error_ref", None) == ref for r in caplog.records)  # the log has the details


# --- 10,000 referrers -----------------------------------------------------------------------


async def test_ten_thousand_referrers_search_sort_and_page(client: TestClient, big: model.Fold) -> None:
    await sign_in(client)
    first = await (await client.get("/referrers")).text()
    assert "10,000 rows (10,000 referrers in the log" in first and "page 1 of 200" in first
    assert ucc_column(first) == [f"ucc_{i:05d}" for i in range(50)]

    last = await (await client.get("/referrers?page=200")).text()
    assert ucc_column(last)[-1] == "ucc_09999" and 'rel="next"' not in last
    beyond = await (await client.get("/referrers?page=999")).text()
    assert ucc_column(beyond) == ucc_column(last)  # a page past the end shows the last one

    by_net = await (await client.get("/referrers?sort=net&dir=desc")).text()
    rows = model.rows(big, ts("2026-12-01"))
    expected = sorted(rows, key=lambda r: (r.ucc, r.currency))
    expected.sort(key=lambda r: r.net, reverse=True)
    assert ucc_column(by_net) == [r.ucc for r in expected[:50]]
    assert 'aria-sort="descending"' in by_net
    top = expected[0]
    assert model.money(top.net, "usd") in by_net  # in dollars, never in cents

    found = await (await client.get("/referrers?q=UCC_0999")).text()
    assert ucc_column(found) == [f"ucc_0999{i}" for i in range(10)]
    assert "10 rows" in found
    none = await (await client.get("/referrers?q=nobody")).text()
    assert "No referrer matches" in none


def test_select_pages_sorted_rows_with_ties_in_ucc_order(big: model.Fold) -> None:
    rows = model.rows(big, ts("2026-12-01"))
    page = model.select(rows, sort="referrals", page=3, per_page=100)
    assert page.pages == 100 and page.page == 3
    assert [r.ucc for r in page.rows] == [f"ucc_{i:05d}" for i in range(200, 300)]  # every tie: by ucc
    paid_first = model.select(rows, sort="earned", desc=True, per_page=10_000).rows
    assert [r.earned for r in paid_first] == sorted((r.earned for r in rows), reverse=True)
    assert sum(1 for r in paid_first if r.earned > 500) == 1000  # the ones that paid an invoice


# --- no broker, no data ---------------------------------------------------------------------


async def test_a_broker_that_is_down_gets_a_clear_page_never_a_traceback() -> None:
    port = free_port()  # nothing listens there
    cfg = Config(f"127.0.0.1:{port}", Topics("sandbox", "tconsole"), worker_urls=(), ingest_url=None)
    async with TestClient(TestServer(make_app(cfg, TOKEN))) as client:
        await sign_in(client)
        for path in ("/", "/referrers", "/referrers/ucc_X", "/review", "/review/case_1", "/payouts",
                     "/rules"):
            resp = await client.get(path)
            text = await resp.text()
            assert resp.status == 503, path
            assert "Kafka cannot be reached" in text and f"127.0.0.1:{port}" in text, path
            assert "refused the connection" in text and "refstream kafka up" in text, path
            assert "Traceback" not in text, path
        html = await (await client.get("/signin")).text()
        decided = await client.post("/review/case_1", data={"decision": "approve", "reason": "ok",
                                                            "csrf": csrf_of(html)})
        assert decided.status == 503 and "Nothing was changed" in await decided.text()


@pytest.mark.kafka
async def test_a_log_with_nothing_in_it_shows_empty_states(stack: object, bootstrap: str,
                                                            topics: Topics) -> None:
    # topics created (the `stack` fixture), no ingest, no worker, no events
    cfg = Config(bootstrap, topics, worker_urls=(f"http://127.0.0.1:{free_port()}",), ingest_url=None)
    async with TestClient(TestServer(make_app(cfg, TOKEN))) as client:
        await sign_in(client)
        expect = {
            "/": ["No worker has published the rules yet", "No money yet", "No payout run yet",
                  "not answering"],
            "/referrers": ["No referrers yet"],
            "/review": ["No open review cases", "No case has been decided yet"],
            "/payouts": ["No payout run yet"],
            "/rules": ["No rules revision in the log yet"],
            "/referrers/ucc_X": ["There is no referrer &#39;ucc_X&#39;"],
            "/review/case_1": ["There is no review case &#39;case_1&#39;"],
            "/payouts/runs/run-1": ["There is no payout run &#39;run-1&#39;"],
        }
        for path, texts in expect.items():
            resp = await client.get(path)
            html = await resp.text()
            assert resp.status == (404 if path.count("/") > 1 else 200), (path, html[html.find("<main"):])
            for text in texts:
                assert text in html, (path, text)
    # an environment whose topics were never created
    missing = Topics("sandbox", topics.prefix + "x")
    async with TestClient(TestServer(make_app(Config(bootstrap, missing), TOKEN))) as client:
        await sign_in(client)
        resp = await client.get("/")
        html = await resp.text()
        assert resp.status == 503 and "A topic is missing" in html
        assert f"no topic {missing.stripe_events}" in html and "refstream topics create" in html
