"""The forecast job against the real chDB ledger."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from pipeline.core.budgets import Budget
from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.runtime.forecast_job import fit_all, gather, run_forecasts
from pipeline.store.client import Store
from pipeline.store.sink import USAGE_COLUMNS, usage_row

pytestmark = pytest.mark.integration
NOW = datetime(2025, 3, 20, 12, tzinfo=timezone.utc)
METER = Meter(load_catalog(), load_policy())


def load_history(store: Store, tenant: str, days: int, per_day: int, tokens: int) -> int:
    """Insert history; returns the tokens that fall in March before NOW (ground truth)."""
    rows = []
    march = 0
    rng = random.Random(tenant)
    start = NOW - timedelta(days=days)
    for d in range(days):
        for i in range(per_day):
            ts = start + timedelta(days=d, minutes=rng.randint(0, 1439))
            if ts >= NOW:
                continue
            p = METER.meter_object({"event_id": f"{tenant}-{d}-{i}", "timestamp": ts.isoformat(),
                                    "tenant_id": tenant, "provider": "openai",
                                    "model": "gpt-4o-mini", "input_tokens": tokens,
                                    "output_tokens": 0}, now=NOW)
            rows.append(usage_row(p, late=False, partition=0, offset=0, ingested_at=NOW))
            if ts >= datetime(2025, 3, 1, tzinfo=timezone.utc):
                march += tokens
    store.insert("usage_events", rows, USAGE_COLUMNS)
    return march


def budget(bid: str, tenant: str, limit: str, **kw) -> Budget:
    return Budget.model_validate({"budget_id": bid, "tenant_id": tenant, "limit": limit,
                                  "metric": "tokens", "period": "month", **kw})


def test_forecast_job_stores_runs_and_alerts_before_overrun(store: Store) -> None:
    hot_march = load_history(store, "hot", days=60, per_day=10, tokens=1000)  # 10k tokens/day
    load_history(store, "cold", days=60, per_day=2, tokens=1000)  # 2k/day
    budgets = [
        budget("hot-b", "hot", "250000", forecast={"probability": "0.8"}),  # ~310k by month end
        budget("cold-b", "cold", "250000"),  # ~62k: stays quiet
        budget("new-b", "brand-new", "1000"),  # no history at all
        budget("off-b", "hot", "1", forecast={"enabled": False}),
        # templates and runs are not forecast (a run's "period" ends in 2999: fitting it ran
        # the demo worker out of memory)
        budget("users-b", "hot", "1000", period="day", each="user_id"),
        budget("runs-b", "hot", "1000", period="run", each="trace_id"),
    ]
    published = []

    async def publish(b):
        published.append(b)

    forecasts, breaches = asyncio.run(run_forecasts(store, budgets, NOW, publish=publish,
                                                    processes=1))
    by_id = {f.budget_id: f for f in forecasts}
    assert set(by_id) == {"hot-b", "cold-b", "new-b"}
    hot = by_id["hot-b"]
    assert hot.model == "ets_damped_weekly"
    assert hot.spent == hot_march
    assert Decimal(280000) < hot.predicted_spend < Decimal(340000)
    assert hot.probability_exceed >= Decimal("0.8")
    assert by_id["new-b"].model == "none" and "history" in by_id["new-b"].reason
    assert by_id["cold-b"].probability_exceed == 0
    assert hot_march < Decimal(200000)  # under 80% so far: both alerts must be forecasts
    # alerts: 80% and 100% of the hot budget, not yet crossed by actual spend
    assert sorted(int(b.threshold_pct) for b in breaches) == [80, 100]
    assert all(b.kind.value == "forecast" and b.budget_id == "hot-b" for b in breaches)
    assert published == breaches
    crossing = breaches[-1].projected_crossing_at
    assert NOW < crossing < hot.period_end
    stored = store.rows(f"SELECT budget_id, model, length(points_p50) FROM {store.database}.forecasts "
                        "ORDER BY budget_id")
    assert [r[0] for r in stored] == ["cold-b", "hot-b", "new-b"]
    assert stored[1][2] > 0
    # a second run publishes nothing new (breach ids are once per budget, period, threshold)
    _, again = asyncio.run(run_forecasts(store, budgets, NOW, publish=publish, processes=1))
    assert again == [] and len(published) == 2


def test_parallel_fit_matches_inline(store: Store) -> None:
    load_history(store, "p", days=30, per_day=5, tokens=100)
    jobs = [gather(store, budget(f"b{i}", "p", "100000"), NOW) for i in range(30)]
    done = []
    parallel = fit_all(jobs, processes=2, progress=lambda d, t: done.append(d))
    inline = fit_all(jobs[:2], processes=1)
    assert len(parallel) == 30 and done[-1] == 30
    assert parallel[0].predicted_spend == inline[0].predicted_spend  # same seed, same answer
