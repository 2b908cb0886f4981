"""The `refstream` subcommands, one module each (refstream/cli.py puts them together)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def refstream_command() -> str:
    """How the person should type this command in a hint: `refstream` when that is what
    their PATH finds, else the path of this one (`.venv/bin/refstream` in a checkout)."""
    here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    on_path = shutil.which("refstream")
    if here is None or here.name != "refstream" or (on_path and Path(on_path).resolve() == here):
        return "refstream"
    try:
        return str(here.relative_to(Path.cwd()))
    except ValueError:
        return str(here)
