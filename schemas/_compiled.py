"""The pure core compiled with mypyc, used only while it matches its sources.

See docs/performance.md#compiled-core.

`python -m schemas.compile_core build` compiles the modules in `MODULES` with mypyc into
`.cache/compiled/` (next to the checkout, git-ignored) and records a hash of each source.
`activate(package)`, called by the `__init__.py` of `schemas`, `processors` and
`processors.rules`, puts
the compiled modules ahead of the sources only when every recorded hash still matches: an
edited source (or another Python) runs interpreted, with one line on stderr saying so, never
stale compiled code. `REFSTREAM_INTERPRETED=1` runs interpreted on purpose.

    python -m schemas.compile_core build     # compile (the install does it; failure: interpreted)
    python -m schemas.compile_core status    # compiled, stale or absent
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".cache" / "compiled"
MANIFEST = BUILD / "manifest.json"
MODULES = (
    "schemas/frozen.py", "schemas/events.py", "schemas/commands.py", "schemas/control.py",
    "schemas/rules.py", "schemas/stripe.py",
    "processors/rules/money.py", "processors/rules/invoice_link.py", "processors/rules/referral.py",
    "processors/rules/referrer.py", "processors/rules/engine.py", "processors/alignment.py",
    "processors/rules/identity.py",
)
# what the compiled modules import and type-check against but mypyc must not compile: the
# msgspec structs (mypyc would drop their class options), copied into the build, and hashed
# with the sources, since the compiled code is built against their field types
IMPORTED = ("schemas/stripe_records.py", "schemas/stripe_wire.py", "schemas/event_records.py")
log = logging.getLogger("refstream.compiled")


def _fingerprint() -> dict[str, object]:
    """What a compiled build must match: each source's hash, the interpreter and the ABI."""
    return {
        "python": sys.version.split()[0],
        "abi": sysconfig.get_config_var("EXT_SUFFIX"),
        "sources": {m: hashlib.sha256((ROOT / m).read_bytes()).hexdigest() for m in (*MODULES, *IMPORTED)},
    }


def status() -> str:
    """"compiled", "stale: <why>" or "absent"."""
    if not MANIFEST.is_file():
        return "absent"
    try:
        recorded = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return "stale: the manifest cannot be read"
    now = _fingerprint()
    if recorded.get("python") != now["python"] or recorded.get("abi") != now["abi"]:
        return f"stale: built for Python {recorded.get('python')}, this is {now['python']}"
    sources: dict[str, str] = now["sources"]  # type: ignore[assignment]
    changed = [m for m, h in sources.items() if recorded.get("sources", {}).get(m) != h]
    if changed:
        return f"stale: {', '.join(changed)} changed since it was compiled"
    return "compiled"


def activate(package: ModuleType) -> None:
    """Put the compiled modules of `package` ahead of its sources, if they match them. A stale
    build is never used: the sources run interpreted (same results, slower), said at INFO."""
    if os.environ.get("REFSTREAM_INTERPRETED"):
        return
    state = status()
    if state == "absent":
        return
    if state != "compiled":
        log.info("running the interpreted core: the compiled one is %s; rebuild it with "
                 "`make install` (or `python -m schemas.compile_core build`)", state)
        return
    compiled = str(BUILD / package.__name__.replace(".", "/"))
    if compiled not in package.__path__:
        package.__path__.insert(0, compiled)
    if str(BUILD) not in sys.path:
        sys.path.append(str(BUILD))  # mypyc's shared library of the whole group


def is_compiled(module: ModuleType) -> bool:
    return str(getattr(module, "__file__", "")).endswith(str(sysconfig.get_config_var("EXT_SUFFIX")))


def build() -> int:
    """Compile into a scratch copy, then move the result into place (never half a build)."""
    try:
        from mypyc.build import mypycify  # noqa: F401  (present: the dev extra installs mypy)
    except ImportError:
        print("cannot compile the core: mypyc is not installed (pip install mypy). Running interpreted.",
              file=sys.stderr)
        return 1
    fingerprint = _fingerprint()
    with tempfile.TemporaryDirectory(prefix="refstream-mypyc-") as tmp:
        work = Path(tmp)
        for m in (*MODULES, *IMPORTED):
            (work / m).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / m, work / m)
        for pkg in ("schemas", "processors", "processors/rules"):
            (work / pkg / "__init__.py").write_text("")
        mypyc = Path(sys.executable).parent / "mypyc"
        result = subprocess.run([str(mypyc), *MODULES], cwd=work, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"compiling the core failed; refstream runs interpreted (slower, same results):\n"
                  f"{(result.stdout + result.stderr)[-2000:]}", file=sys.stderr)
            return 1
        staged = work / "out"
        for so in work.glob(f"*{sysconfig.get_config_var('EXT_SUFFIX')}"):
            staged.mkdir(exist_ok=True)
            shutil.move(str(so), staged / so.name)
        for m in MODULES:
            src = work / Path(m).with_suffix(str(sysconfig.get_config_var("EXT_SUFFIX")))
            (staged / m).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), staged / Path(m).with_suffix(str(sysconfig.get_config_var("EXT_SUFFIX"))))
        (staged / "manifest.json").write_text(json.dumps(fingerprint, indent=2) + "\n")
        if BUILD.exists():
            shutil.rmtree(BUILD)
        BUILD.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), BUILD)
    print(f"compiled the core with mypyc into {BUILD.relative_to(ROOT)}", file=sys.stderr)
    return 0
