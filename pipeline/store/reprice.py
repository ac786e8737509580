"""Re-pricing stored events after a catalog correction, with an audit trail.

Works one UTC day at a time, so memory is bounded by the busiest day, never the range.

Rollups stay exact while the stream keeps inserting into the same day: nothing is deleted
and nothing is rebuilt. Corrected ledger rows are attached from a staging table (an ATTACH
PARTITION does not fire the materialized views, so the rollups do not count the event a
second time), and the cost difference of each rollup row goes into the SummingMergeTree
rollups as a delta row (tokens and events 0). Sums are commutative: an insert that lands
anywhere in between is counted once, by its own materialized-view rows.

Crash-safe and repeatable: a day's corrections go to the journal (``reprice_audit``) first,
under a batch token derived from the exact change set; then the rollup deltas, inserted with
``insert_deduplication_token`` = batch; then the ledger rows. A journal entry is *pending*
while the ledger row still carries the ``ingested_at`` the entry started from (every ledger
write moves it on). The next run re-sends each pending batch's deltas under the batch's own
token (ClickHouse drops them if they landed; ``reprice_batches`` records the batches whose
deltas are known to be in) and counts them in what the rollups hold for that row, so a crash
at any step, a re-run, or two identical runs at once count every correction exactly once.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, Overflow
from typing import Any

from pipeline.core.catalog import Catalog, ModelPrice, PriceVersion
from pipeline.core.events import CostLines, cache_writes_1h
from pipeline.core.numbers import MAX_EVENT_COST
from pipeline.core.pricing import TokenCounts, cost_lines
from pipeline.errors import PricingError
from pipeline.store.client import Store
from pipeline.store.sink import USAGE_COLUMNS

AUDIT_COLUMNS = ("event_id", "tenant_id", "timestamp", "old_price_version",
                 "new_price_version", "old_total_cost", "new_total_cost", "repriced_at",
                 "batch", "old_ingested_at", "old_saved_cost", "new_saved_cost")
_COST = ("input_cost", "cache_read_cost", "cache_write_cost", "output_cost", "reasoning_cost",
         "total_cost", "saved_cost", "currency", "price_version", "priced_model")
_DIMS = ("tenant_id", "project_id", "feature", "provider", "model", "task_type", "value_tier")
_ZERO_SUMS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
              "output_tokens", "reasoning_output_tokens", "value_units", "events")
_INDEX = {c: i for i, c in enumerate(USAGE_COLUMNS)}
_MS = timedelta(milliseconds=1)

# called as hook(stage, day) at "read" (rows read, nothing written), "journal" (journal
# written), "deltas" (rollup deltas in) and "ledger" (ledger written): tests interleave
# inserts and concurrent runs there
Hook = Callable[[str, date], None]

Delta = dict[tuple[Any, ...], list[Decimal]]

# one re-price per database at a time in this process: two runs that read a day apart (a
# stale-priced insert landing between their reads) would journal different batches for the
# same corrections, and no token can tell. Re-entrant: a hook may run a nested re-price.
_RUNS: dict[str, threading.RLock] = {}
_RUNS_GUARD = threading.Lock()


def _run_lock(database: str) -> threading.RLock:
    with _RUNS_GUARD:
        return _RUNS.setdefault(database, threading.RLock())


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal row: the rollups move from ``old`` to ``new`` for one event."""

    event_id: str
    tenant_id: str
    timestamp: datetime
    batch: str
    old_ingested_at: datetime
    old_version: str
    old_total: Decimal
    old_saved: Decimal
    new_version: str
    new_total: Decimal
    new_saved: Decimal

    def row(self, repriced_at: datetime) -> list[Any]:
        """The row in ``reprice_audit`` (AUDIT_COLUMNS order)."""
        return [self.event_id, self.tenant_id, self.timestamp, self.old_version,
                self.new_version, self.old_total, self.new_total, repriced_at, self.batch,
                self.old_ingested_at, self.old_saved, self.new_saved]


@dataclass(slots=True)
class DayPlan:
    """What one day needs: pending batches to finish, a new batch, corrected ledger rows."""

    pending: dict[str, list[Entry]] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    batch: str = ""
    ledger: list[list[Any]] = field(default_factory=list)
    unpriced: int = 0
    # per tenant: [stored total, corrected total] of the rows whose ledger changes
    diff: dict[str, list[Decimal]] = field(default_factory=dict)


