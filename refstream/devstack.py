"""`make demo`: broker, topics, ingest and worker on 127.0.0.1, then `refstream demo`.

No `.env` needed: a sandbox signing secret is generated once into `.data/demo.env` (the
real environment and an existing `.env` still win). Everything this starts is stopped on
Ctrl-C (a broker that was already running is left alone).

    python -m refstream.devstack [--kafka-port 9092] [--ingest-port 8080] [--web-port 6066]
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
REFSTREAM = str(Path(sys.executable).parent / "refstream")


def _say(text: str) -> None:
    print(f"[devstack] {text}", flush=True)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _demo_env(data_dir: Path) -> dict[str, str]:
    """The environment for the children: ours, plus a generated sandbox secret if none."""
    env = dict(os.environ)
    env.setdefault("REFSTREAM_ENV", "sandbox")
    env.setdefault("REFSTREAM_DATA_DIR", str(data_dir))
    env.setdefault("REFSTREAM_RULES", str(ROOT / "examples" / "rules.toml"))
    dotenv = Path.cwd() / ".env"
    if "REFSTREAM_STRIPE_SECRETS_SANDBOX" in env or (
        dotenv.exists() and "REFSTREAM_STRIPE_SECRETS_SANDBOX" in dotenv.read_text()
    ):
        return env
    demo_env = data_dir / "demo.env"
    if not demo_env.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        demo_env.write_text(
            "# written by `make demo`: a throwaway signing secret for the local sandbox\n"
            f"REFSTREAM_STRIPE_SECRETS_SANDBOX=whsec_demo_{secrets.token_hex(16)}\n"
        )
        demo_env.chmod(0o600)
        _say(f"generated a sandbox signing secret into {demo_env}")
    for line in demo_env.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env.setdefault(key.strip(), value.strip())
    return env


def _wait_http(url: str, what: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"[devstack] {what} exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"[devstack] {what} was not ready within {timeout_s:.0f}s; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refstream.devstack", description=__doc__.splitlines()[0])
    parser.add_argument("--kafka-port", type=int, default=9092)
    parser.add_argument("--ingest-port", type=int, default=8080)
    parser.add_argument("--web-port", type=int, default=6066)
    parser.add_argument("--no-wait", action="store_true", help="Stop everything after the demo.")
    args = parser.parse_args(argv)

    data_dir = Path(os.environ.get("REFSTREAM_DATA_DIR", ".data")).resolve()
    env = _demo_env(data_dir)
    env["REFSTREAM_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{args.kafka_port}"
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kafka_dir = data_dir / "kafka"
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    started_kafka = False

    def stop_all() -> None:
        for name, proc in reversed(children):
            if proc.poll() is None:
                _say(f"stopping {name}")
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if started_kafka:
            _say("stopping Kafka")
            subprocess.run([REFSTREAM, "kafka", "down", "--data-dir", str(kafka_dir)], env=env, check=False)

    # Ctrl-C while starting: stop what is up, then leave
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # a shell that starts us in the background hands SIGINT down ignored; Ctrl-C must still stop
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if _port_open(args.kafka_port):
            _say(f"a broker already answers on 127.0.0.1:{args.kafka_port}; using it")
        else:
            _say("starting Kafka (the first run downloads the broker jars with Maven)…")
            subprocess.run([REFSTREAM, "kafka", "up", "--detach", "--port", str(args.kafka_port),
                            "--data-dir", str(kafka_dir)], env=env, check=True)
            started_kafka = True
        subprocess.run([REFSTREAM, "topics", "create", "--env", env["REFSTREAM_ENV"]], env=env, check=True)
        for name, cmd, url in (
            ("ingest", ["ingest", "--port", str(args.ingest_port)],
             f"http://127.0.0.1:{args.ingest_port}/readyz"),
            ("worker", ["worker", "--web-port", str(args.web_port)],
             f"http://127.0.0.1:{args.web_port}/readyz"),
        ):
            log = logs / f"{name}.log"
            with log.open("ab") as out:
                proc = subprocess.Popen([REFSTREAM, *cmd], env=env, stdout=out, stderr=subprocess.STDOUT)
            children.append((name, proc))
            _say(f"starting {name} (log: {log})")
            _wait_http(url, name, proc, 120, log)
        subprocess.run([REFSTREAM, "demo", "--ingest-url", f"http://127.0.0.1:{args.ingest_port}",
                        "--worker-url", f"http://127.0.0.1:{args.web_port}"], env=env, check=True)
        if args.no_wait:
            return 0
        _say(f"running: ingest http://127.0.0.1:{args.ingest_port}/webhooks/stripe/sandbox, worker "
             f"http://127.0.0.1:{args.web_port}/referrers/<ucc>. Ctrl-C stops everything.")
        while all(proc.poll() is None for _, proc in children):
            time.sleep(0.5)
        dead = [name for name, proc in children if proc.poll() is not None]
        _say(f"{', '.join(dead)} stopped unexpectedly; see {logs}")
        return 1
    except KeyboardInterrupt:
        print()
        return 0
    except subprocess.CalledProcessError as exc:
        _say(f"`{' '.join(map(str, exc.cmd[1:]))}` failed (exit {exc.returncode})")
        return 1
    finally:
        stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
