"""Debian's chromium driven by Playwright, and what a page must offer a keyboard.

Playwright's own browser download cannot be reached from here, so the tests drive the
system's `/usr/bin/chromium` (`apt-get install chromium`; `.ci/run` installs it) with a
fresh user data dir and without any of its network chatter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("REFSTREAM_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1200, "height": 800}


def require_chromium() -> None:
    if not CHROMIUM.exists():
        raise AssertionError(
            f"{CHROMIUM} is missing: the console's browser tests drive Debian's chromium. Install it with "
            "`sudo apt-get install -y chromium` (or point REFSTREAM_CHROMIUM at a Chromium binary).")


async def launch(pw: Any, user_data_dir: Path) -> Any:
    """A persistent context in a fresh, empty profile folder: no state from elsewhere."""
    require_chromium()
    return await pw.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=str(CHROMIUM), args=FLAGS, headless=True, viewport=VIEWPORT,
        accept_downloads=True,
    )


# Every control a person works with: each must be reachable with Tab, and each field needs a
# label a screen reader reads out.
_INTERACTIVE = ("a[href], button, input:not([type=hidden]), select, textarea, summary")


async def unlabelled_fields(page: Any) -> list[str]:
    return list(await page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                 .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label'))
                 .map(el => el.outerHTML)"""))


async def unreachable_by_tab(page: Any) -> list[str]:
    """The interactive elements that pressing Tab from the top of the page never focuses."""
    total = await page.evaluate(
        """(sel) => {
             const els = [...document.querySelectorAll(sel)];
             els.forEach((el, i) => el.setAttribute('data-tab-probe', i));
             window.__focused = new Set();
             document.addEventListener('focusin', e => {
               const i = e.target.getAttribute && e.target.getAttribute('data-tab-probe');
               if (i !== null) window.__focused.add(Number(i));
             });
             if (document.activeElement) document.activeElement.blur();
             return els.length; }""",
        _INTERACTIVE)
    for _ in range(total + 3):  # one Tab per element, and a few for the page itself
        await page.keyboard.press("Tab")
    return list(await page.evaluate(
        """(sel) => [...document.querySelectorAll(sel)]
                 .filter((el, i) => !window.__focused.has(i)).map(el => el.outerHTML.slice(0, 120))""",
        _INTERACTIVE))


async def assert_keyboard_ready(page: Any) -> None:
    """Every field labelled and every link, button and field reachable with Tab."""
    assert await unlabelled_fields(page) == [], page.url
    assert await unreachable_by_tab(page) == [], page.url


async def tab_to(page: Any, selector: str, limit: int = 200) -> None:
    """Press Tab until `selector` has the focus, as a person without a mouse would."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if await page.evaluate("(sel) => document.activeElement && document.activeElement.matches(sel)",
                               selector):
            return
    raise AssertionError(f"{selector} on {page.url} cannot be reached with Tab")


async def figures(page: Any, selector: str) -> dict[tuple[str, str], int]:
    """(currency, figure) → minor units, from cells marked data-figure / data-minor."""
    cells = await page.eval_on_selector_all(
        f"{selector} [data-figure]",
        "els => els.map(el => [el.closest('[data-currency]').dataset.currency, el.dataset.figure, "
        "el.dataset.minor])")
    return {(c, f): int(m) for c, f, m in cells}