def day_slices(start: datetime, end: datetime, days: list[date]
               ) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) cut to each of ``days`` (UTC dates)."""
    lo, hi = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
    for d in days:
        midnight = datetime.combine(d, datetime.min.time(), tzinfo=timezone.utc)
        yield max(lo, midnight), min(hi, midnight + timedelta(days=1))


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def batch_token(entries: Sequence[Entry]) -> str:
    """A token naming exactly this change set: a re-run or a twin run derives the same one.

    ``old_ingested_at`` names the ledger row's version (every correction moves it on), so
    the same correction made again after being undone is a new batch, not a duplicate.
    """
    h = hashlib.blake2b(digest_size=16)
    for e in sorted(entries, key=lambda e: (e.tenant_id, e.event_id)):
        h.update(repr((e.tenant_id, e.event_id, _utc(e.old_ingested_at).isoformat(),
                       e.old_version, str(e.old_total), str(e.old_saved), e.new_version,
                       str(e.new_total), str(e.new_saved))).encode())
        h.update(b"\n")
    return f"reprice-{h.hexdigest()}"


def _price(row: list[Any], catalog: Catalog) -> CostLines | None:
    """The row's costs under ``catalog``; None when the catalog does not price it."""
    index = _INDEX
    try:
        model, version = catalog.price_version(row[index["model"]], _utc(row[index["timestamp"]]),
                                                row[index["provider"]])
    except PricingError:
        return None
    writes = row[index["cache_creation_input_tokens"]]
    try:
        lines = _lines(row, model, version, writes, catalog)
    except Overflow:  # a rate past Decimal's exponent range, as the meter refuses it
        return None
    if not (lines.total_cost < MAX_EVENT_COST and lines.saved_cost < MAX_EVENT_COST):
        return None  # a price past what one call may cost: kept as stored, as the meter refuses
    return lines


def _lines(row: list[Any], model: ModelPrice, version: PriceVersion, writes: int,
           catalog: Catalog) -> CostLines:
    index = _INDEX
    return cost_lines(
        TokenCounts(row[index["input_tokens"]], row[index["output_tokens"]],
                    row[index["cache_read_input_tokens"]], writes,
                    row[index["reasoning_output_tokens"]],
                    # rows stored before 007 read 0: the legacy attribute decides, as it did
                    # in the meter
                    cache_writes_1h(writes, row[index["cache_creation_1h_input_tokens"]],
                                    row[index["attributes"]],
                                    lists_1h_price=version.cache_write_1h is not None)),
        model, version, currency=catalog.currency,
        service_tier=row[index["service_tier"]], cache_hit=bool(row[index["cache_hit"]]))


def plan_day(rows: Any, journal: Sequence[Entry], catalog: Catalog, now: datetime) -> DayPlan:
    """The day's plan from its ledger rows (FINAL) and journal entries."""
    index = _INDEX
    plan = DayPlan()
    # chDB answers naive UTC, a server over HTTP may answer aware: compare as aware UTC
    current = {(r[index["tenant_id"]], r[index["event_id"]]): _utc(r[index["ingested_at"]])
               for r in rows}
    pending_of: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for e in journal:
        if current.get((e.tenant_id, e.event_id)) == _utc(e.old_ingested_at):
            pending_of[(e.tenant_id, e.event_id)].append(e)
            plan.pending.setdefault(e.batch, []).append(e)
    for stored in rows:
        row = list(stored)
        key = (row[index["tenant_id"]], row[index["event_id"]])
        stored_total, stored_saved = row[index["total_cost"]], row[index["saved_cost"]]
        # what the rollups hold for this row once every pending batch's deltas are in
        pending = sorted(pending_of.get(key, []), key=lambda e: e.batch)
        basis_total = stored_total + sum((e.new_total - e.old_total for e in pending), Decimal(0))
        basis_saved = stored_saved + sum((e.new_saved - e.old_saved for e in pending), Decimal(0))
        basis_version = pending[-1].new_version if pending else row[index["price_version"]]
        lines = _price(row, catalog)
        if lines is None:
            plan.unpriced += 1
            # unpriced now: the ledger stays as stored, the rollups must agree with it
            target = (row[index["price_version"]], stored_total, stored_saved)
        else:
            target = (lines.price_version, lines.total_cost, lines.saved_cost)
        if (target[1], target[2]) != (basis_total, basis_saved):
            plan.entries.append(Entry(
                key[1], key[0], row[index["timestamp"]], "", row[index["ingested_at"]],
                basis_version, basis_total, basis_saved, *target))
        if lines is None or (lines.total_cost, lines.saved_cost) == (stored_total, stored_saved):
            continue
        acc = plan.diff.setdefault(key[0], [Decimal(0), Decimal(0)])
        acc[0] += stored_total
        acc[1] += lines.total_cost
        for name in _COST:
            row[index[name]] = getattr(lines, name)
        # strictly newer than the stored version, so pending entries stop being pending
        row[index["ingested_at"]] = max(now, _utc(row[index["ingested_at"]]) + _MS)
        plan.ledger.append(row)
    if plan.entries:
        plan.batch = batch_token(plan.entries)
        plan.entries = [Entry(e.event_id, e.tenant_id, e.timestamp, plan.batch,
                              *_tail(e)) for e in plan.entries]
    return plan


