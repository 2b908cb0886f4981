"""`make demo` piped into a program that exits (`make demo 2>&1 | head -1`, or a `tee` that a
Ctrl-C ends first): Ctrl-C must still stop every process the demo started, the broker
included, although nothing can be printed any more."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import _free_port_pair


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _mentioning(text: str) -> list[int]:
    """Processes whose command line or environment names `text` (the test's data dir)."""
    hits = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text.encode() in (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes():
                    hits.append(int(entry.name))
            except OSError:
                continue
    return [pid for pid in hits if _alive(pid)]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.kafka
def test_ctrl_c_on_a_piped_demo_stops_everything_it_started(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    kafka_port, ingest_port, web_port = _free_port_pair(), _free_port(), _free_port()
    env = {**os.environ, "REFSTREAM_DATA_DIR": str(data_dir), "KAFKA_HEAP_OPTS": "-Xms128m -Xmx384m"}
    for name in ("REFSTREAM_KAFKA_BOOTSTRAP", "REFSTREAM_STRIPE_SECRETS_SANDBOX", "REFSTREAM_RULES"):
        env.pop(name, None)
    # `make demo 2>&1 | head -1`: one process group, as a shell runs a pipeline, so a signal to
    # the group is what Ctrl-C in a terminal sends
    devstack = subprocess.Popen(
        [sys.executable, "-m", "refstream.devstack", "--kafka-port", str(kafka_port),
         "--ingest-port", str(ingest_port), "--web-port", str(web_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
        process_group=0,
    )
    assert devstack.stdout is not None
    head = subprocess.Popen(["head", "-1"], stdin=devstack.stdout, stdout=subprocess.PIPE,
                            process_group=devstack.pid)
    devstack.stdout.close()
    try:
        first_line, _ = head.communicate(timeout=60)
        assert first_line.startswith(b"[devstack] ")  # and then the pipe is closed

        # up: the worker answers, and the demo runs (it waits for its review case)
        deadline = time.monotonic() + 240
        started: set[int] = set()
        while time.monotonic() < deadline:
            assert devstack.poll() is None, "devstack ended by itself"
            started = _descendants(devstack.pid)
            if _ready(f"http://127.0.0.1:{web_port}/readyz") and any(
                    " demo " in _cmdline(pid) for pid in started):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the stack was not up within 240 s; logs in {data_dir / 'logs'}")
        broker_pid = int((data_dir / "kafka" / "node-1" / "broker.pid").read_text())
        started |= {broker_pid}
        names = {pid: _cmdline(pid) for pid in started}
        assert any("kafka.Kafka" in c for c in names.values())
        assert any(" ingest " in c for c in names.values()) and any(" worker " in c for c in names.values())

        os.killpg(devstack.pid, signal.SIGINT)  # Ctrl-C
        assert devstack.wait(timeout=120) == 0

        left = sorted(pid for pid in started if _alive(pid))
        assert left == [], {pid: names[pid] for pid in left}
        assert _mentioning(str(data_dir)) == []
    finally:
        if devstack.poll() is None:
            os.killpg(devstack.pid, signal.SIGKILL)
            devstack.wait()
        for pid in _mentioning(str(data_dir)):  # never leave a broker behind, even when failing
            os.kill(pid, signal.SIGKILL)
