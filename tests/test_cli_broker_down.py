"""With the broker down, each command says once what it could not do, what the broker did and
the fix: no raw aiokafka lines, no "Unclosed AIOKafkaConsumer", no claim of a wait it did
not make."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from refstream.cli import main
from refstream.commands import kafka_access

ROOT = Path(__file__).resolve().parents[1]
REFSTREAM = str(Path(sys.executable).parent / "refstream")
RULES = str(ROOT / "examples" / "rules.toml")

# command line → what the one message must say the command could not do
COMMANDS = {
    "review list": (["review", "list"], "Cannot read the review queue"),
    "review resolve": (["review", "resolve", "case_1", "--approve", "--reason", "checked"],
                       "Cannot look up case case_1"),
    "payouts run": (["payouts", "run", "--as-of", "2026-02-15T00:00:00Z"],
                    "The payout run 'run-1771113600' was not appended"),
    "export": (["export", "--no-progress"], "Cannot export the log"),
    "replay": (["replay", "--rules", RULES, "--no-progress"], "Cannot replay the log"),
    "worker": (["worker", "--web-port", "6999"], "The worker cannot start"),  # stops before binding
    "deliver status": (["deliver", "status"], "Cannot read the delivery status"),
    "payouts list": (["payouts", "list"], "Cannot list the payouts"),
    "audit": (["audit", "ucc_X"], "Cannot read the history of ucc_X"),
    "ledger adjust": (["ledger", "adjust", "ucc_X", "--amount", "500", "--currency", "usd", "--reason",
                       "gift"], "The adjustment of ucc_X by $5.00 was not recorded"),
}


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """A port bound by this test and listened on by nobody: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_each_command_says_once_what_it_could_not_do(closed_port: int, tmp_path: Path) -> None:
    env = {**os.environ, "REFSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port}", "REFSTREAM_ENV": "sandbox",
           "REFSTREAM_DATA_DIR": str(tmp_path / "data"), "PYTHONWARNINGS": "default"}
    env.pop("REFSTREAM_RULES", None)
    started = time.monotonic()
    procs = {name: subprocess.Popen([REFSTREAM, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
             for name, (args, _) in COMMANDS.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        lines = err.decode().splitlines()
        assert proc.returncode == 1, (name, err)
        assert out == b"", (name, out)  # nothing half-written (export's header line before)
        assert len(lines) == 1, (name, lines)  # no raw client lines, no unclosed-client warnings
        message = lines[0]
        assert message.startswith(f"Error: {COMMANDS[name][1]}: Kafka at 127.0.0.1:{closed_port} "
                                  "refused the connection"), (name, message)
        assert "refstream kafka up --detach" in message and "REFSTREAM_KAFKA_BOOTSTRAP" in message
        assert "within" not in message, (name, message)  # a refusal is no wait
    assert time.monotonic() - started < 45  # refused at once, not after a timeout


def test_writes_say_whether_anything_was_written(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{closed_port}")
    result = CliRunner().invoke(main, ["payouts", "run", "--as-of", "1771113600"])
    assert result.exit_code == 1
    assert "was not appended" in result.output and "Nothing is paid until it is." in result.output
    result = CliRunner().invoke(main, ["review", "resolve", "case_1", "--reject", "--reason", "no"])
    assert result.exit_code == 1 and "No decision was recorded." in result.output


@pytest.fixture
def silent_broker() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung broker."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()
        for conn in held:
            conn.close()


def test_a_broker_that_does_not_answer_is_named_with_the_time_waited(
    silent_broker: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_access, "TIMEOUT_S", 1.0)
    monkeypatch.setenv("REFSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{silent_broker}")
    for args, problem in (COMMANDS["review list"], COMMANDS["export"]):
        started = time.monotonic()
        result = CliRunner().invoke(main, args)
        waited = time.monotonic() - started
        assert result.exit_code == 1, result.output
        assert f"{problem}: Kafka at 127.0.0.1:{silent_broker} did not answer within 1 s." in result.output
        assert 0.9 < waited < 10, waited


def test_the_message_holds_when_the_clients_log_says_nothing(
    closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # in one process other code may have silenced logging (as `topics create` quiets aiokafka)
    monkeypatch.setenv("REFSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{closed_port}")
    logging.disable(logging.CRITICAL)
    try:
        result = CliRunner().invoke(main, ["review", "list"])
    finally:
        logging.disable(logging.NOTSET)
    assert result.exit_code == 1
    assert f"Kafka at 127.0.0.1:{closed_port} refused the connection" in result.output


def test_a_host_that_does_not_resolve_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFSTREAM_KAFKA_BOOTSTRAP", "kafka.invalid:9092")
    result = CliRunner().invoke(main, ["review", "list"])
    assert result.exit_code == 1
    assert "Kafka at kafka.invalid:9092 names a host that does not resolve" in result.output
