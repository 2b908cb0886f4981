"""Shared pieces of the worker fault tests: a private pipeline stack on the session broker
(tests/pipeline/stack.py, reused as it is) and small probes of a running worker."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.pipeline.stack import Proc, Stack


async def stats(stack: Stack, proc: Proc) -> dict[str, Any] | None:
    """The worker's counters from /readyz, or None while its web server is not up yet."""
    try:
        _, body = await stack.get_json(proc, "/readyz")
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None
    return body if isinstance(body, dict) else None
