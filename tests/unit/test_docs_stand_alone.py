"""The repository stands alone: whoever clones it has only the repository.

No tracked file cites a document that is not in it (a product spec, a folder next to the
checkout): code, help texts, messages and docs cite the repository's own docs.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# a spec document outside the repository, its sections, or a folder next to the checkout
OUTSIDE = re.compile(r"\bSPEC\b|§|\.\./shared|shared/spec|shared/stripe-fixtures|\b[Tt]he spec\b")
# may name them: this test (for its patterns), and the optional cross-check with Stripe's
# own fixture files, collected only when a checkout has them next to it
ALLOWED = ("tests/unit/test_docs_stand_alone.py", "tests/unit/crosscheck/")
SKIP_DIRS = {".git", ".venv", ".data", ".cache", "__pycache__", ".hypothesis", ".pytest_cache",
             ".mypy_cache", ".ruff_cache", "refstream.egg-info"}


def tracked_files() -> list[str]:
    """The files a clone has: git's list in a checkout, else every file but build output."""
    if (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]
    found = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        found += [str((Path(folder) / n).relative_to(ROOT)) for n in names]
    return found


def text_of(name: str) -> str | None:
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # binary


def test_no_file_cites_a_document_outside_the_repository() -> None:
    found = []
    files = tracked_files()
    assert {"README.md", "docs/rules.md", "docs/cli.md", "schemas/rules.py"} <= set(files)
    for name in files:
        if name.startswith(ALLOWED):
            continue
        text = text_of(name)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, (
        "these lines cite a document a clone does not have; cite the repository's own docs "
        "(docs/rules.md, docs/cli.md, …) or say the fact itself:\n" + "\n".join(found)
    )

