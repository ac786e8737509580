import math
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from pipeline.core.budgets import Budget, period_bounds
from pipeline.core.forecast import (
    dense_series,
    forecast_breaches,
    forecast_budget,
    forecastable,
    run_rate,
)

NOW = datetime(2025, 3, 20, 12, 0, tzinfo=timezone.utc)


def monthly(limit: str = "1000", **kw) -> Budget:
    return Budget.model_validate({"budget_id": "b", "tenant_id": "t", "limit": limit,
                                  "period": "month", **kw})


def daily_history(days: int, rate=lambda i: 10.0, end: datetime = NOW) -> list:
    start = end.replace(hour=0) - timedelta(days=days)
    return [(start + timedelta(days=i), D(str(round(max(0.0, rate(i)), 6)))) for i in range(days)]


def spent_in_period(history: list, period) -> D:
    return sum((a for ts, a in history if period[0] <= ts < period[1]), D(0))


def run(budget: Budget, history: list, now: datetime = NOW):
    period = period_bounds(budget.period, budget.tz, now)
    spent = spent_in_period(history, period)
    return forecast_budget(budget, history, spent, period, now), spent


def test_too_little_history_says_why() -> None:
    f, _ = run(monthly(), daily_history(2))
    assert f.model == "none" and "2.0 days" in f.reason and f.predicted_spend is None


def test_brand_new_tenant_no_history() -> None:
    f, _ = run(monthly(), [])
    assert f.model == "none" and f.history_points == 0


@pytest.mark.parametrize(
    "name, rate, model",
    [
        ("steady", lambda i: 10 + random.Random(i).gauss(0, 1), "ets_damped_weekly"),
        ("weekly", lambda i: 10 + 5 * math.sin(i * 2 * math.pi / 7), "ets_damped_weekly"),
        ("trend up", lambda i: 5 + 0.3 * i, "ets_damped_weekly"),
        ("trend down", lambda i: 40 - 0.3 * i, "ets_damped_weekly"),
        ("zero days", lambda i: 0 if i % 3 == 0 else 12, "ets_damped_weekly"),
        ("spike", lambda i: 5000 if i == 40 else 10, "ets_damped_weekly"),
        ("constant", lambda i: 10, "constant"),
        ("all zero", lambda i: 0, "constant"),
    ],
)
def test_shapes_never_crash_and_make_sense(name: str, rate, model: str) -> None:
    h = daily_history(60, rate)
    f, spent = run(monthly(), h)
    assert f.model == model, f.reason
    assert f.reason
    assert f.lower <= f.predicted_spend <= f.upper
    assert f.predicted_spend >= spent  # spend never goes down
    assert D(0) <= f.probability_exceed <= D(1)
    assert f.points and f.points[-1].at == f.period_end
    assert all(a.p50 <= b.p50 for a, b in zip(f.points, f.points[1:]))


def test_short_history_uses_trend_model_without_season() -> None:
    f, _ = run(monthly(), daily_history(8, lambda i: 10 + i))
    assert f.model == "ets_damped"


def test_gaps_are_zero_buckets() -> None:
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    y = dense_series([(start, D(1)), (start + timedelta(days=3), D(2))], start,
                     start + timedelta(days=5), timedelta(days=1))
    assert list(y) == [1, 0, 0, 2, 0]


def test_hourly_buckets_for_day_budgets() -> None:
    b = Budget.model_validate({"budget_id": "b", "tenant_id": "t", "limit": "300", "period": "day"})
    start = NOW - timedelta(days=5)
    h = [(start + timedelta(hours=i), D(2 + (i % 24 > 8) * 3)) for i in range(5 * 24)]
    f, spent = run(b, h)
    assert f.model == "ets_damped_daily"
    assert f.period_end - f.period_start == timedelta(days=1)


def test_steady_rate_projects_month_end() -> None:
    # 10/day every day: a March (31 days) ends near 310
    f, spent = run(monthly(limit="250"), daily_history(60))
    assert abs(f.predicted_spend - D(310)) < D(15)
    assert f.probability_exceed >= D("0.95")
    assert f.crossing_times["100"] is not None
    assert f.period_start < f.crossing_times["100"] < f.period_end


def test_forecast_alert_only_for_uncrossed_likely_thresholds() -> None:
    b = monthly(limit="250", forecast={"probability": "0.8"})
    f, spent = run(b, daily_history(60))  # spent 190 by March 20: 50% crossed already
    alerts = forecast_breaches(b, f, set(), NOW)
    assert [a.threshold_pct for a in alerts] == [D(80), D(100)]
    assert all(a.kind.value == "forecast" and a.probability >= D("0.8") for a in alerts)
    assert all(a.action == "alert" for a in alerts)  # the budget names no forecast action
    assert forecast_breaches(b, f, {a.breach_id for a in alerts}, NOW) == []
    acting = monthly(limit="250", forecast={"probability": "0.8"},
                     actions={"forecast": "block"})
    assert {a.action for a in forecast_breaches(acting, f, set(), NOW)} == {"block"}
    off = monthly(limit="250", forecast={"enabled": False})
    assert forecast_breaches(off, f, set(), NOW) == []


def test_run_rate() -> None:
    period = (datetime(2025, 3, 1, tzinfo=timezone.utc), datetime(2025, 4, 1, tzinfo=timezone.utc))
    assert run_rate(D(100), period, datetime(2025, 3, 11, tzinfo=timezone.utc)) == D(310)


@pytest.mark.parametrize("where", [0, 20, 39])  # first, middle and last bucket
def test_despike_clips_an_isolated_spike_anywhere(where: int) -> None:
    import numpy as np

    from pipeline.core.forecast import despike

    y = np.array([10.0 + (i % 7) for i in range(40)])
    y[where] = 500.0
    out = despike(y, 28)
    assert out[where] < 30  # back near the local level, also at the ends
    assert np.array_equal(np.delete(out, where), np.delete(y, where))  # nothing else moves


@pytest.mark.parametrize(("extra", "expected"), [
    ({}, True),
    ({"forecast": {"enabled": False}}, False),
    ({"each": "user_id"}, False),  # every user has its own limit: not one series to fit
    ({"period": "run", "each": "trace_id"}, False),  # a run has no period end
])
def test_forecastable(extra: dict, expected: bool) -> None:
    b = Budget.model_validate({"budget_id": "b", "tenant_id": "t", "limit": "10", **extra})
    assert forecastable(b) is expected
