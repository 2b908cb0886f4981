"""stripe-mock, Stripe's own mock of its API, for the tests of `refstream payouts execute`.

It is a Go program: `go install github.com/stripe/stripe-mock@<VERSION>` builds it into the
git-ignored cache (`$REFSTREAM_CACHE_DIR/stripe-mock/<VERSION>/`, as refstream/localkafka.py
keeps the Kafka jars), once; later runs reuse it. Go (1.21 or newer) is a prerequisite of
the tests, as Java and Maven are (README.md). stripe-mock answers every documented endpoint
from Stripe's OpenAPI description and refuses a request that does not match it (an unknown
parameter, a wrong type), so requests that pass it match Stripe's API; it keeps no state
(idempotency keys included).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from refstream.localkafka import cache_dir

# pinned: what `@latest` resolved to when this was written
VERSION = "v0.203.0"
MODULE = "github.com/stripe/stripe-mock"


class StripeMockError(RuntimeError):
    """stripe-mock cannot be installed or started; the message says why and the fix."""


def binary() -> Path:
    """The stripe-mock executable, built with `go install` on first use."""
    folder = cache_dir() / "stripe-mock" / VERSION
    exe = folder / "stripe-mock"
    if exe.exists():
        return exe
    go = shutil.which("go")
    if go is None:
        raise StripeMockError(
            "`go` was not found on PATH: the payout tests run Stripe's API mock (stripe-mock), a Go "
            "program they build on first use. Install Go 1.21 or newer (https://go.dev/dl/ or "
            "`apt-get install golang`).")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions at once build it once
        try:
            if exe.exists():
                return exe
            env = {**os.environ, "GOBIN": str(folder), "GOFLAGS": "-modcacherw"}
            result = subprocess.run([go, "install", f"{MODULE}@{VERSION}"], env=env, capture_output=True,
                                    text=True, timeout=1800)
            if result.returncode != 0 or not exe.exists():
                tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
                raise StripeMockError(
                    f"`go install {MODULE}@{VERSION}` failed. Check that the Go module proxy "
                    f"(proxy.golang.org, or GOPROXY) is reachable.\n{tail}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return exe


@dataclass
class StripeMock:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start(port: int, https_port: int, log: Path, *, timeout_s: float = 60.0) -> StripeMock:
    """stripe-mock serving HTTP on 127.0.0.1:`port` (and HTTPS, which it always serves, on
    `https_port` rather than its fixed default, so two of them never collide); returns once
    it accepts connections."""
    exe = binary()
    with log.open("ab") as out:
        process = subprocess.Popen([str(exe), "-http-addr", f"127.0.0.1:{port}", "-https-addr",
                                    f"127.0.0.1:{https_port}"], stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    mock = StripeMock(port, process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StripeMockError(f"stripe-mock exited with {process.returncode}: see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return mock
        except OSError:
            time.sleep(0.1)  # polling a port that is not open yet: nothing to wait on but time
    mock.stop()
    raise StripeMockError(f"stripe-mock did not accept connections on port {port} within {timeout_s:g} s")
