"""The spend-velocity baseline query on the real chDB ledger."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from pipeline.core.anomaly import Baseline, baseline_for
from pipeline.core.budgets import Budget
from pipeline.store.baseline import hourly_history
from pipeline.store.client import Store
from pipeline.store.sink import USAGE_COLUMNS, usage_row
from tests.helpers import METER

pytestmark = pytest.mark.integration
HOUR = datetime(2026, 3, 10, 14, tzinfo=timezone.utc)  # a Tuesday, 14:00 UTC


def test_hourly_history_reads_the_scopes_hours_of_the_past_weeks_once(store: Store) -> None:
    budget = Budget.model_validate({"budget_id": "v", "tenant_id": "acme", "metric": "tokens",
                                    "project_id": "web", "limit": "1e9",
                                    "anomaly": {"enabled": True}})
    rows = []

    def add(eid: str, at: datetime, tokens: int, project: str = "web",
            tenant: str = "acme") -> None:
        p = METER.meter_object({"event_id": eid, "timestamp": at.isoformat(),
                                "tenant_id": tenant, "project_id": project,
                                "provider": "openai", "model": "gpt-4o",
                                "input_tokens": tokens, "output_tokens": 0}, now=HOUR)
        rows.append(usage_row(p, late=False, partition=0, offset=len(rows), ingested_at=HOUR))

    for week in (1, 2, 3, 4):
        start = HOUR - timedelta(weeks=week)
        add(f"w{week}a", start + timedelta(minutes=3, seconds=10), 100 * week)
        add(f"w{week}b", start + timedelta(minutes=3, seconds=50), 1)
    add("week5", HOUR - timedelta(weeks=5, minutes=-3), 10_000)  # beyond the weeks asked
    add("other-hour", HOUR - timedelta(weeks=1, hours=1), 10_000)
    add("other-day", HOUR - timedelta(days=1), 10_000)
    add("other-project", HOUR - timedelta(weeks=1, minutes=-3), 10_000, project="api")
    add("other-tenant", HOUR - timedelta(weeks=1, minutes=-3), 10_000, tenant="globex")
    add("this-hour", HOUR + timedelta(minutes=1), 10_000)  # the hour being judged
    store.insert("usage_events", rows, USAGE_COLUMNS)
    store.insert("usage_events", rows[:1], USAGE_COLUMNS)  # re-delivered: FINAL counts it once

    got = hourly_history(store, budget, HOUR + timedelta(minutes=30))
    weeks = [(HOUR - timedelta(weeks=w), Decimal(100 * w + 1), 2) for w in (4, 3, 2, 1)]
    other_hour = (HOUR - timedelta(weeks=1, hours=1), Decimal(10_000), 1)
    other_day = (HOUR - timedelta(days=1), Decimal(10_000), 1)
    assert got == [*weeks[:3], other_hour, weeks[3], other_day]  # hour order
    assert all(at.tzinfo is not None for at, _, _ in got)
    # the same hour of each week is a sample; the others only say since when the scope exists
    assert baseline_for(got, HOUR) == Baseline(Decimal(2), Decimal(251), 4)  # median of 101..401


def test_a_templates_history_holds_only_events_with_its_key(store: Store) -> None:
    runs = Budget.model_validate({"budget_id": "r", "tenant_id": "acme", "limit": "2",
                                  "period": "run", "each": "trace_id", "metric": "tokens",
                                  "anomaly": {"enabled": True}})
    rows = []
    for i, trace in enumerate(["run-1", None, "run-2", None, None]):
        p = METER.meter_object({"event_id": f"t{i}", "tenant_id": "acme", "provider": "openai",
                                "timestamp": (HOUR - timedelta(weeks=1, minutes=-i)).isoformat(),
                                "model": "gpt-4o", "input_tokens": 10, "output_tokens": 0,
                                **({"trace_id": trace} if trace else {})}, now=HOUR)
        rows.append(usage_row(p, late=False, partition=0, offset=i, ingested_at=HOUR))
    store.insert("usage_events", rows, USAGE_COLUMNS)
    assert hourly_history(store, runs, HOUR) == [(HOUR - timedelta(weeks=1), Decimal(20), 2)]
