"""Configuration from the environment (docs/cli.md#configuration); a `.env` file may set the same names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ENVIRONMENTS = ("sandbox", "production")


class SettingsError(ValueError):
    """A configuration mistake, worded for the operator: the problem and the fix."""


def _load_dotenv() -> None:
    # Real environment variables win over the file, as with most twelve-factor tools.
    from dotenv import load_dotenv

    load_dotenv(dotenv_path=Path.cwd() / ".env", override=False)


def _secrets(name: str) -> tuple[str, ...]:
    raw = os.environ.get(name, "")
    values = tuple(s.strip() for s in raw.split(",") if s.strip())
    for value in values:
        if not value.startswith("whsec_"):
            raise SettingsError(
                f"{name} holds a value that is not a Stripe signing secret (they start with "
                f"'whsec_'). Copy the secret from the webhook endpoint's page in the Stripe "
                f"Dashboard, or from `stripe listen`."
            )
    return values


@dataclass(frozen=True, slots=True)
class Settings:
    env: str = "sandbox"
    kafka_bootstrap: str = "127.0.0.1:9092"
    # newest first; several during a rotation
    stripe_secrets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rules_path: Path | None = None
    data_dir: Path = Path(".data")
    # ingest limits
    max_body_bytes: int = 512 * 1024
    signature_tolerance_s: int = 300
    produce_timeout_s: float = 5.0
    # the key of the identity tokens the fraud signals compare (docs/rules.md#fraud-signals);
    # None: unset, and the signals that need tokens are off
    identity_key: bytes | None = None

    @classmethod
    def from_env(cls, *, dotenv: bool = True) -> Settings:
        if dotenv:
            _load_dotenv()
        env = os.environ.get("REFSTREAM_ENV", "sandbox").strip() or "sandbox"
        if env not in ENVIRONMENTS:
            raise SettingsError(
                f"REFSTREAM_ENV={env!r} is not an environment refstream knows. "
                f"Set it to 'sandbox' or 'production'."
            )
        rules = os.environ.get("REFSTREAM_RULES", "").strip()
        return cls(
            env=env,
            kafka_bootstrap=os.environ.get("REFSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092").strip()
            or "127.0.0.1:9092",
            stripe_secrets={
                "sandbox": _secrets("REFSTREAM_STRIPE_SECRETS_SANDBOX"),
                "production": _secrets("REFSTREAM_STRIPE_SECRETS_PRODUCTION"),
            },
            rules_path=Path(rules) if rules else None,
            data_dir=Path(os.environ.get("REFSTREAM_DATA_DIR", ".data").strip() or ".data"),
            max_body_bytes=_int_env("REFSTREAM_MAX_BODY_BYTES", 512 * 1024),
            signature_tolerance_s=_int_env("REFSTREAM_SIGNATURE_TOLERANCE_S", 300),
            produce_timeout_s=float(_int_env("REFSTREAM_PRODUCE_TIMEOUT_MS", 5000)) / 1000.0,
            identity_key=identity_key_from_env(),
        )


IDENTITY_KEY_MIN = 16


def identity_key_from_env(*, dotenv: bool = False) -> bytes | None:
    """REFSTREAM_IDENTITY_KEY as bytes (from `.env` too with `dotenv`); None when unset. A key
    too short to keep tokens from being guessed is refused, naming the fix."""
    if dotenv:
        _load_dotenv()
    raw = os.environ.get("REFSTREAM_IDENTITY_KEY", "").strip()
    if not raw:
        return None
    if len(raw) < IDENTITY_KEY_MIN:
        raise SettingsError(
            f"REFSTREAM_IDENTITY_KEY is {len(raw)} characters long; use at least {IDENTITY_KEY_MIN} "
            "random ones, e.g. the output of `openssl rand -hex 32`, and give the worker and "
            "`refstream replay` the same key (docs/rules.md#fraud-signals)."
        )
    return raw.encode()


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number. Set it to e.g. {default}.") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r} must be positive. Set it to e.g. {default}.")
    return value
