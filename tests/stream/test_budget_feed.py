"""The budgets mirror row: what analysts can read of a budget through POST /api/query."""

from __future__ import annotations

import json

from pipeline.core.budgets import Budget
from pipeline.stream.budget_feed import BUDGET_COLUMNS, budget_row
from tests.helpers import NOW

SLACK = "https://hooks.slack.com/services/T000/B000/sEcReTtOkEnXyZ"


def test_the_mirror_never_holds_a_webhook_credential() -> None:
    budget = Budget.model_validate({"budget_id": "b", "tenant_id": "acme", "limit": "5",
                                    "webhooks": [{"url": SLACK, "format": "slack"}]})
    row = dict(zip(BUDGET_COLUMNS, budget_row("b", budget, NOW), strict=True))
    assert "sEcReTtOkEn" not in row["spec"] and "/services/" not in row["spec"]
    spec = json.loads(row["spec"])
    assert spec["webhooks"][0]["url"].startswith("https://hooks.slack.com/")
    assert spec["limit"] == "5" and spec["tenant_id"] == "acme"  # the rest as it was


def test_a_deletion_is_a_row_with_deleted_set() -> None:
    row = dict(zip(BUDGET_COLUMNS, budget_row("b", None, NOW), strict=True))
    assert row["deleted"] is True and row["spec"] == ""
