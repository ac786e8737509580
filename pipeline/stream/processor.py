"""The metering step the agent calls: raw messages in, durable effects out.

Order per batch: meter (validate, count, price, score) -> dedup -> classify late -> update
live state and evaluate budgets -> send breaches -> write to ClickHouse (retrying until
durable) -> publish dead letters, confirm breach deliveries and mirror them. Only then are
offsets acked, so they are never committed ahead of the ledger.

The Processor is the facade over three parts, each testable alone with the doubles of
pipeline/testing.py: staging (stream/staging.py), the group-commit writer
(stream/group_commit.py) and budget evaluation (stream/budget_eval.py). It talks to the ledger
through the Protocols of stream/ports.py and holds the lock that keeps rebuilds, budget
changes and batches from interleaving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from pipeline.core.budgets import Budget, BudgetBreach
from pipeline.core.meter import Meter
from pipeline.store.client import Store
from pipeline.stream.budget_book import BudgetBook, BudgetTracker, PeriodSpend
from pipeline.stream.budget_eval import BudgetEvaluator, failure_reason, must_propagate
from pipeline.stream.group_commit import GroupCommitWriter, merge_staged
from pipeline.stream.live import LiveState
from pipeline.stream.ports import (
    Forward,
    LedgerReads,
    LedgerWrites,
    Publish,
    Watcher,
    ledger_reads,
)
from pipeline.stream.staging import MOVED_HEADER, Metrics, RawMessage, Staged, Stager, was_moved

__all__ = [
    "MOVED_HEADER", "Forward", "Metrics", "Processor", "Publish", "RawMessage", "Staged",
    "failure_reason", "merge_staged", "must_propagate", "utc_now", "was_moved",
]


def utc_now() -> datetime:
    """Wall-clock time in UTC (the default clock of the shell)."""
    return datetime.now(timezone.utc)


class Processor:
    """Meters a batch, writes it to the ledger, updates live state, publishes dead letters.

    ``store`` is a Store (read through ClickHouseLedger) or any LedgerReads, e.g.
    pipeline.testing.InMemoryLedger; ``sink`` is any LedgerWrites (the Sink in production).
    """

    def __init__(self, meter: Meter, sink: LedgerWrites, store: Store | LedgerReads,
                 live: LiveState, publish_dlq: Publish, *,
                 grace: timedelta = timedelta(hours=1),
                 clock: Callable[[], datetime] = utc_now,
                 publish_breach: Publish | None = None,
                 partition_of: Callable[[str], int] = lambda tenant: 0,
                 forward: Forward | None = None,
                 max_pending_rows: int = 20_000,
                 watchers: Sequence[Watcher] = ()) -> None:
        self.meter = meter
        self.store = store  # as given: the budgets feed reads the mirror through it
        self.ledger = ledger_reads(store)
        self.live = live
        self.publish_dlq = publish_dlq
        self.publish_breach = publish_breach
        self.partition_of = partition_of
        self.forward = forward
        self.grace = grace
        self.clock = clock
        self.max_pending_rows = max_pending_rows
        self.metrics = Metrics()
        self.lock = asyncio.Lock()  # rebuilds and batches never interleave
        self.budgets = BudgetEvaluator(self.ledger, sink, live, self.metrics,
                                       publish_breach=publish_breach,
                                       partition_of=partition_of, clock=clock,
                                       drain=self.drain)
        self.writer = GroupCommitWriter(sink, publish_dlq, self.metrics, self.budgets.emit,
                                        max_pending_rows=max_pending_rows)
        self.staging = Stager(meter, live, self.ledger, self.metrics, grace=grace,
                              partition_of=partition_of, forward=forward, drain=self.drain)
        self._sink = sink
        # after budgets, in this order, on every batch's fresh events (stream/ports.Watcher)
        self.watchers = list(watchers)

    @property
    def sink(self) -> LedgerWrites:
        """Where rows are written (its health is what /health and /metrics report)."""
        return self._sink

    @sink.setter
    def sink(self, sink: LedgerWrites) -> None:
        # swapped whole (tests inject a failing one): every part writes to the new one
        self._sink = self.writer.sink = self.budgets.sink = sink

    @property
    def book(self) -> BudgetBook:
        """Every budget this worker knows."""
        return self.budgets.book

    @property
    def tracker(self) -> BudgetTracker:
        """Period spend of the budgets this worker evaluates."""
        return self.budgets.tracker

    @property
    def failed_budgets(self) -> dict[str, str]:
        """Budgets skipped until they change: id -> why."""
        return self.budgets.failed

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
        self.writer.raise_if_failed()
        staged = await self.stage(batch)
        # breaches go out now, not after the ledger write: a crash before the rows are durable
        # replays the batch, which crosses the same thresholds and repeats the same
        # breach_ids (allowed); waiting for the write put inserts on the breach path
        staged.sent = await self.budgets.send(staged.breaches)
        staged.moved = await self.staging.move(staged.moves)
        await self.writer.submit(staged, on_durable)

    async def drain(self) -> None:
        """Wait until every submitted batch is durable and acked."""
        await self.writer.drain()

    async def stage(self, batch: Sequence[RawMessage]) -> Staged:
        """Meter, dedup, classify and count a batch in memory; nothing durable yet."""
        async with self.lock:
            if not batch:
                return Staged()
            now = self.clock()
            staged, fresh = await self.staging.stage(batch, now)
            staged.breaches.extend(await self.budgets.count(fresh, now, staged.failures))
            for watcher in self.watchers:
                staged.breaches.extend(await watcher.observe(fresh, now))
            return staged

    async def commit(self, staged: Staged) -> None:
        """Make a staged batch durable, then publish its dead letters and breaches."""
        if staged.moved is None:  # staged by stage(), not submit(): re-send its moves now
            staged.moved = await self.staging.move(staged.moves)
        await self.writer.commit(staged)

    async def load_period(self, b: Budget, start: datetime, end: datetime) -> PeriodSpend:
        """Track a budget period from the ledger's totals and already-fired breaches."""
        return await self.budgets.load_period(b, start, end)

    async def evaluate_budget(self, budget: Budget, now: datetime) -> list[BudgetBreach]:
        """Load the budget's current period from the ledger and publish what is crossed."""
        return await self.budgets.evaluate_budget(budget, now)

    async def budget_invalid(self, budget_id: str, tenant_id: str, reason: str) -> None:
        """A budget on the topic (or mirror) that does not validate: drop it, mark it failed."""
        async with self.lock:
            await self.budgets.invalid(budget_id, tenant_id, reason)

    async def budget_changed(self, budget_id: str, budget: Budget | None) -> None:
        """Apply a budget set/delete; re-evaluate it here when this worker owns its tenant."""
        async with self.lock:
            await self.budgets.changed(budget_id, budget)

    async def status_rows(self, now: datetime) -> list[list[Any]]:
        """budget_status rows (current period) of the budgets whose tenants this worker owns."""
        async with self.lock:
            return await self.budgets.status_rows(now)

    async def rebuild(self, partitions: set[int]) -> None:
        """Rebuild live state of newly assigned partitions from the ledger, then catch up
        on breaches their budgets crossed while no worker owned them."""
        async with self.lock:
            await self.drain()
            # only a worker that moves events knows the real partitioning: then a changed
            # partition count is detected and handled by the rebuild
            await asyncio.to_thread(self.live.rebuild, self.ledger, partitions, self.clock(),
                                    self.partition_of if self.forward is not None else None)
            await self.budgets.catch_up(partitions, self.clock())
