"""Staging: raw messages -> metered, placed, deduplicated, windowed rows (nothing durable yet).

Dedup is answered from memory where memory covers the event time, and by the ledger
otherwise; live state (dedup ids, watermarks, open windows) moves on at once, since a crash
loses memory too and acks wait for the ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pipeline.core.budgets import BudgetBreach
from pipeline.core.dedup import DedupIndex
from pipeline.core.events import DeadLetter, PricedUsage
from pipeline.core.meter import Meter, Metered, Source
from pipeline.core.placement import Move, place
from pipeline.core.spend import advance_watermark, open_window_starts
from pipeline.store.sink import dlq_row, usage_row
from pipeline.stream.live import LiveState, PartitionState
from pipeline.stream.ports import Forward, LedgerReads

log = logging.getLogger(__name__)
MOVED_HEADER = "tokenmeter-moved"  # on events a worker re-sent to their tenant's partition


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A consumed message: value bytes and where it came from."""

    value: bytes | None
    topic: str
    partition: int
    offset: int
    moved: bool = False  # re-sent here by a worker (header MOVED_HEADER): never moved again


def was_moved(headers: Any) -> bool:
    """True when a consumed message carries MOVED_HEADER (headers as Kafka clients give them)."""
    if not headers:
        return False
    pairs = headers.items() if isinstance(headers, dict) else headers
    return any(k == MOVED_HEADER for k, _ in pairs)


