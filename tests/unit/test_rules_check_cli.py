"""`refstream rules check FILE`: ok with a summary, or the first mistake and exit 1."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from refstream.cli import main
from tests.unit.conftest import EXAMPLE_RULES


def test_a_good_file_is_summarised() -> None:
    result = CliRunner().invoke(main, ["rules", "check", str(EXAMPLE_RULES)])
    assert result.exit_code == 0
    assert result.output.startswith("ok: revision 3, 25% for 12 months")
    assert "currencies: usd" in result.output


def test_a_mistake_names_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('[campaign]\nrevision = 3\ncurrency = "usd"\nreward_percent = 250\n')
    result = CliRunner().invoke(main, ["rules", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:4 [campaign.reward_percent]" in result.output
    assert "between 0 and 100" in result.output
    assert "docs/rules.md#the-rules-file" in result.output  # where every key is explained


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["rules", "check", str(tmp_path / "nope.toml")])
    assert result.exit_code == 1
    assert "cannot read the rules file" in result.output
    assert "docs/rules.md" not in result.output  # the path is the problem, not the format
