"""Spend forecasting: end-of-period spend with an interval, per budget (pure, time passed in).

Model choice by history (recorded on every forecast):
- under 3 days of buckets: no forecast (reason says why);
- a constant series: that constant, zero-width interval;
- daily buckets, 14+ days: ETS with damped additive trend and weekly seasonality;
- hourly buckets, 3+ days: ETS with damped additive trend and daily (24 h) seasonality;
- otherwise: ETS with damped additive trend, no seasonality;
- a fit that fails or gives non-finite numbers: the recent mean rate, reason recorded.
Every ETS is fitted to log(spend + 1% of its mean), so trend, season and noise act in
proportion to the level, and its trend damping is fixed at 0.995: a trend carries on over a
month (damping powers over 28 days sum to 26 of 28) and flattens somewhat over a quarter
(72 of 90); simulated log paths are capped 5 above the largest seen. The rolling-origin
backtest (pipeline/benchmark/forecast_quality.py) chose both: see docs/performance.md.
Isolated spikes are clipped before fitting (see ``despike``); they stay in actual spend.
The distribution of end-of-period spend comes from simulated future paths of the fitted
model (clipped at zero: spend never goes down), added to the period-to-date actual spend.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from pipeline.core.budgets import BreachKind, Budget, BudgetBreach, breach_id, severity_for
from pipeline.core.events import Money

MIN_HISTORY = timedelta(days=3)
FIT_POINTS_DAILY = 63  # nine weeks
FIT_POINTS_HOURLY = 14 * 24
REPETITIONS = 400
DAMPING = 0.995  # fixed, not fitted: see the module docstring


class ForecastPoint(BaseModel):
    """Predicted cumulative period spend at one horizon point."""

    model_config = ConfigDict(frozen=True)

    at: AwareDatetime
    p50: Money
    lower: Money
    upper: Money


class Forecast(BaseModel):
    """One forecast run for one budget."""

    model_config = ConfigDict(frozen=True)

    budget_id: str
    tenant_id: str
    run_at: AwareDatetime
    period_start: AwareDatetime
    period_end: AwareDatetime
    model: str = Field(description="model used, or 'none' with a reason")
    reason: str = ""
    history_points: int = 0
    spent: Money = Decimal(0)
    limit: Money = Decimal(0)
    predicted_spend: Money | None = None
    lower: Money | None = None
    upper: Money | None = None
    run_rate_spend: Money | None = None
    probability_exceed: Money | None = None
    threshold_probabilities: dict[str, Money] = Field(default_factory=dict)
    crossing_times: dict[str, AwareDatetime | None] = Field(default_factory=dict)
    backtest_wape: Money | None = None
    points: list[ForecastPoint] = Field(default_factory=list)


def forecastable(budget: Budget) -> bool:
    """True for a budget the forecast job fits: enabled, and a calendar budget of one spend.

    Templates and runs are not forecast: every key value has its own limit (one fit per user
    or run would not scale, and a run has no period end); their runaway guard is the
    spend-velocity watch and the per-key thresholds."""
    return budget.forecast.enabled and budget.each is None


def bucket_step(budget: Budget) -> timedelta:
    """Hourly buckets for hour/day/week budgets, daily for month/quarter."""
    return timedelta(hours=1) if budget.period.value in ("hour", "day", "week") else \
        timedelta(days=1)


def _dec(x: float) -> Decimal:
    return Decimal(str(round(float(x), 6)))


def dense_series(history: Sequence[tuple[datetime, Decimal]], start: datetime,
                 end: datetime, step: timedelta) -> np.ndarray:
    """Amount per bucket from ``start`` (inclusive) to ``end`` (exclusive); gaps are zero."""
    n = max(0, int((end - start) / step))
    y = np.zeros(n)
    for ts, amount in history:
        i = int((ts - start) / step)
        if 0 <= i < n:
            y[i] += float(amount)
    return y


def run_rate(spent: Decimal, period: tuple[datetime, datetime], now: datetime) -> Decimal:
    """The straight-line projection others use: period-to-date / elapsed x length."""
    elapsed = (now - period[0]).total_seconds()
    length = (period[1] - period[0]).total_seconds()
    if elapsed <= 0:
        return spent
    return spent * Decimal(length) / Decimal(elapsed)


def despike(y: np.ndarray, half_window: int) -> np.ndarray:
    """Clip isolated spikes to the local median + 5 MAD (robust scale) around each point.

    Incidents and runaway jobs are real spend, and stay in period-to-date actuals, but a
    model fitted through them extrapolates them; the base rate is what predicts the rest.
    """
    if len(y) < 5:
        return y
    w = min(half_window, len(y) // 2)
    # mirror, not repeat, the ends: repeating a spike on the last day made it look normal
    padded = np.pad(y, w, mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1)
    med = np.median(windows, axis=1)
    mad = np.median(np.abs(windows - med[:, None]), axis=1) * 1.4826
    clipped: np.ndarray = np.minimum(y, med + 5 * np.maximum(mad, 1e-9))
    return clipped


def _fit_paths(y: np.ndarray, seasonal: int | None, horizon: int,
               rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    # fit in the log domain: spend grows and swings in proportion to its level (a weekly dip
    # of 30% stays 30% as traffic doubles), which additive states on the raw scale miss
    shift = max(float(np.mean(y)) * 0.01, 1e-9)  # keeps zero buckets finite
    z = np.log(y + shift)
    model = ETSModel(z, error="add", trend="add", damped_trend=True,
                     seasonal="add" if seasonal else None, seasonal_periods=seasonal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; the result is checked below
        with model.fix_params({"damping_trend": DAMPING}):
            fit = model.fit(disp=False, maxiter=200)
        sims = np.asarray(fit.simulate(horizon, anchor="end", repetitions=REPETITIONS,
                                       rng=rng), dtype=float).reshape(horizon, REPETITIONS)
    paths = np.exp(np.minimum(sims, float(z.max()) + 5.0)) - shift
    if not np.all(np.isfinite(paths)):
        raise ValueError("non-finite simulation")
    fitted = np.exp(np.asarray(fit.fittedvalues, dtype=float)) - shift
    tail = slice(max(0, len(y) - 28), len(y))
    denom = float(np.abs(y[tail]).sum())
    wape = float(np.abs(fitted[tail] - y[tail]).sum() / denom) if denom > 0 else None
    return paths, wape


def forecast_budget(budget: Budget, history: Sequence[tuple[datetime, Decimal]],
                    spent: Decimal, period: tuple[datetime, datetime], now: datetime,
                    *, seed: int = 0) -> Forecast:
    """Forecast the end-of-period amount of a budget from its bucketed history."""
    step = bucket_step(budget)
    start, end = period
    base: dict[str, Any] = {
        "budget_id": budget.budget_id, "tenant_id": budget.tenant_id, "run_at": now,
        "period_start": start, "period_end": end, "spent": spent, "limit": budget.limit,
        "run_rate_spend": run_rate(spent, period, now).quantize(Decimal("0.000001")),
    }
    current = datetime.fromtimestamp(now.timestamp() // step.total_seconds()
                                     * step.total_seconds(), tz=now.tzinfo)
    first = min((ts for ts, _ in history), default=current)
    y = dense_series(history, first, current, step)
    base["history_points"] = len(y)
    if len(y) * step < MIN_HISTORY:
        days = len(y) * step / timedelta(days=1)
        return Forecast(model="none", reason=f"only {days:.1f} days of history; a forecast "
                        "needs at least 3", **base)
    horizon = max(1, math.ceil((end - current) / step))
    rng = np.random.default_rng(seed)
    wape: float | None = None
    if float(np.ptp(y)) == 0.0:
        model, reason = "constant", "constant history: the same amount per bucket"
        paths = np.full((horizon, REPETITIONS), float(y[-1]))
    else:
        if step == timedelta(days=1):
            seasonal = 7 if len(y) >= 14 else None
            model = "ets_damped_weekly" if seasonal else "ets_damped"
        else:
            seasonal = 24 if len(y) >= 72 else None
            model = "ets_damped_daily" if seasonal else "ets_damped"
        reason = f"{len(y)} {'daily' if step == timedelta(days=1) else 'hourly'} buckets"
        try:
            half = 28 if step == timedelta(days=1) else 7 * 24
            # recent history carries the level and the season; older points cost fit time
            keep = FIT_POINTS_DAILY if step == timedelta(days=1) else FIT_POINTS_HOURLY
            paths, wape = _fit_paths(despike(y, half)[-keep:], seasonal, horizon, rng)
        except Exception as exc:  # statsmodels raises many kinds; any of them -> fallback
            recent = y[-7 * (24 if step < timedelta(days=1) else 1):]
            model, reason = "recent_mean", f"model fit failed ({type(exc).__name__}); " \
                "using the recent mean rate"
            noise = rng.normal(0, float(recent.std()) or 0.0, (horizon, REPETITIONS))
            paths = float(recent.mean()) + noise
    paths = np.clip(paths, 0.0, None)
    # only the not-yet-elapsed part of the current bucket is still to come
    paths[0] *= max(0.0, (current + step - now) / step)
    cumulative = float(spent) + np.cumsum(paths, axis=0)
    total = cumulative[-1]
    p50, lower, upper = (float(np.percentile(total, q)) for q in (50, 10, 90))
    median_path = np.percentile(cumulative, 50, axis=1)
    probs: dict[str, Decimal] = {}
    crossings: dict[str, datetime | None] = {}
    for t in budget.thresholds:
        level = float(budget.limit * t / 100)
        key = format(t.normalize(), "f")
        probs[key] = _dec(float(np.mean(total >= level)))
        crossings[key] = _crossing(median_path, level, float(spent), now, current, step, end)
    points = [
        ForecastPoint(at=min(current + step * (i + 1), end), p50=_dec(median_path[i]),
                      lower=_dec(np.percentile(cumulative[i], 10)),
                      upper=_dec(np.percentile(cumulative[i], 90)))
        for i in range(horizon)
    ]
    limit_level = float(budget.limit)
    return Forecast(
        model=model, reason=reason, predicted_spend=_dec(p50), lower=_dec(lower),
        upper=_dec(upper), probability_exceed=_dec(float(np.mean(total >= limit_level))),
        threshold_probabilities=probs, crossing_times=crossings,
        backtest_wape=None if wape is None else _dec(wape), points=points, **base)


def _crossing(path: np.ndarray, level: float, spent: float, now: datetime, current: datetime,
              step: timedelta, end: datetime) -> datetime | None:
    """When the median cumulative path reaches ``level`` (interpolated within a bucket)."""
    if spent >= level:
        return now
    prev, prev_t = spent, now
    for i, value in enumerate(path):
        t = min(current + step * (i + 1), end)
        if value >= level:
            frac = (level - prev) / (value - prev) if value > prev else 1.0
            return prev_t + (t - prev_t) * frac
        prev, prev_t = float(value), t
    return None


def forecast_breaches(budget: Budget, f: Forecast, fired: set[str],
                      now: datetime) -> list[BudgetBreach]:
    """Forecast alerts: thresholds not yet crossed that will be, with enough probability."""
    if not budget.forecast.enabled or f.predicted_spend is None:
        return []
    out = []
    for t in budget.thresholds:
        key = format(t.normalize(), "f")
        p = f.threshold_probabilities.get(key, Decimal(0))
        if f.spent * 100 >= t * budget.limit or p < budget.forecast.probability:
            continue
        bid = breach_id(budget.budget_id, f.period_start, "", "forecast", t, budget.limit)
        if bid in fired:
            continue
        out.append(BudgetBreach(
            breach_id=bid, budget_id=budget.budget_id, tenant_id=budget.tenant_id,
            kind=BreachKind.forecast, threshold_pct=t, spent=f.spent, limit=budget.limit,
            percent=(f.spent * 100 / budget.limit).quantize(Decimal("0.01")),
            metric=budget.metric, period_start=f.period_start, period_end=f.period_end,
            severity=severity_for(t), action=budget.actions.get("forecast", "alert"),
            mode=budget.mode, emitted_at=now, predicted_spend=f.predicted_spend,
            predicted_lower=f.lower, predicted_upper=f.upper, probability=p,
            projected_crossing_at=f.crossing_times.get(key)))
    return out
