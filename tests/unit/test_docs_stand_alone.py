"""The repository stands alone: whoever clones it has only the repository.

No tracked file cites a document that is not in it (a product spec, a folder next to the
checkout), and every link between the repository's own docs, and every `docs/….md#anchor`
that code, help texts and messages cite, leads to a file and heading that exist.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# a spec document outside the repository, its sections, or a folder next to the checkout
OUTSIDE = re.compile(r"\bSPEC\b|§|\.\./shared|shared/spec|shared/stripe-fixtures|\b[Tt]he spec\b")
# may name them: this test (for its patterns), and the optional cross-check with Stripe's
# own fixture files, collected only when a checkout has them next to it
ALLOWED = ("tests/unit/test_docs_stand_alone.py", "tests/unit/crosscheck/")
SKIP_DIRS = {".git", ".venv", ".data", ".cache", "__pycache__", ".hypothesis", ".pytest_cache",
             ".mypy_cache", ".ruff_cache", "refstream.egg-info"}

MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
DOC_CITE = re.compile(r"\b(docs/[\w.-]+\.md|README\.md|SECURITY\.md)(?:#([\w-]+))?")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


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


@cache
def anchors(name: str) -> frozenset[str]:
    """The #anchors a markdown file offers: its headings as GitHub slugs them, and ids."""
    out: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    text = text_of(name) or ""
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    out |= set(re.findall(r'<a (?:id|name)="([^"]+)"', text))
    return frozenset(out)


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


def test_every_link_and_doc_citation_leads_somewhere() -> None:
    broken = []
    for name in tracked_files():
        text = text_of(name)
        if text is None:
            continue
        if name.endswith(".md"):
            for m in MD_LINK.finditer(text):
                target = m.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # a web address
                path, _, anchor = target.partition("#")
                resolved = ((ROOT / name).parent / path).resolve() if path else (ROOT / name).resolve()
                if not resolved.is_relative_to(ROOT) or not resolved.exists():
                    broken.append(f"{name}: ({target}): no such file in the repository")
                elif anchor and resolved.suffix == ".md" and anchor not in anchors(
                        str(resolved.relative_to(ROOT))):
                    broken.append(f"{name}: ({target}): no heading #{anchor} there")
            continue
        for m in DOC_CITE.finditer(text):
            path, anchor = m.group(1), m.group(2)
            if not (ROOT / path).is_file():
                broken.append(f"{name}: {m.group(0)}: no such file in the repository")
            elif anchor and anchor not in anchors(path):
                broken.append(f"{name}: {m.group(0)}: no heading #{anchor} there")
    assert not broken, "links that lead nowhere (fix the link or the heading):\n" + "\n".join(broken)
