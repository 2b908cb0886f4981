"""The compiled core (docs/performance.md#compiled-core): used only while it matches the
sources, and folding exactly as the interpreted one does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import processors.rules.referrer
from schemas import _compiled

ROOT = Path(__file__).resolve().parents[2]


def digest(*, interpreted: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "REFSTREAM_INTERPRETED"}
    if interpreted:
        env["REFSTREAM_INTERPRETED"] = "1"
    out = subprocess.run([sys.executable, "-m", "bench.fold", "--digest", "--customers", "1500",
                          "--referrers", "150"], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True)
    return str(json.loads(out.stdout[out.stdout.index("{"):])["sha256"])


def test_the_compiled_and_the_interpreted_core_fold_the_bench_log_to_the_same_digest() -> None:
    state = _compiled.status()
    running_compiled = _compiled.is_compiled(processors.rules.referrer)
    # whichever build this process runs, it is the one the status allows
    assert running_compiled == (state == "compiled" and not os.environ.get("REFSTREAM_INTERPRETED")), state
    if state == "compiled":
        assert digest(interpreted=False) == digest(interpreted=True)


def test_a_build_that_no_longer_matches_its_sources_is_never_used(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    build = tmp_path / "compiled"
    (build / "processors").mkdir(parents=True)
    manifest = {"python": sys.version.split()[0], "abi": _compiled.sysconfig.get_config_var("EXT_SUFFIX"),
                "sources": {m: "0" * 64 for m in _compiled.MODULES}}  # as if every source had changed
    (build / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(_compiled, "BUILD", build)
    monkeypatch.setattr(_compiled, "MANIFEST", build / "manifest.json")
    monkeypatch.delenv("REFSTREAM_INTERPRETED", raising=False)
    assert _compiled.status().startswith("stale: schemas/frozen.py, ")

    package = types.ModuleType("processors")
    package.__path__ = [str(ROOT / "processors")]
    _compiled.activate(package)
    assert package.__path__ == [str(ROOT / "processors")]  # the sources, not the stale build
    manifest["python"] = "3.9.0"
    (build / "manifest.json").write_text(json.dumps(manifest))
    assert _compiled.status() == f"stale: built for Python 3.9.0, this is {sys.version.split()[0]}"
