"""How the short-lived commands reach Kafka: quiet clients and one message per failure.

aiokafka logs each failed connection attempt (`Unable connect to "127.0.0.1:9092"`), and with
no logging configured Python prints those lines raw, before the command's own message. Here
they are kept instead: the last connection error tells the one message what the broker did
(refused the connection, did not answer within the timeout, a host name that does not
resolve), and the command says what it was doing when that happened.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

import click

# how long a command waits for the broker: to connect, and for each request (read as
# `kafka_access.TIMEOUT_S` where used, so a test can shorten it)
TIMEOUT_S = 10.0

FIX = "Start the broker (`refstream kafka up --detach`) or point REFSTREAM_KAFKA_BOOTSTRAP at one that runs."


class _LastConnectionError(logging.Handler):
    """Swallows aiokafka's log lines, keeping the last exception one of them carried."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, BaseException):
                self.error = arg


_last = _LastConnectionError()


def quiet_clients() -> None:
    """Keep aiokafka's own log lines off the terminal (safe to call more than once)."""
    log = logging.getLogger("aiokafka")
    if _last not in log.handlers:
        log.addHandler(_last)
    log.propagate = False
    log.setLevel(logging.WARNING)  # the connection errors are ERROR records: seen, not printed
    _last.error = None


def loud_clients() -> None:
    """Undo `quiet_clients` (a long-running service logs aiokafka's lines its own way)."""
    log = logging.getLogger("aiokafka")
    log.removeHandler(_last)
    log.propagate = True
    log.setLevel(logging.NOTSET)


def _connect(bootstrap: str) -> BaseException | None:
    """What a plain TCP connection to the first bootstrap address meets (None: it connects),
    for when the client's own log did not say."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=TIMEOUT_S):
            return None
    except (OSError, ValueError) as exc:
        return exc


class Unconfirmed(Exception):
    """A record was handed to the broker, which did not confirm it: it may or may not be stored."""


class NotWritten(Exception):
    """The broker could not be reached, or refused the record: nothing was written."""


class Stalled(Exception):
    """The broker answered, but the records up to the end offsets did not all arrive in time."""

    def __init__(self, topics: list[str], seconds: float) -> None:
        super().__init__(f"could not read {', '.join(topics)} to the end within {seconds:g} s")
        self.topics = topics
        self.seconds = seconds


def why(exc: BaseException, bootstrap: str) -> str:
    """What the broker did, to follow "Kafka at HOST:PORT"."""
    from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    if isinstance(exc, (NotWritten, Unconfirmed)) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, Stalled):
        return f"answered, but did not deliver {', '.join(exc.topics)} to the end within {exc.seconds:g} s"
    cause: BaseException | None = exc
    if isinstance(exc, KafkaConnectionError):
        # "Unable to bootstrap" says nothing of why: the client's log line does, or a try of our own
        cause = _last.error if _last.error is not None else _connect(bootstrap)
        if cause is None:
            return f"accepted the connection but did not answer within {TIMEOUT_S:g} s"
    if isinstance(cause, socket.gaierror):
        return "names a host that does not resolve"
    if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
        return "refused the connection (nothing listens on that port)"
    if isinstance(cause, (TimeoutError, asyncio.TimeoutError, KafkaTimeoutError)):
        return f"did not answer within {TIMEOUT_S:g} s"
    if isinstance(cause, OSError):
        return f"could not be reached ({cause.strerror or cause})"
    if isinstance(exc, KafkaConnectionError):
        return "could not be reached"
    if isinstance(exc, KafkaError):
        return f"answered with an error ({type(exc).__name__})"
    return f"failed ({type(exc).__name__}: {exc})"


def failure(bootstrap: str, problem: str, exc: BaseException, *, after: str = "",
            fix: str = FIX) -> click.ClickException:
    """`problem`: what did not happen, e.g. "Cannot read the review queue"; `after`: what
    the person should know about the state it left, before the fix."""
    return click.ClickException(
        f"{problem}: Kafka at {bootstrap} {why(exc, bootstrap)}. {after + ' ' if after else ''}{fix}"
    )


async def _probe(bootstrap: str) -> None:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(TIMEOUT_S * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), TIMEOUT_S)
    finally:
        await client.close()


def require(bootstrap: str, problem: str, **kwargs: Any) -> None:
    """Fail with one message, before anything is written, unless the broker answers a
    metadata request."""
    quiet_clients()
    try:
        asyncio.run(_probe(bootstrap))
    except Exception as exc:
        raise failure(bootstrap, problem, exc, **kwargs) from None
