"""Re-pricing stored events after a catalog correction, with an audit trail.

Works one UTC day at a time, so memory is bounded by the busiest day, never the range.

Rollups stay exact while the stream keeps inserting into the same day: nothing is deleted
and nothing is rebuilt. Corrected ledger rows are attached from a staging table (an ATTACH
PARTITION does not fire the materialized views, so the rollups do not count the event a
second time), and the cost difference of each rollup row goes into the SummingMergeTree
rollups as a delta row (tokens and events 0). Sums are commutative: an insert that lands
anywhere in between is counted once, by its own materialized-view rows.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pipeline.core.catalog import Catalog
from pipeline.core.events import cache_writes_1h
from pipeline.core.pricing import TokenCounts, cost_lines
from pipeline.errors import PricingError
from pipeline.store.client import Store
from pipeline.store.sink import USAGE_COLUMNS

AUDIT_COLUMNS = ("event_id", "tenant_id", "timestamp", "old_price_version",
                 "new_price_version", "old_total_cost", "new_total_cost", "repriced_at")
_COST = ("input_cost", "cache_read_cost", "cache_write_cost", "output_cost", "reasoning_cost",
         "total_cost", "saved_cost", "currency", "price_version", "priced_model")
_DIMS = ("tenant_id", "project_id", "feature", "provider", "model", "task_type", "value_tier")
_ZERO_SUMS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
              "output_tokens", "reasoning_output_tokens", "value_units", "events")
_INDEX = {c: i for i, c in enumerate(USAGE_COLUMNS)}
# delta blocks can repeat on purpose (a correction undone and done again): no insert dedup
_NO_DEDUP = {"insert_deduplicate": 0}

# called as hook(stage, day) at "read" (rows read, nothing written) and "ledger" (ledger
# written, rollups not yet): tests interleave inserts there
Hook = Callable[[str, date], None]

Delta = dict[tuple[Any, ...], list[Decimal]]


def day_slices(start: datetime, end: datetime, days: list[date]
               ) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) cut to each of ``days`` (UTC dates)."""
    lo, hi = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
    for d in days:
        midnight = datetime.combine(d, datetime.min.time(), tzinfo=timezone.utc)
        yield max(lo, midnight), min(hi, midnight + timedelta(days=1))


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def reprice(store: Store, catalog: Catalog, start: datetime, end: datetime, now: datetime,
            *, dry_run: bool, hook: Hook | None = None) -> dict[str, Any]:
    """Recompute costs from stored token counts; write corrected rows unless ``dry_run``.

    Corrected rows replace the old ones in the ReplacingMergeTree ledger; the hour and day
    rollups receive the cost differences, so they keep agreeing with the exact ledger.
    """
    diff: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    changed_total = unpriced = 0
    staging: str | None = None
    try:
        # only days holding events: a range of centuries is not 36,500 empty queries
        days = [d for (d,) in store.rows(
            f"SELECT DISTINCT toDate(timestamp) AS d FROM {store.database}.usage_events "
            "WHERE timestamp >= %(start)s AND timestamp < %(end)s ORDER BY d",
            parameters={"start": start, "end": end})]
        for day_start, day_end in day_slices(start, end, days):
            rows = store.query(
                f"SELECT {', '.join(USAGE_COLUMNS)} FROM {store.database}.usage_events FINAL "
                "WHERE timestamp >= %(start)s AND timestamp < %(end)s",
                parameters={"start": day_start, "end": day_end}).result_rows
            changed, audit, skipped = _reprice_rows(rows, catalog, now, diff)
            unpriced += skipped
            changed_total += len(changed)
            if hook is not None:
                hook("read", day_start.date())
            if not changed or dry_run:
                continue
            if staging is None:
                staging = f"reprice_staging_{uuid.uuid4().hex[:12]}"
                store.command(f"CREATE TABLE {store.database}.{staging} "
                              f"AS {store.database}.usage_events")
            _write_ledger(store, staging, changed)
            store.insert("reprice_audit", audit, AUDIT_COLUMNS, settings=_NO_DEDUP)
            if hook is not None:
                hook("ledger", day_start.date())
            _write_deltas(store, rows, changed)
    finally:
        if staging is not None:
            store.command(f"DROP TABLE IF EXISTS {store.database}.{staging} SYNC")
    return {
        "dry_run": dry_run, "events_repriced": changed_total, "unpriced": unpriced,
        "tenants": [{"tenant_id": t, "old_cost": format(o, "f"), "new_cost": format(n, "f"),
                     "difference": format(n - o, "f")} for t, (o, n) in sorted(diff.items())],
    }


