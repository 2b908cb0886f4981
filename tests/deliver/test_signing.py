"""What a receiver relies on without a broker: the signature is Stripe's scheme, so the example
receiver's code (Stripe's own verifier) checks it, during a rotation too; the body of a
record is always the same bytes; retries back off; and `refstream deliver` refuses a
configuration it cannot use, naming the variable and the fix (docs/cli.md#deliver)."""

from __future__ import annotations

import time

import orjson
import pytest
import stripe
from click.testing import CliRunner

from examples.receiver import verified
from projections.deliver import NOTIFICATION, PAYOUT, backoff, body_of, redacted, sign
from refstream.cli import main
from schemas import commands

NEW, OLD = "new-secret-0123456789abcdef", "old-secret-0123456789abcdef"
RECORD = commands.encode(commands.NotificationCommand("n1", commands.REWARD_EARNED, "ucc_X", "user:u1", "usd",
                                                      3500, "evt_1", 1768006800))


def test_the_example_receiver_verifies_a_delivery_with_either_secret_of_a_rotation() -> None:
    record_id, body = body_of(NOTIFICATION, "sandbox", RECORD)
    header = sign(body, (NEW, OLD), int(time.time()))
    assert header.count("v1=") == 2 and header.startswith("t=")
    for secret in (NEW, OLD):
        doc = verified(body, header, secret)
        assert doc["id"] == record_id == "n1"
        assert doc["data"] == orjson.loads(RECORD)
        assert doc["type"] == "notification" and doc["env"] == "sandbox"


@pytest.mark.parametrize("why", ["another secret", "an altered body", "an old signature"])
def test_the_example_receiver_refuses_what_refstream_did_not_sign_just_now(why: str) -> None:
    _, body = body_of(NOTIFICATION, "sandbox", RECORD)
    at = int(time.time()) - (3600 if why == "an old signature" else 0)
    header = sign(body, (NEW,), at)
    secret = "some-other-secret-0123456789" if why == "another secret" else NEW
    sent = body.replace(b"3500", b"9500") if why == "an altered body" else body
    with pytest.raises(stripe.SignatureVerificationError):
        verified(sent, header, secret)


def test_a_record_always_has_the_same_body_and_its_own_id() -> None:
    payout = commands.encode(commands.PayoutCommand("p1", "run-1", "ucc_X", "usd", 2750, 1, ("e1",), 3))
    assert body_of(PAYOUT, "production", payout) == body_of(PAYOUT, "production", payout)
    assert body_of(PAYOUT, "production", payout)[0] == "p1"
    with pytest.raises(ValueError, match="no payout_id"):
        body_of(PAYOUT, "production", RECORD)


def test_retries_back_off_exponentially_with_jitter_up_to_the_maximum() -> None:
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (13, 3600.0), (500, 3600.0)):
        assert backoff(attempt, 1.0, 3600.0, rng=lambda: 0.0) == ceiling / 2
        assert backoff(attempt, 1.0, 3600.0, rng=lambda: 1.0) == ceiling


def test_the_endpoint_is_shown_without_credentials_or_query() -> None:
    assert redacted("https://user:pw@hooks.example.com:8443/in?token=x") == "https://hooks.example.com:8443/in"


# --- refusals: each names the variable or option and the fix ----------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("REFSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("REFSTREAM_DELIVERY_URL", "https://hooks.example.com/refstream")
    monkeypatch.setenv("REFSTREAM_DELIVERY_SECRET", NEW)
    return monkeypatch


def test_deliver_without_an_endpoint_says_which_variable_to_set(env: pytest.MonkeyPatch) -> None:
    env.delenv("REFSTREAM_DELIVERY_URL")
    result = CliRunner().invoke(main, ["deliver"])
    assert result.exit_code == 1
    assert "REFSTREAM_DELIVERY_URL is not set" in result.output and "https://" in result.output


def test_deliver_refuses_an_endpoint_that_is_not_an_http_url(env: pytest.MonkeyPatch) -> None:
    env.setenv("REFSTREAM_DELIVERY_URL", "ftp://files.example.com/x")
    result = CliRunner().invoke(main, ["deliver"])
    assert result.exit_code == 1 and "is not an http(s) URL with a host" in result.output


def test_deliver_without_a_secret_says_how_to_make_one(env: pytest.MonkeyPatch) -> None:
    env.delenv("REFSTREAM_DELIVERY_SECRET")
    result = CliRunner().invoke(main, ["deliver"])
    assert result.exit_code == 1
    assert "REFSTREAM_DELIVERY_SECRET is not set" in result.output and "secrets.token_hex" in result.output


def test_deliver_refuses_a_weak_secret(env: pytest.MonkeyPatch) -> None:
    env.setenv("REFSTREAM_DELIVERY_SECRET", f"{NEW},short")
    result = CliRunner().invoke(main, ["deliver"])
    assert result.exit_code == 1 and "secret 2 of REFSTREAM_DELIVERY_SECRET is too weak" in result.output


def test_deliver_refuses_a_duration_it_cannot_read(env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["deliver", "--max-age", "three days"])
    assert result.exit_code == 2 and "'three days' is not a duration" in result.output


def test_deliver_without_a_broker_says_what_to_start(env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["deliver"])
    assert result.exit_code == 1
    assert "The deliver service cannot start: Kafka at 127.0.0.1:1" in result.output
    assert "refstream kafka up" in result.output


def test_deliver_status_without_a_broker_says_what_to_start(env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["deliver", "status"])
    assert result.exit_code == 1 and "Cannot read the delivery status: Kafka at 127.0.0.1:1" in result.output
