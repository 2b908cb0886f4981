"""The worker's web API: bound to 127.0.0.1 by default, every route behind the bearer
token when one is set, nothing readable around it, and no HTTP way to start a payout run
(the control topic is the only one, docs/rules.md#holding-and-payouts)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
import pytest

from projections.demo import worked_example
from refstream.commands.review import read_to_end
from tests.pipeline.stack import Proc, Stack

pytestmark = pytest.mark.kafka


TOKEN = "web-token-for-security-tests-0123456789"


def listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP socket listens on for `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            addr, _, hexport = local.rpartition(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                if len(addr) == 8:
                    found.add(".".join(str(int(addr[i: i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add("v6:" + addr)
    return found


async def _status(proc: Proc, method: str, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession() as http, http.request(
        method, proc.url + path, headers=headers, timeout=timeout, allow_redirects=False,
    ) as resp:
        return resp.status


async def test_the_web_api_binds_loopback_and_every_route_wants_the_bearer_token(stack: Stack) -> None:
    stack = stack
    stack.web_token = TOKEN
    await stack.start_ingest()
    worker = await stack.start_worker()  # no --web-host: the default
    await stack.post(worked_example())
    await stack.wait_drained()

    assert listening_addresses(worker.port) == {"127.0.0.1"}

    # the referrer's data, by every route that could serve it, with no or a wrong token
    data_paths = ["/referrers/ucc_X", "/readyz", "/metrics", "/table/referrers/", "/table/referrers/ucc_X/",
                  "/table/", "/stats/", "/graph/", "/assignment/", "/performance/"]
    for path in data_paths:
        for token in (None, "wrong-token"):
            status = await _status(worker, "GET", path, token)
            assert status in (401, 404), f"GET {path} with token {token!r} answered {status}"
    assert await _status(worker, "GET", "/referrers/ucc_X", TOKEN) == 200
    assert await _status(worker, "GET", "/metrics", TOKEN) == 200


async def test_no_http_route_starts_a_payout_run_only_the_control_topic_does(stack: Stack) -> None:
    stack = stack
    await stack.start_ingest()
    worker = await stack.start_worker()
    await stack.post(worked_example())
    await stack.assert_outputs_match_engine()

    paths = ["/", "/payouts", "/payouts/run", "/payout-runs", "/control", "/referrers/ucc_X",
             "/referrers/ucc_X/payout", "/readyz", "/metrics", "/router/", "/table/referrers/ucc_X/",
             "/signal/"]
    for path in paths:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            status = await _status(worker, method, path, None)
            assert not 200 <= status < 300, f"{method} {path} answered {status}"
    # the worker's own records (its bootstrap revision, its placements) may be there; no request's
    control_types = {orjson.loads(value)["type"] for _, value in
                     await read_to_end(stack.bootstrap, [stack.topics.control])}
    assert control_types <= {"rules_revision", "control_placed"}, control_types
    await stack.wait_drained()
    assert await read_to_end(stack.bootstrap, [stack.topics.payouts]) == [], "a payout without a run"

    # the control topic does start one
    await stack.payout_run("2026-03-01T00:00:00+00:00", "the-only-way")
    got = await stack.assert_outputs_match_engine()
    assert any(b'"payout_id"' in r for r in got)
