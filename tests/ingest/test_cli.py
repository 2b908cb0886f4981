"""`refstream ingest` as an operator runs it: a process configured from the environment."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from schemas.topics import Topics
from tests.conftest import FIXTURES, sign
from tests.ingest.helpers import SANDBOX_SECRET, body_of, envelope, make_topics, read_topic

REFSTREAM = str(Path(sys.executable).parent / "refstream")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ingest_env(bootstrap: str) -> dict[str, str]:
    env = {**os.environ, "REFSTREAM_KAFKA_BOOTSTRAP": bootstrap,
           "REFSTREAM_STRIPE_SECRETS_SANDBOX": SANDBOX_SECRET, "REFSTREAM_STRIPE_SECRETS_PRODUCTION": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # ingest makes its own for --workers
    return env


def _start_ingest(
    bootstrap: str, topic_prefix: str, port: int, tmp_path: Path, *options: str,
) -> tuple[subprocess.Popen[bytes], Path]:
    """`refstream ingest` as an operator starts it; its output goes to the returned log file."""
    log_path = tmp_path / "ingest.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([REFSTREAM, "ingest", "--port", str(port), "--topic-prefix", topic_prefix,
                                 *options], env=_ingest_env(bootstrap), cwd=tmp_path, stdout=log, stderr=log)
    return proc, log_path


def _post(url: str, body: bytes, signature: str) -> tuple[int, dict[str, object]]:
    headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_refstream_ingest_serves_webhooks_and_logs_one_json_line_per_request(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    await make_topics(bootstrap, topic_prefix, envs=["sandbox"])
    port = _free_port()
    proc, log_path = _start_ingest(bootstrap, topic_prefix, port, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "ingest did not become ready in 30 s"
                time.sleep(0.2)
        customer = json.loads((FIXTURES / "current" / "customer.json").read_text())
        body = body_of(envelope(customer, "customer.created", livemode=False, event_id="evt_cli"))
        url = f"http://127.0.0.1:{port}/webhooks/stripe/sandbox"
        assert _post(url, body, sign(body, SANDBOX_SECRET)) == (200, {"received": True, "stored": True})
        status, doc = _post(url, body, sign(body, "whsec_not_ours"))
        assert status == 400 and doc["error"]["code"] == "signature_mismatch"  # type: ignore[index]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    records = await read_topic(bootstrap, Topics("sandbox", topic_prefix).stripe_events)
    assert [r.value for r in records] == [body]

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    webhooks = [line for line in lines if line["msg"] == "webhook"]
    assert [(w["status"], w["outcome"], w["event_id"]) for w in webhooks] == [
        (200, "written", "evt_cli"), (400, "signature_mismatch", None)]
    assert all({"ts", "level", "latency_ms", "event_type"} <= set(w) for w in webhooks)
    text = log_path.read_text()
    assert SANDBOX_SECRET not in text and "whsec_not_ours" not in text
    assert customer["invoice_prefix"] not in text  # nothing from the body


def test_refstream_ingest_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    env = {**os.environ, "REFSTREAM_STRIPE_SECRETS_SANDBOX": "", "REFSTREAM_STRIPE_SECRETS_PRODUCTION": ""}
    result = subprocess.run([REFSTREAM, "ingest", "--port", str(_free_port())], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "REFSTREAM_STRIPE_SECRETS_SANDBOX" in result.stderr


def test_refstream_ingest_names_a_secret_that_is_not_one(tmp_path: Path) -> None:
    env = {**os.environ, "REFSTREAM_STRIPE_SECRETS_SANDBOX": "sk_test_oops"}
    result = subprocess.run([REFSTREAM, "ingest", "--port", str(_free_port())], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "whsec_" in result.stderr and "sk_test_oops" not in result.stderr


async def test_refstream_ingest_workers_share_the_port_and_their_metrics(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    await make_topics(bootstrap, topic_prefix, envs=["sandbox"])
    port = _free_port()
    proc, log_path = _start_ingest(bootstrap, topic_prefix, port, tmp_path, "--workers", "2")
    env = _ingest_env(bootstrap)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        workers: list[str] = []
        while len(workers) < 2 or not all(_ready(base) for _ in range(4)):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the workers did not become ready in 60 s"
            time.sleep(0.3)
            workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        customer = json.loads((FIXTURES / "current" / "customer.json").read_text())
        bodies = [body_of(envelope(customer, "customer.updated", livemode=False, event_id=f"evt_w{i}"))
                  for i in range(20)]
        for body in bodies:  # a connection each: the kernel spreads them over both workers
            assert _post(f"{base}/webhooks/stripe/sandbox", body, sign(body, SANDBOX_SECRET))[0] == 200
        # whichever worker answers the scrape, it counts the requests of both
        written = 'refstream_ingest_requests_total{env="sandbox",outcome="written",status="200"} 20.0'
        for _ in range(4):
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            assert written in text

        # a second ingest cannot quietly join the port
        second = subprocess.run([REFSTREAM, "ingest", "--port", str(port), "--workers", "2"], env=env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert second.returncode != 0 and "Cannot listen" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a worker outlived ingest"
    records = await read_topic(bootstrap, Topics("sandbox", topic_prefix).stripe_events)
    assert sorted(r.value for r in records) == sorted(bodies)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert len([line for line in lines if line["msg"] == "webhook"]) == 20
    assert len([line for line in lines if line["msg"] == "listening"]) == 2


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False