def _tail(e: Entry) -> tuple[Any, ...]:
    return (e.old_ingested_at, e.old_version, e.old_total, e.old_saved, e.new_version,
            e.new_total, e.new_saved)


def rollup_deltas(entries: Sequence[Entry], rows: Any) -> tuple[Delta, Delta]:
    """Per (hour, dims) and (day, dims): [total_cost, saved_cost] new minus old."""
    index = _INDEX
    dims_of = {(r[index["tenant_id"]], r[index["event_id"]]): tuple(r[index[d]] for d in _DIMS)
               for r in rows}
    hourly: Delta = defaultdict(lambda: [Decimal(0), Decimal(0)])
    daily: Delta = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for e in entries:
        ts = _utc(e.timestamp)
        dims = dims_of[(e.tenant_id, e.event_id)]
        cost, saved = e.new_total - e.old_total, e.new_saved - e.old_saved
        for acc, bucket in ((hourly, ts.replace(minute=0, second=0, microsecond=0)),
                            (daily, ts.date())):
            acc[(bucket, *dims)][0] += cost
            acc[(bucket, *dims)][1] += saved
    return hourly, daily


def reprice(store: Store, catalog: Catalog, start: datetime, end: datetime, now: datetime,
            *, dry_run: bool, hook: Hook | None = None) -> dict[str, Any]:
    """Recompute costs from stored token counts; write corrected rows unless ``dry_run``.

    Corrected rows replace the old ones in the ReplacingMergeTree ledger; the hour and day
    rollups receive the cost differences, so they keep agreeing with the exact ledger.
    """
    with _run_lock(store.database):
        return _reprice(store, catalog, start, end, now, dry_run=dry_run, hook=hook)


