"""`refstream demo` as a newcomer sees it: tables before and after its payout run (the run's
own payouts apart from what was paid before), the commands counted by kind, and a review
case with the command that decides it; run that command and the demo shows what it released."""

from __future__ import annotations

import queue
import shlex
import subprocess
import threading
import time

import pytest

from tests.pipeline.stack import REFSTREAM, Stack

pytestmark = pytest.mark.kafka


class Lines:
    """The demo's stdout, line by line, without blocking the test forever."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        out = proc.stdout

        def pump() -> None:
            for line in out:
                self._q.put(line.rstrip("\n"))
            self._q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, text: str, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return "\n".join(self.seen)
        raise AssertionError(f"the demo never printed {text!r}; it printed:\n" + "\n".join(self.seen))


def _row(text: str, ucc: str, after: str) -> list[str]:
    section = text.split(after, 1)[1]
    return next(line.split() for line in section.splitlines() if line.split()[:1] == [ucc])


async def test_the_demo_shows_its_run_its_commands_and_what_deciding_its_case_releases(stack: Stack) -> None:
    ingest = await stack.start_ingest()
    worker = await stack.start_worker()
    demo = subprocess.Popen(
        [REFSTREAM, "demo", "--ingest-url", ingest.url, "--worker-url", worker.url, "--wait-for-review",
         "--topic-prefix", stack.prefix],
        env=stack.env(), cwd=stack.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = Lines(demo)
        shown = lines.until("Waiting for the decision")

        # ucc_X, the worked example: nothing paid before the run, 27.50 by it
        assert _row(shown, "ucc_X", "Referrers before the payout run")[3:] == [
            "USD", "40.00", "12.50", "27.50", "0.00", "27.50"]
        assert _row(shown, "ucc_X", "Referrers after it")[3:] == [
            "USD", "40.00", "12.50", "27.50", "27.50", "0.00", "27.50"]
        # ucc_R's case pauses its referral: nothing payable, nothing paid
        assert _row(shown, "ucc_R", "Referrers after it")[2:] == [
            "1", "USD", "5.00", "0.00", "5.00", "0.00", "0.00", "—"]
        # the commands counted by kind, not listed one by one
        assert "new_signup 14" in shown and "payout_created 4" in shown and "late_attribution 1" in shown
        assert "payout 4" in shown and f"`{REFSTREAM} demo --all` lists each one" in shown
        assert "notification reward_earned" not in shown

        resolve = next(line.strip() for line in lines.seen if " review resolve " in line)
        assert resolve.startswith(f"{REFSTREAM} review resolve ") and "--approve --reason" in resolve
        decided = stack.cli(*shlex.split(resolve)[1:])  # as a person would paste it
        assert "appended decision approve" in decided.stdout

        shown = lines.until("Payout run 'demo-2026-02-15-after-review'")
        assert "The approval released 40.00 USD to pay (35.00 USD of it newly earned)." in shown
        assert shown.endswith("pays 40.00 USD to ucc_R (3 entries).")
        assert demo.wait(timeout=60) == 0
        assert demo.stderr is not None and demo.stderr.read() == ""
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
