"""Values from events are printed as text: rich markup in a feature name never crashes
`tokenmeter report` (or any table the CLI prints) and is shown as it is."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.cli.output import print_rows
from pipeline.cli.report import html_report, print_report

HOSTILE = ["[/]", "[bold]", "[link=x]", "[red]x[/red]", "[/bold]"]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no cell wraps, so every value reads whole


def data(tenant: str) -> dict[str, Any]:
    return {
        "tenant_id": tenant, "period": "month", "from": "2026-06-01T00:00:00+00:00",
        "to": "2026-06-17T10:20:30+00:00",
        "total": {"cost": "1.5", "saved_cost": "0", "tokens": 10, "value_units": "1",
                  "events": 3},
        "daily": [["2026-06-01", "1.5"]],
        "models": [[m, "0.5", 1] for m in HOSTILE],
        "features": [[f, "0.5", 1] for f in HOSTILE],
        "budgets": [[b, "cost", "1", "10", "10", None, None, None] for b in HOSTILE],
    }


@pytest.mark.parametrize("tenant", HOSTILE)
def test_print_report_shows_markup_from_data_as_text(
        tenant: str, capsys: pytest.CaptureFixture[str]) -> None:
    print_report(data(tenant))
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(tenant + "  month to date")
    for value in HOSTILE:
        assert out.count(value) >= 3 + (value == tenant)  # models, features, budgets


def test_html_report_escapes_the_same_values() -> None:
    page = html_report(data("[/]<b>"))
    assert "[/]&lt;b&gt;" in page and "<b>[" not in page


def test_cli_tables_show_markup_from_data_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    print_rows(["tenant", "[/]"], [[v, v] for v in HOSTILE], "table")
    out = capsys.readouterr().out
    for value in HOSTILE:
        assert out.count(value) >= 2
