"""The spend-velocity baseline read: per-grain spend of one UTC hour of the week, past weeks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pipeline.core.anomaly import WEEKS, grain_of, hour_start
from pipeline.store.client import Store
from pipeline.store.ledger import _METRIC_SQL, _scope


def hour_spend(store: Store, budget: Any, hour: datetime, weeks: int = WEEKS,
               grain_s: int | None = None) -> list[tuple[datetime, Decimal]]:
    """(UTC grain start, amount) of a budget scope's metric in the same UTC hour of the week
    as ``hour`` in each of the ``weeks`` weeks before it, one query (FINAL: a re-delivered
    event counts once). Grains with no events have no row: they are zero spend."""
    start = hour_start(hour)
    grain = grain_s if grain_s is not None else grain_of(budget.anomaly.windows_s)
    where, params = _scope(budget, start - timedelta(weeks=weeks), start)
    params.update(dow=start.isoweekday(), hod=start.hour)
    rows = store.rows(
        f"SELECT toStartOfInterval(timestamp, INTERVAL {int(grain)} SECOND) AS g, "
        f"sum({_METRIC_SQL[budget.metric.value]}) "
        f"FROM {store.database}.usage_events FINAL WHERE {where} "
        "AND toDayOfWeek(timestamp) = %(dow)s AND toHour(timestamp) = %(hod)s "
        "GROUP BY g ORDER BY g",
        parameters=params,
    )
    return [(g.replace(tzinfo=timezone.utc) if g.tzinfo is None else g, Decimal(amount))
            for g, amount in rows]
