"""A worker's live state for the partitions it owns: dedup ids, open windows, watermarks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pipeline.core.dedup import DedupIndex
from pipeline.core.spend import WINDOW_SIZE, WINDOWS, SpendTotals, WindowKind, window_start
from pipeline.store.client import Store
from pipeline.stream.ports import LedgerReads, ledger_reads

log = logging.getLogger(__name__)
WindowKey = tuple[str, WindowKind, datetime]


def as_utc(ts: datetime) -> datetime:
    """chDB hands back naive UTC datetimes; make them aware."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


@dataclass
class PartitionState:
    """Live state of one source partition."""

    dedup: DedupIndex
    watermark: datetime | None = None
    windows: dict[WindowKey, SpendTotals] = field(default_factory=dict)

    def add(self, tenant: str, ts: datetime, cost: Decimal, saved: Decimal,
            tokens: tuple[int, int, int, int, int], units: Decimal,
            kinds: tuple[WindowKind, ...] = WINDOWS) -> None:
        """Count one event in its windows of ``kinds`` (those still open for it)."""
        self.add_at(tenant, {kind: window_start(kind, ts) for kind in kinds}, cost, saved,
                    tokens, units)

    def add_at(self, tenant: str, starts: dict[WindowKind, datetime], cost: Decimal,
               saved: Decimal, tokens: tuple[int, int, int, int, int], units: Decimal) -> None:
        """Count one event in the windows starting at ``starts`` (see open_window_starts)."""
        windows = self.windows
        for kind, start in starts.items():
            key = (tenant, kind, start)
            totals = windows.get(key)
            if totals is None:
                totals = windows[key] = SpendTotals()
            totals.add_row(cost, saved, tokens, units)

    def expire(self, grace: timedelta) -> None:
        """Drop windows closed for longer than ``grace`` (final; the ledger has them)."""
        if self.watermark is None:
            return
        wm = self.watermark
        stale = [k for k in self.windows if k[2] + WINDOW_SIZE[k[1]] + grace <= wm]
        for k in stale:
            del self.windows[k]
        self.dedup.expire(wm)


class LiveState:
    """Partition -> PartitionState, rebuilt from the ledger when partitions are assigned."""

    def __init__(self, *, grace: timedelta, horizon: timedelta, max_ids: int) -> None:
        self.grace = grace
        self.horizon = horizon
        self.max_ids = max_ids
        self.partitions: dict[int, PartitionState] = {}

    def get(self, partition: int) -> PartitionState:
        """State of a partition (empty when never assigned, e.g. in unit tests)."""
        st = self.partitions.get(partition)
        if st is None:
            st = self.partitions[partition] = PartitionState(
                DedupIndex(self.max_ids, self.horizon))
        return st

    def revoke(self, partitions: set[int]) -> None:
        """Forget partitions another worker now owns."""
        for p in partitions:
            self.partitions.pop(p, None)

    def rebuild(self, source: LedgerReads | Store, partitions: set[int], now: datetime,
                partition_of: Callable[[str], int] | None = None) -> None:
        """Load dedup ids, watermarks and open windows of ``partitions`` from the ledger.

        ``source`` is the ledger (any LedgerReads), or a Store read through ClickHouseLedger.

        With ``partition_of``, a changed partition count is detected (tenants stored under a
        partition that is no longer theirs): dedup then checks every id older than now
        against the ledger (by tenant, not partition), and open windows are summed from every
        partition, so an event stored under its old partition is still counted once.
        """
        ledger = ledger_reads(source)
        marks = ledger.watermarks(partitions)
        stored = (ledger.tenant_partitions(now - self.horizon)
                  if partition_of is not None else [])
        relaid = partition_of is not None and any(partition_of(t) != q for t, q in stored)
        if relaid:
            log.warning("tenants are stored under partitions that are no longer theirs (the "
                        "partition count changed): older event ids are checked in the ledger")
        if relaid:
            # a partition's events may be stored under others: judge lateness by them all
            every = ledger.watermarks({q for _, q in stored} | partitions)
            latest = max(every.values(), default=None)
            marks = {p: latest for p in partitions} if latest is not None else {}
        for p in partitions:
            # bounded by the clock, as when metering: a far-ahead event moves no lateness
            wm = min(as_utc(marks[p]), now) if p in marks else None
            since = (wm or now) - self.horizon
            ids = ledger.recent_ids(p, since, self.max_ids)
            dedup = DedupIndex(self.max_ids, self.horizon, watermark=since)
            for eid, ts in ids:
                dedup.add(eid, as_utc(ts))
            if len(ids) >= self.max_ids:
                dedup.watermark = as_utc(ids[-1][1])
            if relaid:
                dedup.watermark = now  # ids stored under another partition: ask the ledger
            st = PartitionState(dedup=dedup, watermark=wm)
            if wm is not None:
                for kind in WINDOWS:
                    open_from = window_start(kind, wm - self.grace)
                    for row in ledger.window_sums(None if relaid else p, kind, open_from):
                        if relaid and partition_of is not None and partition_of(row[0]) != p:
                            continue
                        st.windows[(row[0], kind, as_utc(row[1]))] = _totals(row[2:])
            self.partitions[p] = st
        log.info("rebuilt live state of partitions %s from the ledger", sorted(partitions))

    def window(self, tenant: str, kind: WindowKind, at: datetime) -> SpendTotals | None:
        """Totals of the tenant's window containing ``at``, from any owned partition."""
        key = (tenant, kind, window_start(kind, at))
        for st in self.partitions.values():
            totals = st.windows.get(key)
            if totals is not None:
                return totals
        return None


def _totals(sums: Any) -> SpendTotals:
    cost, saved, i, cr, cw, o, r, units, n = sums
    t = SpendTotals()
    t.add_row(Decimal(cost), Decimal(saved), (int(i), int(cr), int(cw), int(o), int(r)),
              Decimal(units), int(n))
    return t
