"""`router train|eval` input: a team's own labelled traffic (prompt, weak_ok[, strong_ok, source])."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli.router_data import read_rows
from pipeline.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_own_traffic_rows(tmp_path: Path) -> None:
    f = write(tmp_path / "support_calls.csv",
              "prompt,weak_ok,strong_ok,source\n"
              "reset my password,True,,\n"
              "refund rules for EU orders,false,true,billing\n"
              "\"a, quoted one\",1,0,\n")
    rows = read_rows([f])
    assert [(r.source, r.prompt, r.weak_ok, r.strong_ok) for r in rows] == [
        ("support_calls", "reset my password", True, True),  # strong_ok unknown: assumed
        ("billing", "refund rules for EU orders", False, True),
        ("support_calls", "a, quoted one", True, False)]


def test_own_traffic_without_strong_column_assumes_strong(tmp_path: Path) -> None:
    f = write(tmp_path / "t.csv", "prompt,weak_ok\nhi,no\n")
    assert [(r.weak_ok, r.strong_ok) for r in read_rows([f])] == [(False, True)]


def test_own_traffic_refuses_a_label_that_is_not_a_boolean(tmp_path: Path) -> None:
    f = write(tmp_path / "t.csv", "prompt,weak_ok\nhi,maybe\n")
    with pytest.raises(ConfigError, match="t.csv:2: column 'weak_ok'"):
        read_rows([f])


def test_the_routellm_shape_still_needs_its_model_columns(tmp_path: Path) -> None:
    f = write(tmp_path / "mmlu_x.csv", "prompt,some_model\nhi,True\n")
    with pytest.raises(ConfigError, match="no weak column"):
        read_rows([f])