def _reprice_rows(rows: Any, catalog: Catalog, now: datetime,
                  diff: dict[str, list[Decimal]]
                  ) -> tuple[list[list[Any]], list[list[Any]], int]:
    """Corrected rows (and their audit rows) of the rows whose price changed; adds to ``diff``."""
    index = _INDEX
    changed: list[list[Any]] = []
    audit: list[list[Any]] = []
    unpriced = 0
    for stored in rows:
        row = list(stored)
        ts = row[index["timestamp"]]
        try:
            model, version = catalog.price_version(row[index["model"]], _utc(ts),
                                                    row[index["provider"]])
        except PricingError:
            unpriced += 1
            continue
        writes = row[index["cache_creation_input_tokens"]]
        lines = cost_lines(
            TokenCounts(row[index["input_tokens"]], row[index["output_tokens"]],
                        row[index["cache_read_input_tokens"]], writes,
                        row[index["reasoning_output_tokens"]],
                        # rows stored before 007 read 0: the legacy attribute decides, as
                        # it did in the meter
                        cache_writes_1h(writes, row[index["cache_creation_1h_input_tokens"]],
                                        row[index["attributes"]],
                                        lists_1h_price=version.cache_write_1h is not None)),
            model, version, currency=catalog.currency,
            service_tier=row[index["service_tier"]], cache_hit=bool(row[index["cache_hit"]]))
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
    return changed, audit, unpriced


def rollup_deltas(old_rows: Any, changed: list[list[Any]]) -> tuple[Delta, Delta]:
    """Per (hour, dims) and (day, dims): [total_cost, saved_cost] new minus old."""
    index = _INDEX
    old = {(r[index["tenant_id"]], r[index["event_id"]]): r for r in old_rows}
    hourly: Delta = defaultdict(lambda: [Decimal(0), Decimal(0)])
    daily: Delta = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for new in changed:
        before = old[(new[index["tenant_id"]], new[index["event_id"]])]
        ts = _utc(new[index["timestamp"]])
        dims = tuple(new[index[d]] for d in _DIMS)
        cost = new[index["total_cost"]] - before[index["total_cost"]]
        saved = new[index["saved_cost"]] - before[index["saved_cost"]]
        for acc, bucket in ((hourly, ts.replace(minute=0, second=0, microsecond=0)),
                            (daily, ts.date())):
            acc[(bucket, *dims)][0] += cost
            acc[(bucket, *dims)][1] += saved
    return hourly, daily


def _write_ledger(store: Store, staging: str, changed: list[list[Any]]) -> None:
    """Add the corrected rows to the ledger without firing the rollups' views."""
    db = store.database
    store.command(f"TRUNCATE TABLE {db}.{staging}")
    store.insert(staging, changed, USAGE_COLUMNS, settings=_NO_DEDUP)
    for (partition,) in store.rows(f"SELECT DISTINCT _partition_id FROM {db}.{staging}"):
        # attached parts get newer block numbers: the corrected rows win in FINAL and merges
        store.command(f"ALTER TABLE {db}.usage_events ATTACH PARTITION ID '{partition}' "
                      f"FROM {db}.{staging}")


def _write_deltas(store: Store, old_rows: Any, changed: list[list[Any]]) -> None:
    """Insert the cost differences into the hour and day rollups."""
    hourly, daily = rollup_deltas(old_rows, changed)
    cols = ("total_cost", "saved_cost", *_ZERO_SUMS)
    zeros = [0] * len(_ZERO_SUMS)
    for table, bucket, deltas in (("usage_hourly", "hour", hourly),
                                  ("usage_daily", "day", daily)):
        rows = [[*key, cost, saved, *zeros] for key, (cost, saved) in deltas.items()]
        store.insert(table, rows, (bucket, *_DIMS, *cols), settings=_NO_DEDUP)
