"""Shared pieces of the worker fault tests: a private pipeline stack on the session broker
(tests/pipeline/stack.py, reused as it is) and small probes of a running worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.pipeline.stack import Proc, Stack


@pytest.fixture
def worker_stack(bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[Stack]:
    """Topics under the test's own prefix, ingest and workers as processes, all stopped after."""
    s = Stack(bootstrap, topic_prefix, tmp_path)
    s.create_topics()
    try:
        yield s
    finally:
        s.close()


async def stats(stack: Stack, proc: Proc) -> dict[str, Any] | None:
    """The worker's counters from /readyz, or None while its web server is not up yet."""
    try:
        _, body = await stack.get_json(proc, "/readyz")
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None
    return body if isinstance(body, dict) else None
