"""Ledger reads behind the dashboard. Totals come from the hourly/daily rollups, which equal
the exact FINAL ledger totals (see sql/002_rollups.sql); the per-minute rate reads raw rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pipeline.core.budgets import Budget
from pipeline.core.dashboard import ForecastLine
from pipeline.store import ledger
from pipeline.store.client import Store
from pipeline.store.queries import json_safe
from pipeline.store.report import utc_period_start


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _json_rows(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [[json_safe(v) for v in r] for r in rows]


def overview(store: Store, now: datetime) -> dict[str, Any]:
    """Spend today and this month (UTC), top tenants, breaches in 24 h, dead letters by reason."""
    db = store.database
    day = utc_period_start("day", now)
    month = utc_period_start("month", now)
    p = {"day": day, "month": month, "since": now - timedelta(hours=24)}
    today, month_cost, today_events, month_events = store.rows(
        f"SELECT sumIf(total_cost, hour >= %(day)s), sum(total_cost), "
        f"sumIf(events, hour >= %(day)s), sum(events) FROM {db}.usage_hourly "
        "WHERE hour >= %(month)s", parameters=p)[0]
    top = store.rows(
        f"SELECT tenant_id, sum(total_cost) AS c, sum(events) FROM {db}.usage_hourly "
        "WHERE hour >= %(month)s GROUP BY tenant_id ORDER BY c DESC, tenant_id LIMIT 10",
        parameters=p)
    breaches = store.rows(
        f"SELECT kind, count() FROM {db}.budget_breaches FINAL WHERE emitted_at >= %(since)s "
        "GROUP BY kind ORDER BY kind", parameters=p)
    dlq = store.rows(f"SELECT reason_code, count() AS n FROM {db}.dlq_events "
                     "GROUP BY reason_code ORDER BY n DESC, reason_code")
    return {
        "spend_today": json_safe(today), "spend_month": json_safe(month_cost),
        "events_today": int(today_events), "events_month": int(month_events),
        "top_tenants": _json_rows(top),
        "breaches_24h": {kind: int(n) for kind, n in breaches},
        "dlq_by_reason": {reason: int(n) for reason, n in dlq},
    }


def minute_rows(store: Store, now: datetime, minutes: int = 60) -> list[tuple[datetime, int,
                                                                            Decimal]]:
    """(minute, events, cost) by event time over the last ``minutes`` minutes, this one included.

    Raw rows without FINAL: a chart of the rate, cheap enough to poll; a replayed duplicate
    shows here until merged but never in the totals, which come from the exact rollups.
    """
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    rows = store.rows(
        f"SELECT toStartOfMinute(timestamp) AS m, count(), sum(total_cost) "
        f"FROM {store.database}.usage_events WHERE timestamp >= %(s)s GROUP BY m",
        parameters={"s": start})
    return [(_utc(m), int(n), Decimal(c)) for m, n, c in rows]


def tenant_spend(store: Store, tenant: str, now: datetime) -> dict[str, Any]:
    """A tenant's spend by hour (48 h), by day (30 days) and by model and feature (30 days)."""
    db = store.database
    hour = now.replace(minute=0, second=0, microsecond=0)
    p = {"t": tenant, "h": hour - timedelta(hours=47), "d": (now - timedelta(days=29)).date()}
    by = "WHERE tenant_id = %(t)s AND day >= %(d)s"

    def grouped(col: str) -> list[list[Any]]:
        return _json_rows(store.rows(
            f"SELECT {col}, sum(total_cost) AS c, sum(events) FROM {db}.usage_daily {by} "
            f"GROUP BY {col} ORDER BY c DESC, {col} LIMIT 12", parameters=p))

    return {
        "hourly": _json_rows(store.rows(
            f"SELECT hour, sum(total_cost), sum(events) FROM {db}.usage_hourly "
            "WHERE tenant_id = %(t)s AND hour >= %(h)s GROUP BY hour ORDER BY hour",
            parameters=p)),
        "daily": _json_rows(store.rows(
            f"SELECT day, sum(total_cost), sum(events) FROM {db}.usage_daily {by} "
            "GROUP BY day ORDER BY day", parameters=p)),
        "by_model": grouped("model"),
        "by_feature": grouped("feature"),
    }


