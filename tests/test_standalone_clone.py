"""Whoever clones the repository from a public host has only the repository: the unit
tests pass in a fresh clone of HEAD that has no other folder next to it, with no
broker, using this virtualenv's Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_unit_tests_pass_in_a_clone_with_nothing_next_to_it(tmp_path: Path) -> None:
    clone = tmp_path / "refstream"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REFSTREAM_", "PYTEST_", "PYTHONPATH"))}
    done = _run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], tmp_path, env, 120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refstream"]  # no shared/ beside it

    # the code under test is the clone's, not the checkout this virtualenv was installed from
    packages = "processors, projections, refstream, schemas, tests"
    where = _run([sys.executable, "-c", f"import {packages}; "
                  f"print('\\n'.join(m.__file__ for m in ({packages})))"], clone, env, 60)
    assert where.returncode == 0, where.stderr
    assert all(Path(f).is_relative_to(clone) for f in where.stdout.split()), where.stdout

    # a unit test that wanted a broker would fail here: nothing listens on port 1
    env |= {"REFSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1", "PYTHONDONTWRITEBYTECODE": "1"}
    pytest = [sys.executable, "-m", "pytest", "-q", "tests/unit", "-p", "no:cacheprovider"]
    listed = _run([*pytest, "--collect-only"], clone, env, 120)
    assert listed.returncode == 0, listed.stdout[-4000:]
    # the Stripe tests run on the project's own samples; the optional cross-check with
    # Stripe's fixture files is not even collected
    assert "tests/unit/test_stripe_fixtures.py::" in listed.stdout
    assert "crosscheck" not in listed.stdout

    result = _run(pytest, clone, env, 600)
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout, tail
    assert "failed" not in result.stdout and "skipped" not in result.stdout, tail
