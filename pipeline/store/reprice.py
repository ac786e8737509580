"""Re-pricing stored events after a catalog correction, with an audit trail."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.catalog import Catalog
from pipeline.errors import PricingError
from pipeline.pricing import TokenCounts, cost_lines
from pipeline.store.client import Store
from pipeline.store.sink import USAGE_COLUMNS

AUDIT_COLUMNS = ("event_id", "tenant_id", "timestamp", "old_price_version",
                 "new_price_version", "old_total_cost", "new_total_cost", "repriced_at")
_COST = ("input_cost", "cache_read_cost", "cache_write_cost", "output_cost", "reasoning_cost",
         "total_cost", "saved_cost", "currency", "price_version", "priced_model")


def reprice(store: Store, catalog: Catalog, start: datetime, end: datetime, now: datetime,
            *, dry_run: bool) -> dict[str, Any]:
    """Recompute costs from stored token counts; write corrected rows unless ``dry_run``.

    Corrected rows replace the old ones in the ReplacingMergeTree ledger; the hour and day
    rollups of the touched days are then recomputed from the exact ledger, so they agree.
    """
    db = store.database
    result = store.query(
        f"SELECT {', '.join(USAGE_COLUMNS)} FROM {db}.usage_events FINAL "
        "WHERE timestamp >= %(start)s AND timestamp < %(end)s",
        parameters={"start": start, "end": end})
    index = {c: i for i, c in enumerate(USAGE_COLUMNS)}
    changed: list[list[Any]] = []
    audit: list[list[Any]] = []
    diff: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    unpriced = 0
    for row in result.result_rows:
        row = list(row)
        ts = row[index["timestamp"]]
        ts_aware = ts if ts.tzinfo else ts.replace(tzinfo=now.tzinfo)
        try:
            model, version = catalog.price_version(row[index["model"]], ts_aware)
        except PricingError:
            unpriced += 1
            continue
        lines = cost_lines(
            TokenCounts(row[index["input_tokens"]], row[index["output_tokens"]],
                        row[index["cache_read_input_tokens"]],
                        row[index["cache_creation_input_tokens"]],
                        row[index["reasoning_output_tokens"]]),
            model, version, currency=catalog.currency,
            service_tier=row[index["service_tier"]], cache_hit=bool(row[index["cache_hit"]]),
            cache_ttl=row[index["attributes"]].get("cache_ttl", "5m"))
        old_total = row[index["total_cost"]]
        if lines.total_cost == old_total and lines.saved_cost == row[index["saved_cost"]]:
            continue
        tenant = row[index["tenant_id"]]
        diff[tenant][0] += old_total
        diff[tenant][1] += lines.total_cost
        audit.append([row[index["event_id"]], tenant, ts, row[index["price_version"]],
                      lines.price_version, old_total, lines.total_cost, now])
        for name in _COST:
            row[index[name]] = getattr(lines, name)
        row[index["ingested_at"]] = now
        changed.append(row)
    if changed and not dry_run:
        store.insert("usage_events", changed, USAGE_COLUMNS)
        store.insert("reprice_audit", audit, AUDIT_COLUMNS)
        _rebuild_rollups(store, {r[index["timestamp"]].date() for r in changed})
    return {
        "dry_run": dry_run, "events_repriced": len(changed), "unpriced": unpriced,
        "tenants": [{"tenant_id": t, "old_cost": format(o, "f"), "new_cost": format(n, "f"),
                     "difference": format(n - o, "f")} for t, (o, n) in sorted(diff.items())],
    }


_DIMS = "tenant_id, project_id, feature, provider, model, task_type, value_tier"
_SUMS = ("total_cost", "saved_cost", "input_tokens", "cache_read_input_tokens",
         "cache_creation_input_tokens", "output_tokens", "reasoning_output_tokens",
         "value_units")


def _rebuild_rollups(store: Store, days: set[Any]) -> None:
    """Recompute the hour and day rollups of ``days`` from the exact ledger."""
    db = store.database
    sums = ", ".join(f"sum({c})" for c in _SUMS) + ", count()"
    cols = ", ".join(_SUMS) + ", events"
    # identical blocks may be re-inserted on purpose here: turn insert dedup off
    no_dedup = {"insert_deduplicate": 0, "mutations_sync": 2}
    for day in sorted(days):
        params = {"day": day}
        for table, bucket, expr in (("usage_hourly", "hour", "toStartOfHour(timestamp)"),
                                    ("usage_daily", "day", "toDate(timestamp)")):
            store.command(f"ALTER TABLE {db}.{table} DELETE WHERE toDate({bucket}) = "
                          f"toDate('{day.isoformat()}')", settings=no_dedup)
            store.query(
                f"INSERT INTO {db}.{table} ({bucket}, {_DIMS}, {cols}) "
                f"SELECT {expr} AS b, {_DIMS}, {sums} FROM {db}.usage_events FINAL "
                f"WHERE toDate(timestamp) = %(day)s GROUP BY b, {_DIMS}",
                settings=no_dedup, parameters=params)
