"""A private stack per test: topics under the test's prefix, processes stopped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pipeline.stack import Stack


@pytest.fixture
def stack(bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(bootstrap, topic_prefix, tmp_path)
    s.create_topics()
    try:
        yield s
    finally:
        s.close()