def latest_forecasts(store: Store, budgets: list[Budget],
                     starts: dict[str, datetime]) -> dict[str, ForecastLine]:
    """The newest stored forecast of each budget's current period."""
    if not budgets:
        return {}
    rows = store.rows(
        "SELECT budget_id, period_start, argMax(tuple(model, reason, run_at, spent, "
        "predicted_spend, lower, upper, probability_exceed, points_at, points_p50, "
        "points_lower, points_upper), "
        f"run_at) FROM {store.database}.forecasts WHERE budget_id IN %(ids)s "
        "GROUP BY budget_id, period_start",
        parameters={"ids": [b.budget_id for b in budgets]})
    out: dict[str, ForecastLine] = {}
    for budget_id, period_start, latest in rows:
        if _utc(period_start) != starts.get(budget_id):
            continue
        model, reason, run_at, spent, p50, lower, upper, prob, at, mid, lo, hi = latest
        out[budget_id] = ForecastLine(
            model=model, reason=reason, run_at=_utc(run_at), spent=spent, predicted_spend=p50,
            lower=lower,
            upper=upper, probability_exceed=prob,
            points=[(_utc(a), m, low, high) for a, m, low, high in zip(at, mid, lo, hi,
                                                                        strict=True)])
    return out


def active_keys(store: Store, budget: Budget, start: datetime, end: datetime,
                since: datetime, top: int = 20) -> list[tuple[str, Decimal, datetime]]:
    """(key, spent in [start, end), last event) of a template or run budget's keys that had an
    event since ``since``, most spent first (the exact ledger; at most ``top``)."""
    assert budget.each is not None
    where, params = ledger.scope_where(budget, start, end)
    column, extra = ledger.key_column(budget.each)
    metric = ledger.METRIC_SQL[budget.metric.value]
    db = store.database
    rows = store.rows(
        f"SELECT {column} AS k, sum({metric}) AS s, max(timestamp) FROM {db}.usage_events FINAL "
        f"WHERE {where} AND k IN (SELECT DISTINCT {column} FROM {db}.usage_events "
        f"WHERE tenant_id = %(tenant)s AND timestamp >= %(since)s AND {column} != '') "
        f"GROUP BY k ORDER BY s DESC, k LIMIT {int(top)}",
        parameters={**params, **extra, "since": since})
    return [(k, Decimal(s), _utc(last)) for k, s, last in rows]


def breaches(store: Store, tenant: str | None, limit: int,
             kind: str | None = None) -> list[dict[str, Any]]:
    """Newest breaches first (every column), optionally of one tenant and one kind;
    /api/breaches too."""
    conds, params = [], {}
    if tenant:
        conds.append("tenant_id = %(t)s")
        params["t"] = tenant
    if kind:
        conds.append("kind = %(k)s")
        params["k"] = kind
    where = f"WHERE {' AND '.join(conds)}" if conds else ""
    result = store.query(
        f"SELECT * FROM {store.database}.budget_breaches FINAL {where} "
        f"ORDER BY emitted_at DESC, breach_id LIMIT {int(limit)}", parameters=params)
    return [dict(zip(result.column_names, (json_safe(v) for v in r), strict=True))
            for r in result.result_rows]


def budget_failures(store: Store) -> dict[str, tuple[str, str]]:
    """budget_id -> (tenant_id, reason) of every budget a worker marked failed (any worker)."""
    rows = store.rows(f"SELECT budget_id, tenant_id, reason FROM {store.database}."
                      "budget_failures FINAL WHERE failed ORDER BY budget_id")
    return {budget_id: (tenant, reason) for budget_id, tenant, reason in rows}