def _reprice(store: Store, catalog: Catalog, start: datetime, end: datetime, now: datetime,
             *, dry_run: bool, hook: Hook | None) -> dict[str, Any]:
    diff: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    changed_total = unpriced = 0
    staging: str | None = None
    db = store.database
    try:
        # only days holding events: a range of centuries is not 36,500 empty queries
        days = [d for (d,) in store.rows(
            f"SELECT DISTINCT toDate(timestamp) AS d FROM {db}.usage_events "
            "WHERE timestamp >= %(start)s AND timestamp < %(end)s ORDER BY d",
            parameters={"start": start, "end": end})]
        for day_start, day_end in day_slices(start, end, days):
            day = day_start.date()
            window = {"start": day_start, "end": day_end}
            rows = store.query(
                f"SELECT {', '.join(USAGE_COLUMNS)} FROM {db}.usage_events FINAL "
                "WHERE timestamp >= %(start)s AND timestamp < %(end)s",
                parameters=window).result_rows
            plan = plan_day(rows, _journal(store, window), catalog, now)
            unpriced += plan.unpriced
            changed_total += len(plan.ledger)
            for tenant, (old, new) in plan.diff.items():
                diff[tenant][0] += old
                diff[tenant][1] += new
            if hook is not None:
                hook("read", day)
            if dry_run:
                continue
            # a crashed or concurrent run's deltas, under its own token: in exactly once
            done = _batches_done(store, day, list(plan.pending))
            for batch, entries in sorted(plan.pending.items()):
                if batch not in done:
                    _write_deltas(store, batch, day, entries, rows, now)
            if plan.entries:
                store.insert("reprice_audit", [e.row(now) for e in plan.entries], AUDIT_COLUMNS,
                             settings={"insert_deduplication_token": f"{plan.batch}:journal"})
                if hook is not None:
                    hook("journal", day)
                _write_deltas(store, plan.batch, day, plan.entries, rows, now)
                if hook is not None:
                    hook("deltas", day)
            if plan.ledger:
                if staging is None:
                    staging = f"reprice_staging_{uuid.uuid4().hex[:12]}"
                    store.command(f"CREATE TABLE {db}.{staging} AS {db}.usage_events")
                _write_ledger(store, staging, plan.ledger)
                if hook is not None:
                    hook("ledger", day)
    finally:
        if staging is not None:
            store.command(f"DROP TABLE IF EXISTS {db}.{staging} SYNC")
    return {
        "dry_run": dry_run, "events_repriced": changed_total, "unpriced": unpriced,
        "tenants": [{"tenant_id": t, "old_cost": format(o, "f"), "new_cost": format(n, "f"),
                     "difference": format(n - o, "f")} for t, (o, n) in sorted(diff.items())],
    }


def _journal(store: Store, window: dict[str, datetime]) -> list[Entry]:
    """The day's journal entries (rows from before migration 008 have no batch)."""
    return [Entry(*r) for r in store.rows(
        "SELECT event_id, tenant_id, timestamp, batch, old_ingested_at, old_price_version, "
        "old_total_cost, old_saved_cost, new_price_version, new_total_cost, new_saved_cost "
        f"FROM {store.database}.reprice_audit "
        "WHERE timestamp >= %(start)s AND timestamp < %(end)s AND batch != ''",
        parameters=window)]


def _batches_done(store: Store, day: date, batches: list[str]) -> set[str]:
    """Which of ``batches`` have their rollup deltas recorded as in."""
    if not batches:
        return set()
    return {b for (b,) in store.rows(
        f"SELECT DISTINCT batch FROM {store.database}.reprice_batches "
        "WHERE day = %(day)s AND stage = 'deltas' AND has(%(batches)s, batch)",
        parameters={"day": day, "batches": batches})}


def _write_ledger(store: Store, staging: str, changed: list[list[Any]]) -> None:
    """Add the corrected rows to the ledger without firing the rollups' views."""
    db = store.database
    store.command(f"TRUNCATE TABLE {db}.{staging}")
    # a fresh token: a staging block equal to an earlier one is not a duplicate
    store.insert(staging, changed, USAGE_COLUMNS,
                 settings={"insert_deduplication_token": f"staging-{uuid.uuid4().hex}"})
    for (partition,) in store.rows(f"SELECT DISTINCT _partition_id FROM {db}.{staging}"):
        # attached parts get newer block numbers: the corrected rows win in FINAL and merges
        store.command(f"ALTER TABLE {db}.usage_events ATTACH PARTITION ID '{partition}' "
                      f"FROM {db}.{staging}")


def _write_deltas(store: Store, batch: str, day: date, entries: Sequence[Entry], rows: Any,
                  now: datetime) -> None:
    """Insert a batch's cost differences into the hour and day rollups, once."""
    hourly, daily = rollup_deltas(entries, rows)
    cols = ("total_cost", "saved_cost", *_ZERO_SUMS)
    zeros = [0] * len(_ZERO_SUMS)
    for table, bucket, deltas in (("usage_hourly", "hour", hourly),
                                  ("usage_daily", "day", daily)):
        out = [[*key, cost, saved, *zeros] for key, (cost, saved) in deltas.items()]
        # ClickHouse keeps the first insert under a token and drops any repeat of it
        store.insert(table, out, (bucket, *_DIMS, *cols),
                     settings={"insert_deduplication_token": batch})
    store.insert("reprice_batches", [[batch, day, "deltas", now]],
                 ("batch", "day", "stage", "at"),
                 settings={"insert_deduplication_token": f"{batch}:deltas"})
