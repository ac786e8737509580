"""Forecast quality: rolling-origin backtest against the linear run-rate rule.

Synthetic daily spend series (weekly seasonality, trends up and down, noise, spikes) get a
monthly budget each. At many origins inside the month both forecasts predict the month's
end; we compare their absolute percentage errors, how early each flags the genuine
overruns, and how often ours alerts on months that end under budget.
"""

from __future__ import annotations

import math
import multiprocessing
import random
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pipeline.core.budgets import Budget, period_bounds
from pipeline.core.forecast import forecast_budget, run_rate

MONTH_START = datetime(2025, 3, 1, tzinfo=timezone.utc)
MONTH_DAYS = 31
HISTORY_DAYS = 90
ORIGINS = list(range(3, 29, 2))  # day of month (0-based) at noon
PROBABILITY = 0.8


@dataclass(frozen=True)
class Series:
    """One synthetic tenant: daily spend for history + the evaluated month, and a limit."""

    name: str
    daily: list[float]  # HISTORY_DAYS + MONTH_DAYS values, the month last
    limit: float


def synth(seed: int) -> Series:
    """A daily spend series with level, trend, weekly pattern, noise and rare spikes."""
    rng = random.Random(seed)
    level = rng.uniform(50, 500)
    trend = rng.choice([-0.006, -0.003, 0.0, 0.0, 0.004, 0.008, 0.012]) * level
    weekly = rng.uniform(0.0, 0.45)
    noise = rng.uniform(0.05, 0.2)
    pattern = [1.0, 1.05, 1.1, 1.05, 1.0, 1 - weekly, 1 - weekly * 1.2]
    days = []
    for d in range(HISTORY_DAYS + MONTH_DAYS):
        base = max(0.0, level + trend * d) * pattern[d % 7]
        value = base * max(0.0, rng.gauss(1.0, noise))
        if rng.random() < 0.01:
            value *= rng.uniform(3, 8)  # an incident or a runaway job
        days.append(value)
    month_total = sum(days[-MONTH_DAYS:])
    limit = month_total * rng.uniform(0.85, 1.15)
    return Series(f"s{seed}", days, limit)


def _evaluate(series: Series) -> dict[str, Any]:
    start = MONTH_START - timedelta(days=HISTORY_DAYS)
    history_all = [(start + timedelta(days=i), Decimal(str(round(v, 6))))
                   for i, v in enumerate(series.daily)]
    budget = Budget.model_validate({"budget_id": series.name, "tenant_id": series.name,
                                    "limit": str(round(series.limit, 6)), "period": "month",
                                    "thresholds": ["100"],
                                    "forecast": {"probability": str(PROBABILITY)}})
    actual = sum(series.daily[-MONTH_DAYS:])
    overrun = actual > series.limit
    cumulative = 0.0
    crossing_day = None
    for d, v in enumerate(series.daily[-MONTH_DAYS:]):
        cumulative += v
        if crossing_day is None and cumulative > series.limit:
            crossing_day = d + 1.0  # crosses during day d; the rule can see it by its end
    rows = []
    for origin in ORIGINS:
        now = MONTH_START + timedelta(days=origin, hours=12)
        period = period_bounds(budget.period, budget.tz, now)
        visible = [(ts, a if ts + timedelta(days=1) <= now else a / 2)
                   for ts, a in history_all if ts < now]
        spent = sum((a for ts, a in visible if ts >= period[0]), Decimal(0))
        f = forecast_budget(budget, visible, spent, period, now, seed=origin)
        linear = float(run_rate(spent, period, now))
        ours = float(f.predicted_spend) if f.predicted_spend is not None else linear
        alert = (f.probability_exceed is not None
                 and float(f.probability_exceed) >= PROBABILITY and float(spent) < series.limit)
        rows.append({"origin": origin + 0.5, "ours": ours, "linear": linear,
                     "ours_alert": alert, "linear_alert": linear >= series.limit
                     and float(spent) < series.limit, "model": f.model})
    return {"name": series.name, "actual": actual, "overrun": overrun,
            "crossing_day": crossing_day, "rows": rows}


def run(n_series: int = 60, processes: int = 2) -> dict[str, Any]:
    """The backtest table: MAPE ratio, detection lead, false alert rate."""
    series = [synth(seed) for seed in range(n_series)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        results = list(pool.map(_evaluate, series, chunksize=4))
    ape_ours, ape_linear = [], []
    detect_ours, detect_linear = [], []
    false_alerts = under = 0
    for r in results:
        for row in r["rows"]:
            ape_ours.append(abs(row["ours"] - r["actual"]) / r["actual"])
            ape_linear.append(abs(row["linear"] - r["actual"]) / r["actual"])
        if r["overrun"]:
            limit_day = r["crossing_day"] or MONTH_DAYS
            first_ours = min((row["origin"] for row in r["rows"] if row["ours_alert"]),
                             default=limit_day)
            first_linear = min((row["origin"] for row in r["rows"] if row["linear_alert"]),
                               default=limit_day)
            detect_ours.append(min(first_ours, limit_day))
            detect_linear.append(min(first_linear, limit_day))
        else:
            under += 1
            false_alerts += any(row["ours_alert"] for row in r["rows"])
    mape_ours = statistics.fmean(ape_ours) * 100
    mape_linear = statistics.fmean(ape_linear) * 100
    return {
        "series": n_series,
        "origins_per_series": len(ORIGINS),
        "mape_forecast_pct": round(mape_ours, 2),
        "mape_linear_pct": round(mape_linear, 2),
        "mape_ratio": round(mape_ours / mape_linear, 3) if mape_linear else math.nan,
        "overrun_series": len(detect_ours),
        "mean_detection_day_forecast": round(statistics.fmean(detect_ours), 2)
        if detect_ours else None,
        "mean_detection_day_linear": round(statistics.fmean(detect_linear), 2)
        if detect_linear else None,
        "under_budget_series": under,
        "false_alert_rate": round(false_alerts / under, 3) if under else 0.0,
    }


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run()))
