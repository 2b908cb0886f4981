"""`--compare` on a file or Kafka source folds the compare rules in a child process: the
report is byte-identical to folding both rule sets in one pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from projections.logsource import FileSource, SourceError
from projections.replay import fold
from projections.report import to_csv, to_json
from schemas.rules import parse_rules
from tests.replay.scenario import CURRENT_RULES, PROPOSED_RULES, records, write_export


@pytest.mark.parametrize("as_of", [None, 1_790_000_000])
def test_compare_in_a_child_process_gives_the_one_pass_report(tmp_path: Path, as_of):
    path = tmp_path / "log.jsonl"
    write_export(path, records())
    rules, compare = parse_rules(PROPOSED_RULES, "proposed"), parse_rules(CURRENT_RULES, "current")
    in_child = fold(FileSource(path), rules, compare, as_of=as_of)
    one_pass = fold(list(FileSource(path)), rules, compare, as_of=as_of)
    assert to_json(in_child) == to_json(one_pass)
    assert to_csv(in_child) == to_csv(one_pass)
    assert any(row.delta_net for row in in_child.rows)  # the rules do differ


def test_a_damaged_file_fails_the_compare_fold_with_the_readers_message(tmp_path: Path):
    path = tmp_path / "log.jsonl"
    write_export(path, records())
    lines = path.read_bytes().splitlines()
    lines[3] = lines[3][:20]
    path.write_bytes(b"\n".join(lines) + b"\n")
    rules = parse_rules(CURRENT_RULES, "current")
    with pytest.raises(SourceError, match="line 4"):
        fold(FileSource(path), rules, rules)
