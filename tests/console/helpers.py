"""Helpers for the console's tests: a fold made in memory, and a signed-in HTTP client."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp.test_utils import TestClient

from refstream.console import model
from schemas.rules import RuleBook, load_rules

RULES = Path(__file__).resolve().parents[2] / "examples" / "rules.toml"
TOKEN = "console-test-token-0123456789"


def fold_of(bodies: Iterable[bytes], controls: Iterable[bytes] = ()) -> model.Fold:
    """What the console folds from Kafka, from bodies in memory (one partition, in order)."""
    from projections.logsource import LogRecord
    from schemas.topics import CONTROL, STRIPE_EVENTS

    records = [LogRecord(STRIPE_EVENTS, 0, i, i, None, (), b) for i, b in enumerate(bodies)]
    records += [LogRecord(CONTROL, 0, i, len(records) + i, None, (), c) for i, c in enumerate(controls)]
    return model.fold([records], RuleBook.of(load_rules(RULES)))


@dataclass
class FixedProjector:
    """A projector whose fold is given (pages that read nothing else need no broker)."""

    folded: model.Fold

    async def current(self) -> tuple[model.Fold, bool]:
        return self.folded, True

    def invalidate(self) -> None:
        pass


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def sign_in(client: TestClient, name: str = "Grace", token: str = TOKEN) -> str:
    """Sign in through the form; the page the console answers with."""
    page = await client.get("/signin")
    csrf = csrf_of(await page.text())
    resp = await client.post("/signin", data={"name": name, "token": token, "csrf": csrf,
                                              "next": "/referrers"})
    return await resp.text()
