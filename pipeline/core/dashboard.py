"""Dashboard shaping: budget status, burn-down and rate series (pure; time is passed in)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from pipeline.core.budgets import Budget, percent_of

HUNDRED = Decimal(100)


class Status(str, Enum):
    """How a budget stands in its current period, most severe first."""

    failed = "failed"  # invalid, or its evaluation raised: skipped, with the reason shown
    breached = "breached"  # actual spend reached the limit
    forecast = "forecast"  # not yet, but the latest forecast says it will, sure enough
    warning = "warning"  # actual spend crossed a threshold below 100%
    ok = "ok"


def budget_status(budget: Budget, spent: Decimal,
                  probability_exceed: Decimal | None = None) -> Status:
    """The budget's status from period-to-date spend and the latest forecast's P(over limit)."""
    percent = percent_of(spent, budget.limit)
    if percent >= HUNDRED:
        return Status.breached
    if (budget.forecast.enabled and probability_exceed is not None
            and probability_exceed >= budget.forecast.probability):
        return Status.forecast
    if any(percent >= t for t in budget.thresholds if t < HUNDRED):
        return Status.warning
    return Status.ok


def cumulative(buckets: Iterable[tuple[datetime, Decimal]], start: datetime,
               step: timedelta, now: datetime) -> list[tuple[datetime, Decimal]]:
    """Running total of a period's spend buckets, as points a line chart can draw.

    Starts at (start, 0), adds a point at the end of every bucket and ends at ``now``; a gap
    between buckets stays flat instead of sloping. Buckets may be UTC-aligned while the period
    starts at local midnight, so points are placed by bucket time, not by counting steps.
    """
    out = [(start, Decimal(0))]
    total = Decimal(0)
    last = start
    for ts, amount in sorted(buckets):
        if ts > last:
            out.append((ts, total))
        total += amount
        last = min(max(ts + step, start), now)
        out.append((last, total))
    if last < now:
        out.append((now, total))
    return out


def per_minute(rows: Iterable[tuple[datetime, int, Decimal]], now: datetime,
               minutes: int = 60) -> list[tuple[datetime, int, Decimal]]:
    """(minute, events, cost) for the last ``minutes`` minutes, zeros filled; the last one is
    the current, still filling minute."""
    end = now.replace(second=0, microsecond=0)
    got = {ts: (n, cost) for ts, n, cost in rows}
    out = []
    for i in range(minutes - 1, -1, -1):
        ts = end - timedelta(minutes=i)
        n, cost = got.get(ts, (0, Decimal(0)))
        out.append((ts, n, cost))
    return out


@dataclass(frozen=True, slots=True)
class ForecastLine:
    """The latest stored forecast of a budget's current period."""

    model: str
    reason: str
    run_at: datetime
    spent: Decimal  # period-to-date when the forecast ran: where its paths start
    predicted_spend: Decimal | None
    lower: Decimal | None
    upper: Decimal | None
    probability_exceed: Decimal | None
    points: Sequence[tuple[datetime, Decimal, Decimal, Decimal]]  # at, p50, lower, upper


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _money(v: Decimal | None) -> str | None:
    return None if v is None else format(v.quantize(Decimal("0.000001")).normalize(), "f")


def failed_view(budget_id: str, tenant_id: str, reason: str,
                budget: Budget | None = None) -> dict[str, Any]:
    """JSON for a budget that failed: what is known of it, status "failed" and the reason."""
    return {
        "budget_id": budget_id, "tenant_id": tenant_id,
        "period": budget.period.value if budget else None,
        "metric": budget.metric.value if budget else None,
        "mode": budget.mode.value if budget else None,
        "limit": _money(budget.limit) if budget and budget.limit.is_finite() else None,
        "spent": None, "percent": None, "status": Status.failed.value, "failure": reason,
        "thresholds": [], "actual": [], "forecast": None,
    }


def burn_down(budget: Budget, start: datetime, end: datetime, spent: Decimal,
              actual: Sequence[tuple[datetime, Decimal]],
              forecast: ForecastLine | None, failure: str | None = None) -> dict[str, Any]:
    """JSON for one budget's burn-down chart: actuals, thresholds, forecast cone to period end
    (or, for a failed budget, its failed_view: a broken one must not break the page)."""
    if failure is not None:
        return failed_view(budget.budget_id, budget.tenant_id, failure, budget)
    status = budget_status(budget, spent, forecast.probability_exceed if forecast else None)
    out: dict[str, Any] = {
        "budget_id": budget.budget_id, "tenant_id": budget.tenant_id,
        "period": budget.period.value, "metric": budget.metric.value, "mode": budget.mode.value,
        "period_start": start.isoformat(), "period_end": end.isoformat(),
        "start_ms": _ms(start), "end_ms": _ms(end),
        "limit": _money(budget.limit), "spent": _money(spent),
        "percent": _money(percent_of(spent, budget.limit)), "status": status.value,
        "failure": None,
        "thresholds": [{"percent": _money(t), "level": _money(budget.limit * t / HUNDRED)}
                       for t in budget.thresholds],
        "actual": [[_ms(ts), _money(v)] for ts, v in actual],
        "forecast": None,
    }
    if forecast is not None:
        out["forecast"] = {
            "model": forecast.model, "reason": forecast.reason,
            "run_at": forecast.run_at.isoformat(), "run_at_ms": _ms(forecast.run_at),
            "spent_at_run": _money(forecast.spent),
            "predicted_spend": _money(forecast.predicted_spend),
            "lower": _money(forecast.lower), "upper": _money(forecast.upper),
            "probability_exceed": _money(forecast.probability_exceed),
            "points": [[_ms(at), _money(p50), _money(lo), _money(hi)]
                       for at, p50, lo, hi in forecast.points],
        }
    return out


def key_views(budget: Budget, rows: Iterable[tuple[str, Decimal, datetime]],
              now: datetime) -> list[dict[str, Any]]:
    """JSON for the key values of a template or run budget: (key, spent, last event) rows,
    each against the budget's limit, most spent first. A run shows when it closes (its last
    event plus the idle timeout); a key idle past it is "closed"."""
    idle = timedelta(seconds=budget.idle_timeout_s)
    out = []
    for key, spent, last_seen in rows:
        status = budget_status(budget, Decimal(spent)).value
        if last_seen + idle <= now and budget.period.value == "run":
            status = "closed"
        out.append({
            "budget_id": budget.budget_id, "tenant_id": budget.tenant_id,
            "each": budget.each, "key": key, "period": budget.period.value,
            "metric": budget.metric.value, "mode": budget.mode.value,
            "limit": _money(budget.limit), "spent": _money(Decimal(spent)),
            "percent": _money(percent_of(Decimal(spent), budget.limit)), "status": status,
            "last_seen": last_seen.isoformat(), "idle_until": (last_seen + idle).isoformat(),
        })
    return sorted(out, key=lambda v: (-Decimal(v["percent"]), v["key"]))


def near_limits(views: Iterable[dict[str, Any]], *, top: int = 20,
                at_least: Decimal = Decimal(50)) -> list[dict[str, Any]]:
    """The key views at or above ``at_least`` percent of their limit, nearest first."""
    near = [v for v in views if Decimal(v["percent"]) >= at_least]
    return sorted(near, key=lambda v: (-Decimal(v["percent"]), v["budget_id"], v["key"]))[:top]
