"""The metering step the agent calls: raw messages in, durable effects out.

Order per batch: meter (validate, count, price, score) -> dedup -> classify late -> update
live state and evaluate budgets -> send breaches -> write to ClickHouse (retrying until
durable) -> publish dead letters, confirm breach deliveries and mirror them. Only then are
offsets acked, so they are never committed ahead of the ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pipeline.budgets import Budget, BudgetBreach, period_bounds
from pipeline.events import DeadLetter, PricedUsage
from pipeline.meter import Meter, Source
from pipeline.spend import is_late
from pipeline.store import state as ledger
from pipeline.store.client import Store
from pipeline.store.sink import BREACH_COLUMNS, Sink, breach_row, dlq_row, usage_row
from pipeline.stream.budget_state import BudgetBook, BudgetTracker, PeriodSpend
from pipeline.stream.live import LiveState, PartitionState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A consumed message: value bytes and where it came from."""

    value: bytes | None
    topic: str
    partition: int
    offset: int


Publish = Callable[[str | None, bytes], Awaitable[Any]]


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
    sent: list[Any] | None = None  # delivery futures once the breaches were sent early
    token: str | None = None


def merge_staged(group: list[Staged]) -> Staged:
    """One batch of several staged ones, in order (written by one insert)."""
    if len(group) == 1:
        return group[0]
    sent: list[Any] = []
    out = Staged(sent=sent)
    for st in group:
        out.messages += st.messages
        out.events += st.events
        out.duplicates += st.duplicates
        out.late += st.late
        out.rows += st.rows
        out.dlq_rows += st.dlq_rows
        out.dead += st.dead
        out.breaches += st.breaches
        sent += st.sent or []
    tokens = [st.token for st in group if st.token]
    # the same rows give the same token, so a retry of this insert is dropped, not counted
    out.token = hashlib.blake2b("|".join(tokens).encode(), digest_size=16).hexdigest() \
        if tokens else None
    return out


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


def utc_now() -> datetime:
    """Wall-clock time in UTC (the default clock of the shell)."""
    return datetime.now(timezone.utc)


