"""Slow and stuck peers: clients that stall, and a broker frozen with SIGSTOP.

ingest times stalled clients out, keeps serving everyone else, and answers 503 within its
bound when the brokers stop answering.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from refstream import localkafka
from refstream.commands.topics import create_topics
from schemas.topics import Topics
from tests.conftest import FIXTURES, sign
from tests.faults.conftest import IngestServer, Reliability, ingest_server, raw_request
from tests.ingest.helpers import SANDBOX_SECRET, body_of, end_offsets, envelope, make_topics, settings

CUSTOMER = json.loads((FIXTURES / "current" / "customer.json").read_text())
IDLE_S = 2.0
BODY_S = 2.0


def _signed_request(path: str, body: bytes, *, close: bool = True) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {sign(body, SANDBOX_SECRET)}\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode() + body


def _deliver(server: IngestServer, n: int) -> tuple[int, float]:
    body = body_of(envelope(CUSTOMER, "customer.updated", livemode=False, event_id=f"evt_slow{n:05d}"))
    started = time.monotonic()
    status, _ = raw_request(server.port, _signed_request("/webhooks/stripe/sandbox", body))
    return status, time.monotonic() - started


def _closed_within(sock: socket.socket, timeout_s: float) -> tuple[bool, bytes]:
    """Wait for the server to close the connection; return (closed, what it sent before)."""
    sock.settimeout(timeout_s)
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True, got
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


def test_clients_that_stall_are_timed_out_while_others_are_served(
    bootstrap: str, topic_prefix: str, reliability: Reliability
) -> None:
    asyncio.run(make_topics(bootstrap, topic_prefix, envs=["sandbox"]))
    topic = Topics("sandbox", topic_prefix).stripe_events
    body = body_of(envelope(CUSTOMER, "customer.updated", livemode=False, event_id="evt_dribble"))
    request = _signed_request("/webhooks/stripe/sandbox", body)
    header_end = request.index(b"\r\n\r\n") + 4
    served: list[tuple[int, float]] = []
    with ingest_server(settings(bootstrap), topic_prefix, keepalive_timeout=IDLE_S,
                       body_timeout_s=BODY_S) as server:
        # 1. headers, then nothing: many such connections, as a slowloris would open
        stalled_headers = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(request[: header_end // 2])
            stalled_headers.append(s)
        # 2. a body sent byte by byte, slower than the body timeout allows
        dribble = socket.create_connection(("127.0.0.1", server.port))
        dribble.sendall(request[:header_end])
        dribble_started = time.monotonic()
        dribble.settimeout(0.2)
        answer = b""
        for byte in body:
            try:
                dribble.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            # everyone else is served meanwhile
            if len(served) < 10:
                served.append(_deliver(server, len(served)))
            try:
                answer += dribble.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
            if time.monotonic() - dribble_started > BODY_S + 5:
                break
        dribble_elapsed = time.monotonic() - dribble_started
        dribble.close()
        closed = [_closed_within(s, IDLE_S + 3)[0] for s in stalled_headers]
        for s in stalled_headers:
            s.close()
        # still responsive after all that
        after = [_deliver(server, 100 + i) for i in range(3)]

    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"body_timeout"' in answer
    assert dribble_elapsed < BODY_S + 2
    assert all(closed), f"{closed.count(False)} stalled connections were left open"
    assert [status for status, _ in served + after] == [200] * len(served + after)
    assert max(seconds for _, seconds in served + after) < 2.0
    stored = asyncio.run(end_offsets(bootstrap, topic))
    assert sum(stored.values()) == len(served) + len(after)  # the dribbled event was not written
    reliability.record(
        "test_clients_that_stall",
        what=f"20 connections stall inside their headers; one body sent byte by byte "
             f"(idle timeout {IDLE_S:g} s, body timeout {BODY_S:g} s)",
        sent=len(served) + len(after) + 21, acknowledged=len(served) + len(after), refused=1,
        lost=0, duplicated=0, server_errors=0,
        notes=f"stalled headers closed by ingest; dribbled body answered 408 after {dribble_elapsed:.1f} s; "
              f"slowest other delivery {max(s for _, s in served + after) * 1000:.0f} ms",
    )


def _signal_all(cluster: localkafka.Cluster, sig: signal.Signals) -> None:
    for node in cluster.nodes:
        pid = int(node.pid_file.read_text())
        os.kill(pid, sig)


def test_a_broker_frozen_with_sigstop_gets_503_within_the_bound(
    cluster3: localkafka.Cluster, topic_prefix: str, reliability: Reliability
) -> None:
    bound = 2.0
    asyncio.run(create_topics(cluster3.bootstrap, ["sandbox"], prefix=topic_prefix, partitions=3))
    with ingest_server(settings(cluster3.bootstrap, produce_timeout_s=bound), topic_prefix) as server:
        # first a healthy cluster: the topic is new and the cluster may just have lost and
        # regained brokers in another test, so wait until a delivery is acknowledged
        warmup_deadline = time.monotonic() + 60
        warmup = 1
        while _deliver(server, 0)[0] != 200:
            assert time.monotonic() < warmup_deadline, "the cluster did not take a write within 60 s"
            warmup += 1
        _signal_all(cluster3, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(8) as pool:
                frozen = list(pool.map(lambda n: _deliver(server, n), range(1, 9)))
        finally:
            _signal_all(cluster3, signal.SIGCONT)
        deadline = time.monotonic() + 60
        n = 100
        while True:
            status, seconds = _deliver(server, n)
            assert status in (200, 503) and seconds < bound + 1.0
            if status == 200:
                break
            assert time.monotonic() < deadline, "no 200 within 60 s of SIGCONT"
            n += 1
    assert [status for status, _ in frozen] == [503] * len(frozen)
    slowest = max(seconds for _, seconds in frozen)
    assert slowest < bound + 1.0
    reliability.record(
        "test_broker_frozen_with_sigstop",
        what=f"every broker of the 3-node cluster SIGSTOPped, then SIGCONT (bound {bound:g} s)",
        sent=warmup + len(frozen) + (n - 99), acknowledged=2, refused=warmup - 1 + len(frozen) + (n - 100),
        lost=0, duplicated=0, server_errors=0,
        notes=f"frozen: all answered 503, slowest {slowest:.2f} s; 200 again {n - 100} retries after SIGCONT",
    )
