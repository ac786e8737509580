"""The functional core stays pure: no I/O frameworks, no other pipeline room, no clock reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "pipeline" / "core"
FORBIDDEN = ("faust", "mode", "aiokafka", "clickhouse_connect", "chdb", "aiohttp", "pyarrow")
ALLOWED_PIPELINE = ("pipeline.core", "pipeline.errors")
MODULES = sorted(CORE.rglob("*.py"))


def imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_the_core_has_its_modules() -> None:
    names = {p.relative_to(CORE).with_suffix("").as_posix() for p in MODULES}
    assert {"pricing", "catalog", "budgets", "forecast", "validate", "meter"} <= names
    # subpackages are checked too (rglob), not only the top-level modules
    assert {"routing/features", "routing/artifact", "routing/evaluation"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(CORE).as_posix())
def test_core_module_imports_nothing_impure(path: Path) -> None:
    for name in imports(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{path.name} imports {name}"
        if top == "pipeline":
            assert name.startswith(ALLOWED_PIPELINE), f"{path.name} imports {name}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(CORE).as_posix())
def test_core_module_reads_no_clock(path: Path) -> None:
    text = path.read_text("utf-8")
    for call in ("datetime.now(", "datetime.utcnow(", "date.today(", "time.time(",
                 "time.monotonic("):
        assert call not in text, f"{path.name} reads the clock ({call}); pass now in"


def test_the_check_would_catch_an_impure_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from pipeline.store.client import Store\nimport aiokafka\n")
    assert imports(bad) == ["pipeline.store.client", "aiokafka"]
