"""Dashboard reads of template and run budgets' keys, against real chDB."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from pipeline.core.budgets import Budget, BudgetBreach
from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.store.client import Store
from pipeline.store.dashboard_reads import active_keys, breaches
from pipeline.store.sink import BREACH_COLUMNS, USAGE_COLUMNS, breach_row, usage_row

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 17, 12, tzinfo=timezone.utc)
METER = Meter(load_catalog(), load_policy())
# gpt-4o-mini lists $0.15 per million input tokens: 1,000,000 tokens cost $0.15
PER_CALL = D("0.15")


def put(store: Store, calls: list[tuple[str, datetime, dict]]) -> None:
    rows = []
    for i, (tenant, at, extra) in enumerate(calls):
        p = METER.meter_object({"event_id": f"e{i}", "timestamp": at.isoformat(),
                                "tenant_id": tenant, "provider": "openai",
                                "model": "gpt-4o-mini", "input_tokens": 1_000_000,
                                "output_tokens": 0, **extra}, now=NOW)
        rows.append(usage_row(p, late=False, partition=0, offset=i, ingested_at=NOW))
    store.insert("usage_events", rows, USAGE_COLUMNS)


def test_active_keys_of_a_template_rank_by_spend_within_the_period(store: Store) -> None:
    day = NOW.replace(hour=0)
    odd = "o'brien\\); DROP TABLE x --"  # a key value is data, never SQL
    put(store, [("t", NOW - timedelta(hours=1), {"user_id": "ann"}),
                ("t", NOW - timedelta(hours=2), {"user_id": "ann"}),
                ("t", NOW - timedelta(hours=3), {"user_id": odd}),
                ("t", NOW - timedelta(days=1), {"user_id": "ann"}),  # yesterday: not counted
                ("t", NOW - timedelta(days=1), {"user_id": "old"}),  # only yesterday
                ("other", NOW, {"user_id": "ann"}),                  # another tenant
                ("t", NOW, {})])                                     # no key: not a key
    b = Budget(budget_id="u", tenant_id="t", limit=D(1), period="day", each="user_id")
    got = active_keys(store, b, day, day + timedelta(days=1), day)
    assert [(k, s) for k, s, _ in got] == [("ann", 2 * PER_CALL), (odd, PER_CALL)]
    assert got[0][2] == NOW - timedelta(hours=1)


def test_active_runs_are_those_with_an_event_within_the_idle_timeout(store: Store) -> None:
    put(store, [("t", NOW - timedelta(hours=5), {"attributes": {"run_id": "r1"}}),
                ("t", NOW - timedelta(minutes=1), {"attributes": {"run_id": "r1"}}),
                ("t", NOW - timedelta(hours=2), {"attributes": {"run_id": "r2"}})])
    b = Budget(budget_id="runs", tenant_id="t", limit=D(2), period="run", each="run_id",
               idle_timeout_s=600)
    start, end = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2999, 1, 1,
                                                                     tzinfo=timezone.utc)
    got = active_keys(store, b, start, end, NOW - timedelta(seconds=600))
    assert [(k, s) for k, s, _ in got] == [("r1", 2 * PER_CALL)]  # r1's whole run counts


def test_breaches_filter_by_kind(store: Store) -> None:
    def breach(bid: str, kind: str) -> BudgetBreach:
        return BudgetBreach(breach_id=bid, budget_id="b", tenant_id="t", kind=kind,
                            threshold_pct=D(100), spent=D(1), limit=D(1), percent=D(100),
                            metric="cost", period_start=NOW, period_end=NOW, severity="info",
                            action="alert", emitted_at=NOW, observed_rate=D("2.5"),
                            window_seconds=60)
    store.insert("budget_breaches", [breach_row(breach("a", "anomaly")),
                                     breach_row(breach("t", "threshold"))], BREACH_COLUMNS)
    got = breaches(store, None, 10, kind="anomaly")
    assert [(b["breach_id"], b["observed_rate"], b["window_seconds"]) for b in got] == [
        ("a", "2.500000000000", 60)]
    assert len(breaches(store, "t", 10)) == 2
