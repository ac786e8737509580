from pathlib import Path

from pipeline.core.schemas import DRAFT, expected_files

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_schemas_are_fresh() -> None:
    expected = expected_files()
    assert {"usage_event.schema.json", "priced_usage.schema.json", "dead_letter.schema.json",
            "budget.schema.json", "budget_breach.schema.json",
            "forecast.schema.json"} <= set(expected)
    stale = [n for n, text in expected.items()
             if not (SCHEMAS / n).is_file() or (SCHEMAS / n).read_text("utf-8") != text]
    assert not stale, f"schemas/ is stale for {stale}: run `python -m pipeline.core.schemas`"


def test_schemas_declare_draft_2020_12() -> None:
    for text in expected_files().values():
        assert DRAFT in text
