"""The SQL of `tokenmeter report`: a tenant's totals, daily spend, top models and features."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.core.budgets import Period, period_bounds
from pipeline.errors import ConfigError
from pipeline.store.client import Store
from pipeline.store.queries import json_safe

REPORT_PERIODS = ("day", "week", "month")


def utc_period_start(period: str, now: datetime) -> datetime:
    """Start of the current UTC day, week or month (the budgets' calendar, in UTC)."""
    if period not in REPORT_PERIODS:
        raise ConfigError(f"--period {period!r}: use day, week or month")
    return period_bounds(Period(period), ZoneInfo("UTC"), now)[0]


def report_data(store: Store, tenant: str, period: str, now: datetime) -> dict[str, Any]:
    """Totals, daily spend, top models and features, budgets and forecasts of a tenant."""
    start = utc_period_start(period, now)
    db = store.database
    p = {"t": tenant, "s": start}

    def rows(sql: str) -> list[list[Any]]:
        return [[json_safe(v) for v in r] for r in store.rows(sql, parameters=p)]

    total = rows(f"SELECT sum(total_cost), sum(saved_cost), sum(input_tokens + output_tokens), "
                 f"sum(value_units), count() FROM {db}.usage_events FINAL "
                 "WHERE tenant_id = %(t)s AND timestamp >= %(s)s")[0]
    return {
        "tenant_id": tenant, "period": period, "from": start.isoformat(),
        "to": now.isoformat(),
        "total": dict(zip(["cost", "saved_cost", "tokens", "value_units", "events"], total,
                          strict=True)),
        "daily": rows(f"SELECT day, sum(total_cost) FROM {db}.spend_daily WHERE tenant_id = "
                      "%(t)s AND day >= toDate(%(s)s) GROUP BY day ORDER BY day"),
        "models": rows(f"SELECT model, sum(total_cost) AS c, sum(events) FROM {db}.spend_daily "
                       "WHERE tenant_id = %(t)s AND day >= toDate(%(s)s) GROUP BY model "
                       "ORDER BY c DESC LIMIT 10"),
        "features": rows(f"SELECT feature, sum(total_cost) AS c, sum(events) FROM "
                         f"{db}.spend_daily WHERE tenant_id = %(t)s AND day >= toDate(%(s)s) "
                         "GROUP BY feature ORDER BY c DESC LIMIT 10"),
        "budgets": rows(f"SELECT budget_id, metric, spent, `limit`, percent, forecast_model, "
                        f"forecast_spend, forecast_probability_exceed FROM {db}.budget_status_now "
                        "WHERE tenant_id = %(t)s ORDER BY budget_id"),
    }
