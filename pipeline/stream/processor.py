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

from pipeline.core.budgets import Budget, BudgetBreach, percent_of, period_bounds
from pipeline.core.events import DeadLetter, PricedUsage
from pipeline.core.meter import Meter, Metered, Source
from pipeline.core.placement import Move, place
from pipeline.core.spend import advance_watermark, open_windows
from pipeline.errors import StoreError
from pipeline.store import ledger
from pipeline.store.client import Store
from pipeline.store.sink import (
    BREACH_COLUMNS,
    FAILURE_COLUMNS,
    Fault,
    Sink,
    breach_row,
    classify_store_error,
    dlq_row,
    usage_row,
)
from pipeline.stream.budget_book import BudgetBook, BudgetTracker, PeriodSpend
from pipeline.stream.live import LiveState, PartitionState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A consumed message: value bytes and where it came from."""

    value: bytes | None
    topic: str
    partition: int
    offset: int
    moved: bool = False  # re-sent here by a worker (header MOVED_HEADER): never moved again


Publish = Callable[[str | None, bytes], Awaitable[Any]]
MOVED_HEADER = "tokenmeter-moved"  # on events a worker re-sent to their tenant's partition


def was_moved(headers: Any) -> bool:
    """True when a consumed message carries MOVED_HEADER (headers as Kafka clients give them)."""
    if not headers:
        return False
    pairs = headers.items() if isinstance(headers, dict) else headers
    return any(k == MOVED_HEADER for k, _ in pairs)
# (partition, key, value) -> delivery future: re-sends events to their tenant's partition
Forward = Callable[[int, str, bytes], Awaitable[Any]]


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


def merge_staged(group: list[Staged]) -> Staged:
    """One batch of several staged ones, in order (written by one insert)."""
    if len(group) == 1:
        return group[0]
    sent: list[Any] = []
    moved: list[Any] = []
    out = Staged(sent=sent, moved=moved)
    for st in group:
        out.messages += st.messages
        out.events += st.events
        out.duplicates += st.duplicates
        out.late += st.late
        out.rows += st.rows
        out.dlq_rows += st.dlq_rows
        out.dead += st.dead
        out.breaches += st.breaches
        out.failures += st.failures
        sent += st.sent or []
        out.moves += st.moves
        moved += st.moved if st.moved is not None else []
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
        self.moved = 0  # events re-sent to their tenant's partition
        self.misplaced = 0  # messages that arrived moved and still misplaced (metered there)


def must_propagate(exc: BaseException) -> bool:
    """True for errors of the store itself (down, or a write refused for good): they stop
    the worker as before, instead of being blamed on the budget that was being evaluated."""
    return isinstance(exc, StoreError) or classify_store_error(exc) is Fault.transient


def failure_reason(exc: BaseException) -> str:
    """One line saying why a budget failed (for budget list, the dashboard and /health)."""
    return f"evaluation raised {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300]


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
                 forward: Forward | None = None,
                 max_pending_rows: int = 20_000) -> None:
        self.meter = meter
        self.sink = sink
        self.store = store
        self.live = live
        self.publish_dlq = publish_dlq
        self.publish_breach = publish_breach
        self.partition_of = partition_of
        self.forward = forward
        self.grace = grace
        self.clock = clock
        self.metrics = Metrics()
        self.book = BudgetBook()
        self.tracker = BudgetTracker()
        # budgets skipped until they change: id -> why (invalid, or their evaluation raised);
        # one broken budget must never stop metering for every other budget and tenant
        self.failed_budgets: dict[str, str] = {}
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
        staged.moved = await self._move(staged.moves)
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
                placed = place(self.meter, msg.value or b"", msg.partition, self.partition_of,
                               now)
                staged.moves.extend(placed.moves)
                metered = (self.meter.meter_message(placed.keep, now=now, source=source)
                           if placed.keep is not None else Metered())
            candidates.extend((msg, p) for p in metered.priced)
            for i, d in enumerate(metered.dead):
                staged.dlq_rows.append(dlq_row(d, i))
                staged.dead.append(d)
        fresh = await self._dedup(candidates)
        touched: dict[int, PartitionState] = {}
        for msg, p in fresh:
            st = self.live.get(msg.partition)
            windows = open_windows(p.timestamp, st.watermark, self.grace)
            late = "hour" not in windows
            st.watermark = advance_watermark(st.watermark, p.timestamp, now)
            staged.rows.append(usage_row(p, late=late, partition=msg.partition,
                                         offset=msg.offset, ingested_at=now))
            # memory moves on now: a crash loses memory too, and acks wait for the ledger
            st.dedup.add(p.event_id, p.timestamp)
            if late:
                staged.late += 1
            if windows:
                st.add(p.tenant_id, p.timestamp, p.total_cost, p.saved_cost,
                       (p.input_tokens, p.cache_read_input_tokens,
                        p.cache_creation_input_tokens, p.output_tokens,
                        p.reasoning_output_tokens), p.value_units, windows)
            touched[msg.partition] = st
        for st in touched.values():
            st.expire(self.grace)
        for ps, tier, amount, event_id in await self._budget_hits([p for _, p in fresh],
                                                                  now, staged.failures):
            if ps.budget.budget_id in self.failed_budgets:
                continue  # failed earlier in this batch
            try:
                ps.add(tier, amount)
                staged.breaches.extend(ps.evaluate(now, event_id))
            except Exception as exc:
                if must_propagate(exc):
                    raise
                staged.failures.append(self._fail(ps.budget, failure_reason(exc), now))
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
        # moved events are acked with this batch: their re-sends must be in Kafka first
        moved = staged.moved if staged.moved is not None else await self._move(staged.moves)
        await asyncio.gather(*(f for f in moved if f is not None))
        self.metrics.moved += sum(m.events for m in staged.moves)
        await self.sink.write(staged.rows, staged.dlq_rows, token=staged.token)
        if staged.failures:
            await self.sink.write_rows("budget_failures", staged.failures, FAILURE_COLUMNS)
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

    async def _budget_hits(self, fresh: list[PricedUsage], now: datetime,
                           failures: list[list[Any]]
                           ) -> list[tuple[PeriodSpend, str, Decimal, str]]:
        """(period, tier, amount, event_id) for every event x matching budget.

        Periods not yet tracked are loaded from the ledger first, before this batch is
        written, so the batch is counted exactly once. A budget that raises is marked failed
        (a row appended to ``failures``) and skipped; every other budget goes on.
        """
        wanted: list[tuple[Budget, PricedUsage, datetime, Decimal]] = []
        missing: dict[tuple[str, datetime], tuple[Budget, datetime, datetime]] = {}
        for p in fresh:
            for b in self.book.for_tenant(p.tenant_id):
                if b.budget_id in self.failed_budgets:
                    continue
                try:
                    if not b.matches(p):
                        continue
                    start, end = period_bounds(b.period, b.tz, p.timestamp)
                    amount = b.measure(p)
                except Exception as exc:
                    failures.append(self._fail(b, failure_reason(exc), now))
                    continue
                wanted.append((b, p, start, amount))
                if self.tracker.get(b.budget_id, start) is None:
                    missing[(b.budget_id, start)] = (b, start, end)
        for b, start, end in missing.values():
            if b.budget_id in self.failed_budgets:
                continue
            try:
                await self.load_period(b, start, end)
            except Exception as exc:
                if must_propagate(exc):
                    raise
                failures.append(self._fail(b, failure_reason(exc), now))
        hits = []
        for b, p, start, amount in wanted:
            ps = self.tracker.get(b.budget_id, start)
            if ps is not None and b.budget_id not in self.failed_budgets:
                hits.append((ps, p.value_tier, amount, p.event_id))
        return hits

    def _fail(self, budget: Budget, reason: str, now: datetime) -> list[Any]:
        """Mark a budget failed until it changes; returns its budget_failures row."""
        self.failed_budgets[budget.budget_id] = reason
        self.tracker.forget(budget.budget_id)  # a new version reloads from the ledger
        log.error("budget %r of tenant %r is skipped until it changes: %s; metering and "
                  "every other budget go on", budget.budget_id, budget.tenant_id, reason)
        return [budget.budget_id, budget.tenant_id, True, reason, now]

    async def budget_invalid(self, budget_id: str, tenant_id: str, reason: str) -> None:
        """A budget on the topic (or mirror) that does not validate: drop it, mark it failed."""
        async with self.lock:
            self.book.delete(budget_id)
            self.tracker.forget(budget_id)
            if self.failed_budgets.get(budget_id) == reason:
                return  # the same invalid message replayed: reported already
            self.failed_budgets[budget_id] = reason
            log.error("budget %r of tenant %r is invalid and skipped: %s", budget_id,
                      tenant_id, reason)
            await self.sink.write_rows("budget_failures",
                                       [[budget_id, tenant_id, True, reason, self.clock()]],
                                       FAILURE_COLUMNS)

    async def _evaluate_isolated(self, budget: Budget, now: datetime) -> None:
        """evaluate_budget, marking the budget failed instead of raising (store errors aside)."""
        try:
            await self.evaluate_budget(budget, now)
        except Exception as exc:
            if must_propagate(exc):
                raise
            row = self._fail(budget, failure_reason(exc), now)
            await self.sink.write_rows("budget_failures", [row], FAILURE_COLUMNS)

    async def load_period(self, b: Budget, start: datetime, end: datetime) -> PeriodSpend:
        """Track a budget period from the ledger's totals and already-fired breaches."""
        await self.drain()  # the ledger must hold every batch already counted in memory
        by_tier = await asyncio.to_thread(ledger.period_spend, self.store, b, start, end)
        fired = await asyncio.to_thread(ledger.fired_breaches, self.store, b.budget_id, start)
        return self.tracker.load(b, start, end, by_tier, fired)

    async def _move(self, moves: list[Move]) -> list[Any]:
        """Re-send misplaced events to their tenant's partition; returns delivery futures."""
        if self.forward is None:
            return []
        return [await self.forward(m.partition, m.key, m.value) for m in moves]

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
        failures = []
        async with self.lock:
            for b in list(self.book.budgets.values()):
                if (self.partition_of(b.tenant_id) not in self.live.partitions
                        or b.budget_id in self.failed_budgets):
                    continue
                try:
                    start, end = period_bounds(b.period, b.tz, now)
                    ps = self.tracker.get(b.budget_id, start) or await self.load_period(
                        b, start, end)
                    spent = ps.spent.get("", Decimal(0))
                    rows.append([b.budget_id, b.tenant_id, start, end, b.metric.value, spent,
                                 b.limit, percent_of(spent, b.limit), b.mode.value, now])
                except Exception as exc:
                    if must_propagate(exc):
                        raise
                    failures.append(self._fail(b, failure_reason(exc), now))
            if failures:
                await self.sink.write_rows("budget_failures", failures, FAILURE_COLUMNS)
        return rows

    async def budget_changed(self, budget_id: str, budget: Budget | None) -> None:
        """Apply a budget set/delete; re-evaluate it here when this worker owns its tenant."""
        async with self.lock:
            old = self.book.put(budget) if budget is not None else self.book.delete(budget_id)
            if budget is not None and old == budget:
                return  # replayed unchanged (a failed one stays failed until it changes)
            self.tracker.forget(budget_id)
            now = self.clock()
            if self.failed_budgets.pop(budget_id, None) is not None:
                # a new version (or a deletion) gets a fresh start; it is marked again if
                # it fails again
                tenant = budget.tenant_id if budget is not None else ""
                await self.sink.write_rows("budget_failures",
                                           [[budget_id, tenant, False, "", now]],
                                           FAILURE_COLUMNS)
            if budget is not None and self.partition_of(budget.tenant_id) in self.live.partitions:
                await self._evaluate_isolated(budget, now)

    async def rebuild(self, partitions: set[int]) -> None:
        """Rebuild live state of newly assigned partitions from the ledger, then catch up
        on breaches their budgets crossed while no worker owned them."""
        async with self.lock:
            await self.drain()
            # only a worker that moves events knows the real partitioning: then a changed
            # partition count is detected and handled by the rebuild
            await asyncio.to_thread(self.live.rebuild, self.store, partitions, self.clock(),
                                    self.partition_of if self.forward is not None else None)
            now = self.clock()
            for b in list(self.book.budgets.values()):
                if self.partition_of(b.tenant_id) in partitions \
                        and b.budget_id not in self.failed_budgets:
                    self.tracker.forget(b.budget_id)
                    await self._evaluate_isolated(b, now)