class Processor:
    """Meters a batch, writes it to ClickHouse, updates live state, publishes dead letters."""

    def __init__(self, meter: Meter, sink: Sink, store: Store, live: LiveState,
                 publish_dlq: Publish, *, grace: timedelta = timedelta(hours=1),
                 clock: Callable[[], datetime] = utc_now,
                 publish_breach: Publish | None = None,
                 partition_of: Callable[[str], int] = lambda tenant: 0,
                 max_pending_rows: int = 20_000) -> None:
        self.meter = meter
        self.sink = sink
        self.store = store
        self.live = live
        self.publish_dlq = publish_dlq
        self.publish_breach = publish_breach
        self.partition_of = partition_of
        self.grace = grace
        self.clock = clock
        self.metrics = Metrics()
        self.book = BudgetBook()
        self.tracker = BudgetTracker()
        self.max_pending_rows = max_pending_rows
        self._pending: list[tuple[Staged, Callable[[], Awaitable[None]]]] = []
        self._picked = asyncio.Event()  # set whenever the writer takes the pending batches
        self._writer: asyncio.Future[None] | None = None
        self.lock = asyncio.Lock()  # rebuilds and batches never interleave

    async def process(self, batch: Sequence[RawMessage]) -> None:
        """Handle one batch end to end; returns once its effects are durable."""
        staged = await self.stage(batch)
        await self.commit(staged)

    async def submit(self, batch: Sequence[RawMessage],
                     on_durable: Callable[[], Awaitable[None]]) -> None:
        """Pipelined processing: stage this batch while earlier ones are being written.

        Batches staged while an insert runs are written together by the next one (group
        commit), so consumption does not wait for every insert and inserts grow with load.
        ``on_durable`` (the agent's acks) runs only after this batch's rows are in ClickHouse,
        so offsets are never committed ahead of the ledger, even on shutdown or crash.
        """
        self._raise_if_writer_failed()
        staged = await self.stage(batch)
        # breaches go out now, not after the ledger write: a crash before the rows are durable
        # replays the batch, which crosses the same thresholds and repeats the same
        # breach_ids (allowed); waiting for the write put inserts on the breach path
        staged.sent = await self._send(staged.breaches)
        # bounded memory: wait while the writer is behind by max_pending_rows
        while self._pending and sum(len(st.rows) + len(st.dlq_rows)
                                    for st, _ in self._pending) >= self.max_pending_rows:
            await self._picked.wait()
            self._raise_if_writer_failed()
        self._pending.append((staged, on_durable))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_pending())

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending, []
                self._picked.set()
                self._picked = asyncio.Event()
                await self.commit(merge_staged([st for st, _ in group]))
                for _, on_durable in group:
                    await on_durable()
        finally:
            self._picked.set()  # a failed writer must not leave a submitter waiting

    def _raise_if_writer_failed(self) -> None:
        writer = self._writer
        if writer is not None and writer.done() and not writer.cancelled() and (
                exc := writer.exception()) is not None:
            raise exc

    async def drain(self) -> None:
        """Wait until every submitted batch is durable and acked."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        self._raise_if_writer_failed()

    async def stage(self, batch: Sequence[RawMessage]) -> Staged:
        """Meter, dedup, classify and count a batch in memory; nothing durable yet."""
        async with self.lock:
            return await self._stage(batch)

    async def _stage(self, batch: Sequence[RawMessage]) -> Staged:
        staged = Staged(messages=len(batch))
        if not batch:
            return staged
        now = self.clock()
        candidates: list[tuple[RawMessage, PricedUsage]] = []
        for msg in batch:
            metered = self.meter.meter_message(
                msg.value or b"", now=now, source=Source(msg.topic, msg.partition, msg.offset))
            candidates.extend((msg, p) for p in metered.priced)
            for i, d in enumerate(metered.dead):
                staged.dlq_rows.append(dlq_row(d, i))
                staged.dead.append(d)
        fresh = await self._dedup(candidates)
        touched: dict[int, PartitionState] = {}
        for msg, p in fresh:
            st = self.live.get(msg.partition)
            late = is_late(p.timestamp, st.watermark, self.grace)
            if not late and (st.watermark is None or p.timestamp > st.watermark):
                st.watermark = p.timestamp
            staged.rows.append(usage_row(p, late=late, partition=msg.partition,
                                         offset=msg.offset, ingested_at=now))
            # memory moves on now: a crash loses memory too, and acks wait for the ledger
            st.dedup.add(p.event_id, p.timestamp)
            if late:
                staged.late += 1
            else:
                st.add(p.tenant_id, p.timestamp, p.total_cost, p.saved_cost,
                       (p.input_tokens, p.cache_read_input_tokens,
                        p.cache_creation_input_tokens, p.output_tokens,
                        p.reasoning_output_tokens), p.value_units)
            touched[msg.partition] = st
        for st in touched.values():
            st.expire(self.grace)
        for ps, tier, amount, event_id in await self._budget_hits([p for _, p in fresh]):
            ps.add(tier, amount)
            staged.breaches.extend(ps.evaluate(now, event_id))
        if self.tracker.periods:
            self.tracker.expire(now)
        # the token names exactly this set of rows: a retry of the same insert is dropped by
        # ClickHouse, while different rows (even at reused offsets) never share a token
        if staged.rows:
            staged.token = hashlib.blake2b("|".join(p.event_id for _, p in fresh).encode(),
                                           digest_size=16).hexdigest()
        staged.events = len(fresh)
        staged.duplicates = len(candidates) - len(fresh)
        return staged

    async def commit(self, staged: Staged) -> None:
        """Make a staged batch durable, then publish its dead letters and breaches."""
        await self.sink.write(staged.rows, staged.dlq_rows, token=staged.token)
        for d in staged.dead:
            self.metrics.dead[d.reason_code] += 1
            await self.publish_dlq(d.tenant_id, d.model_dump_json().encode())
        if staged.breaches:
            await self._emit(staged.breaches, staged.sent)
        m = self.metrics
        m.messages += staged.messages
        m.events += staged.events
        m.duplicates += staged.duplicates
        m.late += staged.late
        m.batches += 1

    async def _dedup(self, candidates: list[tuple[RawMessage, PricedUsage]]
                     ) -> list[tuple[RawMessage, PricedUsage]]:
        fresh: list[tuple[RawMessage, PricedUsage]] = []
        unknown: list[tuple[RawMessage, PricedUsage]] = []
        in_batch: set[tuple[int, str]] = set()
        for msg, p in candidates:
            key = (msg.partition, p.event_id)
            if key in in_batch:
                continue
            in_batch.add(key)
            dedup = self.live.get(msg.partition).dedup
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
                ledger.existing_ids, self.store, [(p.tenant_id, p.event_id) for _, p in unknown])
            fresh.extend(x for x in unknown if (x[1].tenant_id, x[1].event_id) not in stored)
        return fresh

    async def _budget_hits(self, fresh: list[PricedUsage]
                           ) -> list[tuple[PeriodSpend, str, Decimal, str]]:
        """(period, tier, amount, event_id) for every event x matching budget.

        Periods not yet tracked are loaded from the ledger first, before this batch is
        written, so the batch is counted exactly once.
        """
        wanted: list[tuple[Budget, PricedUsage, datetime, datetime]] = []
        missing: dict[tuple[str, datetime], tuple[Budget, datetime, datetime]] = {}
        for p in fresh:
            for b in self.book.for_tenant(p.tenant_id):
                if not b.matches(p):
                    continue
                start, end = period_bounds(b.period, b.tz, p.timestamp)
                wanted.append((b, p, start, end))
                if self.tracker.get(b.budget_id, start) is None:
                    missing[(b.budget_id, start)] = (b, start, end)
        for b, start, end in missing.values():
            await self.load_period(b, start, end)
        hits = []
        for b, p, start, _ in wanted:
            ps = self.tracker.get(b.budget_id, start)
            if ps is not None:
                hits.append((ps, p.value_tier, b.measure(p), p.event_id))
        return hits

    async def load_period(self, b: Budget, start: datetime, end: datetime) -> PeriodSpend:
        """Track a budget period from the ledger's totals and already-fired breaches."""
        await self.drain()  # the ledger must hold every batch already counted in memory
        by_tier = await asyncio.to_thread(ledger.period_spend, self.store, b, start, end)
        fired = await asyncio.to_thread(ledger.fired_breaches, self.store, b.budget_id, start)
        return self.tracker.load(b, start, end, by_tier, fired)

    async def _send(self, breaches: list[BudgetBreach]) -> list[Any]:
        """Send breaches; returns their delivery futures (awaited together, not one by one)."""
        if self.publish_breach is None or not breaches:
            return []
        return [await self.publish_breach(b.tenant_id, b.model_dump_json().encode())
                for b in breaches]

    async def _emit(self, breaches: list[BudgetBreach], sent: list[Any] | None = None) -> None:
        """Publish first, then mirror: a crash in between repeats a breach_id, never loses it."""
        pending = sent if sent is not None else await self._send(breaches)
        await asyncio.gather(*(p for p in pending if p is not None))
        await self.sink.write_rows("budget_breaches", [breach_row(b) for b in breaches],
                                   BREACH_COLUMNS)
        self.metrics.breaches += len(breaches)

    async def evaluate_budget(self, budget: Budget, now: datetime) -> list[BudgetBreach]:
        """Load the budget's current period from the ledger and publish what is crossed."""
        start, end = period_bounds(budget.period, budget.tz, now)
        ps = self.tracker.get(budget.budget_id, start) or await self.load_period(
            budget, start, end)
        breaches = ps.evaluate(now, None)
        if breaches:
            await self._emit(breaches)
        return breaches

    async def status_rows(self, now: datetime) -> list[list[Any]]:
        """budget_status rows (current period) of the budgets whose tenants this worker owns."""
        rows = []
        async with self.lock:
            for b in list(self.book.budgets.values()):
                if self.partition_of(b.tenant_id) not in self.live.partitions:
                    continue
                start, end = period_bounds(b.period, b.tz, now)
                ps = self.tracker.get(b.budget_id, start) or await self.load_period(b, start, end)
                spent = ps.spent.get("", Decimal(0))
                rows.append([b.budget_id, b.tenant_id, start, end, b.metric.value, spent,
                             b.limit, (spent * 100 / b.limit).quantize(Decimal("0.000001")),
                             b.mode.value, now])
        return rows

    async def budget_changed(self, budget_id: str, budget: Budget | None) -> None:
        """Apply a budget set/delete; re-evaluate it here when this worker owns its tenant."""
        async with self.lock:
            old = self.book.put(budget) if budget is not None else self.book.delete(budget_id)
            if budget is not None and old == budget:
                return
            self.tracker.forget(budget_id)
            if budget is not None and self.partition_of(budget.tenant_id) in self.live.partitions:
                await self.evaluate_budget(budget, self.clock())

    async def rebuild(self, partitions: set[int]) -> None:
        """Rebuild live state of newly assigned partitions from the ledger, then catch up
        on breaches their budgets crossed while no worker owned them."""
        async with self.lock:
            await self.drain()
            await asyncio.to_thread(self.live.rebuild, self.store, partitions, self.clock())
            now = self.clock()
            for b in list(self.book.budgets.values()):
                if self.partition_of(b.tenant_id) in partitions:
                    self.tracker.forget(b.budget_id)
                    await self.evaluate_budget(b, now)
