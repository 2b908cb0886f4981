"""`make demo`: broker, topics, ingest and worker on 127.0.0.1, then `refstream demo`.

No `.env` needed: a sandbox signing secret is generated once into `.data/demo.env` (the
real environment and an existing `.env` still win). The demo waits for its review case to
be decided from another terminal and shows what that released; everything keeps running
until Ctrl-C (or SIGTERM, or the terminal closing), which stops what this started, in
reverse order: the demo, the worker, ingest, then the broker. A broker that was already
running is left alone.

Stopping never depends on being able to print: when the output goes nowhere any more (the
`tee` or `head` it was piped into has exited), devstack's lines go to /dev/null from then
on and it carries on.

    python -m refstream.devstack [--kafka-port 9092] [--ingest-port 8080] [--web-port 6066]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
REFSTREAM = str(Path(sys.executable).parent / "refstream")
CLOSED_PIPE_EXIT = 141  # refstream.cli's status for "whoever read the output has gone"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _silence_output() -> None:
    """From now on our stdout and stderr (and those of children started later) go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.dup2(devnull, fd)
    os.close(devnull)


def _say(text: str) -> None:
    try:
        print(f"[devstack] {text}", flush=True)
    except OSError:  # the pipe's reader exited, or the terminal hung up: carry on without output
        _silence_output()


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _shown(path: Path) -> str:
    """The path as a person in this shell would type it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _demo_env(data_dir: Path) -> tuple[dict[str, str], Path | None]:
    """The environment for the children: ours, plus a generated sandbox secret if none (and
    the file that holds it)."""
    env = dict(os.environ)
    env.setdefault("REFSTREAM_ENV", "sandbox")
    env.setdefault("REFSTREAM_DATA_DIR", str(data_dir))
    env.setdefault("REFSTREAM_RULES", str(ROOT / "examples" / "rules.toml"))
    dotenv = Path.cwd() / ".env"
    if "REFSTREAM_STRIPE_SECRETS_SANDBOX" in env or (
        dotenv.exists() and "REFSTREAM_STRIPE_SECRETS_SANDBOX" in dotenv.read_text()
    ):
        return env, None
    demo_env = data_dir / "demo.env"
    if not demo_env.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        demo_env.write_text(
            "# written by `make demo`: a throwaway signing secret for the local sandbox.\n"
            f"# Load it into a shell for commands by hand: set -a; . {_shown(demo_env)}; set +a\n"
            f"REFSTREAM_STRIPE_SECRETS_SANDBOX=whsec_demo_{secrets.token_hex(16)}\n"
        )
        demo_env.chmod(0o600)
        _say(f"generated a sandbox signing secret into {demo_env}")
    for line in demo_env.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env.setdefault(key.strip(), value.strip())
    return env, demo_env


def _wait_http(url: str, what: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _Failed(f"{what} exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise _Failed(f"{what} was not ready within {timeout_s:.0f}s; see {log}")


class _Failed(Exception):
    """Something the stack needs did not come up; the message says what and where to look."""


class _Stop(BaseException):
    """A stop signal arrived (Ctrl-C, SIGTERM, SIGHUP)."""


class Stack:
    def __init__(self, env: dict[str, str], data_dir: Path, kafka_port: int) -> None:
        self.env = env
        self.logs = data_dir / "logs"
        self.kafka_dir = data_dir / "kafka"
        self.kafka_port = kafka_port
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.kafka_started: list[int] = []  # node ids this stack started (and stops)
        self.stopping = False

    # --- signals -------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            raise _Stop()
        # while stopping: a second Ctrl-C hurries the children along instead of abandoning them
        for _, proc in self.children:
            with contextlib.suppress(OSError):
                proc.kill()

    def handle_signals(self) -> None:
        for sig in STOP_SIGNALS:
            # also when the shell that started us in the background handed SIGINT down ignored
            signal.signal(sig, self._on_signal)

    # --- starting ----------------------------------------------------------------------------

    def start_kafka(self) -> None:
        from refstream import localkafka
        from refstream.commands.kafka_access import quiet_clients

        if _port_open(self.kafka_port):
            _say(f"a broker already answers on 127.0.0.1:{self.kafka_port}; using it (it keeps running "
                 "afterwards)")
            return
        _say("starting Kafka (the first run downloads the broker jars with Maven)…")
        quiet_clients()  # start-up probes are expected to fail until the broker listens
        cluster = localkafka.Cluster(self.kafka_dir, port=self.kafka_port)
        try:
            # what start() started is stopped again if it fails or a signal interrupts it
            self.kafka_started = localkafka.start(cluster)
        except localkafka.KafkaError as exc:
            raise _Failed(str(exc)) from None

    def run(self, args: list[str], what: str) -> None:
        result = subprocess.run([REFSTREAM, *args], env=self.env, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise _Failed(f"{what} failed (exit {result.returncode}): {result.stderr.strip()}")

    def start_service(self, name: str, args: list[str], ready_url: str) -> None:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([REFSTREAM, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.children.append((name, proc))
        _say(f"starting {name} (log: {log})")
        _wait_http(ready_url, name, proc, 120, log)

    def start_demo(self, args: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([REFSTREAM, "demo", *args], env=self.env, stdin=subprocess.DEVNULL)
        self.children.append(("demo", proc))
        return proc

    # --- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop what this stack started, last started first; never raises."""
        self.stopping = True
        for name, proc in reversed(self.children):
            if proc.poll() is not None:
                continue
            _say(f"stopping {name}")
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.kafka_started:
            from refstream import localkafka

            _say("stopping Kafka")
            localkafka.down(self.kafka_dir, only=self.kafka_started)
            self.kafka_started = []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refstream.devstack", description=__doc__.splitlines()[0])
    parser.add_argument("--kafka-port", type=int, default=9092)
    parser.add_argument("--ingest-port", type=int, default=8080)
    parser.add_argument("--web-port", type=int, default=6066)
    parser.add_argument("--no-wait", action="store_true",
                        help="Stop everything after the demo (which then does not wait for the review).")
    args = parser.parse_args(argv)

    data_dir = Path(os.environ.get("REFSTREAM_DATA_DIR", ".data")).resolve()
    env, demo_env = _demo_env(data_dir)
    env["REFSTREAM_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{args.kafka_port}"
    stack = Stack(env, data_dir, args.kafka_port)
    stack.logs.mkdir(parents=True, exist_ok=True)
    stack.handle_signals()
    ingest_url = f"http://127.0.0.1:{args.ingest_port}"
    worker_url = f"http://127.0.0.1:{args.web_port}"
    try:
        stack.start_kafka()
        stack.run(["topics", "create", "--env", env["REFSTREAM_ENV"]], "`refstream topics create`")
        stack.start_service("ingest", ["ingest", "--port", str(args.ingest_port)], f"{ingest_url}/readyz")
        stack.start_service("worker", ["worker", "--web-port", str(args.web_port)], f"{worker_url}/readyz")
        _say(f"up: ingest {ingest_url}/webhooks/stripe/sandbox, worker {worker_url}/referrers/<ucc>"
             + ("." if args.no_wait else "; Ctrl-C stops everything."))
        if demo_env is not None and not args.no_wait:
            _say(f"by hand, in another shell: set -a; . {_shown(demo_env)}; set +a   (the demo's signing "
                 f"secret), then {_shown(Path(REFSTREAM))} …")
        demo = stack.start_demo(["--ingest-url", ingest_url, "--worker-url", worker_url]
                                + ([] if args.no_wait else ["--wait-for-review"]))
        services = [(name, proc) for name, proc in stack.children if proc is not demo]
        while True:
            code = demo.poll()
            if code is not None and code not in (0, CLOSED_PIPE_EXIT):
                _say(f"`refstream demo` failed (exit {code}); the logs are in {stack.logs}")
                return 1
            if code is not None and args.no_wait:
                return 0
            dead = [name for name, proc in services if proc.poll() is not None]
            if dead:
                _say(f"{', '.join(dead)} stopped unexpectedly; see {stack.logs}")
                return 1
            time.sleep(0.5)
    except _Stop:
        _say("stopping everything this started…")
        return 0
    except KeyboardInterrupt:  # raised by a child-handling library before our handler ran
        return 0
    except _Failed as exc:
        _say(str(exc))
        return 1
    finally:
        stack.stop()
        _say("stopped.")


if __name__ == "__main__":
    raise SystemExit(main())
