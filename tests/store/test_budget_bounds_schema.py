"""Migration 006: columns wide enough for every percent a validated budget produces."""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.core.budgets import MIN_LIMIT, percent_of
from pipeline.store.client import Store
from pipeline.store.migrations import migrate, sql_dir
from pipeline.store.sink import STATUS_COLUMNS

pytestmark = pytest.mark.integration
AT = datetime(2026, 6, 17, 10, 20, 30, tzinfo=timezone.utc)
# the largest percent the bounds admit: spent at Decimal(38, 12)'s limit over the smallest limit
LARGEST = percent_of(Decimal("9" * 26 + ".999999999999"), MIN_LIMIT)


def test_largest_admitted_percent_fits_breaches_status_and_the_status_view(store: Store
                                                                         ) -> None:
    db = store.database
    store.insert("budgets", [["b1", "acme", "{}", "day", "cost", MIN_LIMIT, "soft", "UTC",
                              False, AT]],
                 ["budget_id", "tenant_id", "spec", "period", "metric", "limit", "mode",
                  "timezone", "deleted", "updated_at"])
    store.insert("budget_status", [["b1", "acme", AT, AT, "cost", Decimal(1), MIN_LIMIT,
                                    LARGEST, "soft", AT]], STATUS_COLUMNS)
    store.insert("budget_breaches", [["x", "b1", "acme", "threshold", Decimal(100),
                                      Decimal(1), MIN_LIMIT, LARGEST, "cost", AT, AT]],
                 ["breach_id", "budget_id", "tenant_id", "kind", "threshold_pct", "spent",
                  "limit", "percent", "metric", "period_start", "period_end"])
    assert store.rows(f"SELECT percent FROM {db}.budget_status_now") == [(LARGEST,)]
    assert store.rows(f"SELECT percent FROM {db}.budget_breaches") == [(LARGEST,)]


def test_006_upgrades_a_ledger_created_before_it(chdb_root: Store, tmp_path: Path) -> None:
    old = tmp_path / "sql"
    old.mkdir()
    for f in sorted(sql_dir().glob("00[1-5]_*.sql")):
        shutil.copy(f, old / f.name)
    db = f"t_{uuid.uuid4().hex[:12]}"
    s = chdb_root.with_database(db)
    try:
        migrate(s, old)
        s.insert("budget_status", [["b0", "acme", AT, AT, "cost", Decimal(1), Decimal(1),
                                    Decimal(100), "soft", AT]], STATUS_COLUMNS)
        assert "006_budget_bounds.sql" in migrate(s)
        types = dict(s.rows(f"SELECT table, type FROM system.columns WHERE database = '{db}' "
                            "AND name = 'percent' AND table IN ('budget_status', "
                            "'budget_breaches', 'budget_status_now')"))
        assert types == {"budget_status": "Decimal(76, 6)", "budget_breaches": "Decimal(76, 6)",
                         "budget_status_now": "Decimal(76, 6)"}
        s.insert("budget_status", [["b1", "acme", AT, AT, "cost", Decimal(1), MIN_LIMIT,
                                    LARGEST, "soft", AT]], STATUS_COLUMNS)
        got = s.rows(f"SELECT budget_id, percent FROM {db}.budget_status FINAL "
                     "ORDER BY budget_id")
        assert got == [("b0", Decimal(100)), ("b1", LARGEST)]  # old rows kept
        assert migrate(s) == []
    finally:
        chdb_root.command(f"DROP DATABASE IF EXISTS {db}")