@dataclass
class Staged:
    """A metered batch whose in-memory effects are applied; to be made durable."""

    messages: int = 0
    events: int = 0
    duplicates: int = 0
    late: int = 0
    rows: list[list[Any]] = field(default_factory=list)
    dlq_rows: list[list[Any]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    breaches: list[BudgetBreach] = field(default_factory=list)
    failures: list[list[Any]] = field(default_factory=list)  # budget_failures rows
    moves: list[Move] = field(default_factory=list)  # events that belong on another partition
    moved: list[Any] | None = None  # their delivery futures once sent
    sent: list[Any] | None = None  # delivery futures once the breaches were sent early
    token: str | None = None


class Metrics:
    """Counters the worker exposes on /metrics (owned by one Processor)."""

    def __init__(self) -> None:
        self.messages = 0
        self.events = 0
        self.duplicates = 0
        self.late = 0
        self.dead = Counter[str]()
        self.batches = 0
        self.breaches = 0
        self.moved = 0  # events re-sent to their tenant's partition
        self.misplaced = 0  # messages that arrived moved and still misplaced (metered there)


Candidate = tuple[RawMessage, PricedUsage]


class Stager:
    """Meters a batch and applies it to live state; returns the rows to make durable."""

    def __init__(self, meter: Meter, live: LiveState, ledger: LedgerReads, metrics: Metrics,
                 *, grace: timedelta, partition_of: Callable[[str], int],
                 forward: Forward | None, drain: Callable[[], Awaitable[None]]) -> None:
        self.meter = meter
        self.live = live
        self.ledger = ledger
        self.metrics = metrics
        self.grace = grace
        self.partition_of = partition_of
        self.forward = forward
        self.drain = drain  # the ledger is asked only once every earlier batch is in it

    async def stage(self, batch: Sequence[RawMessage],
                    now: datetime) -> tuple[Staged, list[PricedUsage]]:
        """The staged batch and its fresh (first-seen) events, in order."""
        staged = Staged(messages=len(batch))
        candidates: list[Candidate] = []
        for msg in batch:
            candidates.extend(self._meter(msg, now, staged))
        fresh = await self._dedup(candidates)
        touched: dict[int, PartitionState] = {}
        rows = staged.rows
        for msg, p in fresh:
            st = touched.get(msg.partition) or self.live.get(msg.partition)
            ts = p.timestamp
            windows = open_window_starts(ts, st.watermark, self.grace)
            late = "hour" not in windows
            st.watermark = advance_watermark(st.watermark, ts, now)
            rows.append(usage_row(p, late=late, partition=msg.partition, offset=msg.offset,
                                  ingested_at=now))
            # memory moves on now: a crash loses memory too, and acks wait for the ledger
            st.dedup.add(p.event_id, ts)
            if late:
                staged.late += 1
            if windows:
                st.add_at(p.tenant_id, windows, p.total_cost, p.saved_cost,
                          (p.input_tokens, p.cache_read_input_tokens,
                           p.cache_creation_input_tokens, p.output_tokens,
                           p.reasoning_output_tokens), p.value_units)
            touched[msg.partition] = st
        for st in touched.values():
            st.expire(self.grace)
        # the token names exactly this set of rows: a retry of the same insert is dropped by
        # ClickHouse, while different rows (even at reused offsets) never share a token
        if staged.rows:
            staged.token = hashlib.blake2b("|".join(p.event_id for _, p in fresh).encode(),
                                           digest_size=16).hexdigest()
        staged.events = len(fresh)
        staged.duplicates = len(candidates) - len(fresh)
        return staged, [p for _, p in fresh]

    def _meter(self, msg: RawMessage, now: datetime, staged: Staged) -> list[Candidate]:
        """One message's priced events kept here (its dead letters and moves go to staged)."""
        source = Source(msg.topic, msg.partition, msg.offset)
        metered = self.meter.meter_message(msg.value or b"", now=now, source=source)
        misplaced = self.forward is not None and any(
            self.partition_of(p.tenant_id) != msg.partition for p in metered.priced)
        if misplaced and msg.moved:
            # moved once already and still not where this worker puts it: the workers
            # disagree on the partition count (a rolling change). Metered here rather
            # than bounced between them forever.
            self.metrics.misplaced += 1
            log.warning("a moved event is misplaced again on partition %d: do all workers "
                        "run with the same TOKENMETER_PARTITIONS?", msg.partition)
        elif misplaced:
            # dedup is per partition: an event keyed by anything but its tenant moves to
            # the tenant's partition first, so one event_id can never be stored twice
            placed = place(self.meter, msg.value or b"", msg.partition, self.partition_of, now)
            staged.moves.extend(placed.moves)
            metered = (self.meter.meter_message(placed.keep, now=now, source=source)
                       if placed.keep is not None else Metered())
        for i, d in enumerate(metered.dead):
            staged.dlq_rows.append(dlq_row(d, i))
            staged.dead.append(d)
        return [(msg, p) for p in metered.priced]

    async def _dedup(self, candidates: list[Candidate]) -> list[Candidate]:
        fresh: list[Candidate] = []
        unknown: list[Candidate] = []
        in_batch: set[tuple[int, str]] = set()
        indexes: dict[int, DedupIndex] = {}  # one lookup per partition, not per event
        for msg, p in candidates:
            key = (msg.partition, p.event_id)
            if key in in_batch:
                continue
            in_batch.add(key)
            dedup = indexes.get(msg.partition)
            if dedup is None:
                dedup = indexes[msg.partition] = self.live.get(msg.partition).dedup
            if p.event_id in dedup:
                continue
            if dedup.covers(p.timestamp):
                fresh.append((msg, p))
            else:
                unknown.append((msg, p))
        if unknown:
            # older than what memory covers: the ledger decides, once nothing is in flight
            await self.drain()
            stored = await asyncio.to_thread(
                self.ledger.existing_ids, [(p.tenant_id, p.event_id) for _, p in unknown])
            fresh.extend(x for x in unknown if (x[1].tenant_id, x[1].event_id) not in stored)
        return fresh

    async def move(self, moves: list[Move]) -> list[Any]:
        """Re-send misplaced events to their tenant's partition; returns delivery futures."""
        if self.forward is None:
            return []
        return [await self.forward(m.partition, m.key, m.value) for m in moves]
