"""`refstream replay` and the fraud signals (docs/rules.md#fraud-signals): with the worker's
REFSTREAM_IDENTITY_KEY it withholds what the suspected_fraud cases hold, with `--jobs 2` byte
for byte as with `--jobs 1`; without the key it compares no e-mail address or card."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from refstream.cli import main
from schemas import control
from tests.replay.kafkalog import Stored
from tests.replay.scenario import PROPOSED_RULES, _stripe, write_export
from tests.unit.builders import charge, customer, ts

T = ts("2026-01-10")
DAY = 86_400
KEY = "replay-identity-key-0123456789"


def log(path: Path) -> None:
    """ucc_X's own customer, linked; a referral of ucc_X with its mailbox; two referrals of
    ucc_Y paying with one card; an honest referral of ucc_Y."""
    bodies = [
        customer("cus_OWN", T - 90 * DAY, email="ana@example.com"),
        customer("cus_B", T, ucc="ucc_X", user="u_b", email="Ana+2@example.com"),
        customer("cus_C", T + 3600, ucc="ucc_Y", user="u_c", email="c@example.com"),
        charge("ch_C", "cus_C", T + 4000, amount=900, card="fp_1"),
        customer("cus_D", T + 7200, ucc="ucc_Y", user="u_d", email="d@example.com"),
        charge("ch_D", "cus_D", T + 8000, amount=900, card="fp_1"),
        customer("cus_E", T + 9000, ucc="ucc_Y", user="u_e", email="e@example.com"),
    ]
    stored = [_stripe(b) for b in bodies]
    link = control.ReferrerLink("ucc_X", "cus_OWN", T + 600, "ops", "own account")
    stored.append(Stored(control.encode(link), (T + 600) * 1000, b"cli", control=True))
    write_export(path, stored)


def payable(path: Path, rules: Path, jobs: int, key: str) -> tuple[bytes, dict[str, int]]:
    env = {"REFSTREAM_IDENTITY_KEY": key}
    result = CliRunner(env=env).invoke(main, ["replay", "--no-progress", "--rules", str(rules), "--source",
                                              str(path), "--format", "json", "--as-of", str(T + 40 * DAY),
                                              "--jobs", str(jobs)])
    assert result.exit_code == 0, result.output
    return result.stdout_bytes, {r["ucc"]: r["payable"] for r in orjson.loads(result.stdout_bytes)["rows"]}


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    path, rules = tmp_path / "log.jsonl", tmp_path / "rules.toml"
    log(path)
    rules.write_text(PROPOSED_RULES)
    return path, rules


def test_replay_with_the_key_withholds_the_suspect_referrals_in_one_process_or_three(
    files: tuple[Path, Path],
) -> None:
    one, figures = payable(*files, 1, KEY)
    assert figures == {"ucc_X": 0, "ucc_Y": 500}  # B (self-referral), C and D (one card) held
    assert payable(*files, 3, KEY)[0] == one


def test_replay_without_the_key_compares_nothing(files: tuple[Path, Path]) -> None:
    assert payable(*files, 1, "")[1] == {"ucc_X": 500, "ucc_Y": 1500}
