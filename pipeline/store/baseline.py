"""The spend-velocity baseline read: a scope's spend and calls per hour over the past weeks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pipeline.core.anomaly import WEEKS, HourRow, hour_start
from pipeline.store.client import Store
from pipeline.store.ledger import METRIC_SQL, key_column, scope_where


def hourly_history(store: Store, budget: Any, hour: datetime,
                   weeks: int = WEEKS) -> list[HourRow]:
    """(UTC hour start, spend, calls) of a budget scope for every hour with calls in the
    ``weeks`` weeks before ``hour``, one query (FINAL: a re-delivered event counts once); a
    template's scope holds only the events that carry its key."""
    start = hour_start(hour)
    where, params = scope_where(budget, start - timedelta(weeks=weeks), start)
    if budget.each is not None:  # a template's scope: only the events that carry its key
        column, extra = key_column(budget.each)
        where += f" AND {column} != ''"
        params.update(extra)
    rows = store.rows(
        "SELECT toStartOfHour(timestamp) AS h, "
        f"sum({METRIC_SQL[budget.metric.value]}), count() "
        f"FROM {store.database}.usage_events FINAL WHERE {where} GROUP BY h ORDER BY h",
        parameters=params,
    )
    return [(h.replace(tzinfo=timezone.utc) if h.tzinfo is None else h, Decimal(amount),
             int(calls)) for h, amount, calls in rows]
