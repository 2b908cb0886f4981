"""`refstream ingest --workers N`: N ingest processes sharing one port (SO_REUSEPORT).

One Python process serves webhooks on one core. With more cores, N workers listen on the
same address and the kernel spreads connections between them; each has its own Kafka
producer. The parent only starts them, passes SIGTERM/SIGINT/SIGHUP on, and when one
worker exits by itself it stops the others and exits too, so whatever supervises ingest
(systemd, Docker) restarts the whole service, not half of it.

Metrics: every worker counts into files in one PROMETHEUS_MULTIPROC_DIR (a fresh
temporary folder unless the operator sets one), and /metrics on any worker answers for
all of them, so a scrape that lands on either sees the same totals.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("refstream.ingest")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # a worker whose parent was killed (kill -9) must not keep the port to itself
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_workers(count: int, worker_args: Sequence[str], *, stop_timeout_s: float) -> int:
    """Run `count` workers (`refstream <worker_args>`) until a signal or a worker exits."""
    env = dict(os.environ)
    own_dir = None
    if not env.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="refstream-ingest-metrics-")
        env[MULTIPROC_ENV] = own_dir
    cmd = [sys.executable, "-c", "from refstream.cli import main; main()", *worker_args]
    workers: list[subprocess.Popen[bytes]] = []
    stop_signal: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_signal.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        # own process group: a Ctrl-C reaches the parent only, which passes it on once
        workers = [subprocess.Popen(cmd, env=env, process_group=0, preexec_fn=_die_with_parent)
                   for _ in range(count)]
        log.info("workers started", extra={"workers": count, "pids": [w.pid for w in workers]})
        code = 0
        while not stop_signal:
            exited = [w for w in workers if w.poll() is not None]
            if exited:
                code = exited[0].returncode or 1
                log.error("worker exited, stopping the others",
                          extra={"pid": exited[0].pid, "returncode": exited[0].returncode})
                break
            time.sleep(0.2)
        _stop(workers, stop_timeout_s)
        return code
    finally:
        _stop(workers, stop_timeout_s)
        for s, handler in previous.items():
            signal.signal(s, handler)
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def _stop(workers: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)  # a worker's graceful shutdown: answers in flight finish
    deadline = time.monotonic() + timeout_s
    for w in workers:
        try:
            w.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
