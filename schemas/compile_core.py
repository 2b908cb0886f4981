"""`python -m schemas.compile_core build|status`: compile the pure core with mypyc, or say
whether the compiled one is in use (schemas/_compiled.py, docs/performance.md#compiled-core)."""

from __future__ import annotations

import sys

from schemas._compiled import build, status

if __name__ == "__main__":
    if (sys.argv[1] if len(sys.argv) > 1 else "status") == "build":
        raise SystemExit(build())
    print(status())
