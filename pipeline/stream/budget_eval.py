"""Budget evaluation: count fresh events into tracked periods and fire each crossing once.

A period is loaded from the ledger (its totals and the breaches already fired) before the
first batch that touches it is counted, so every event counts exactly once. One broken
budget is marked failed (a budget_failures row) and skipped until it changes; metering and
every other budget go on. Errors of the store itself propagate: they stop the worker.

The caller (the Processor) holds its lock around every method here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.core.budgets import Budget, BudgetBreach, percent_of, period_bounds
from pipeline.core.events import PricedUsage
from pipeline.errors import StoreError
from pipeline.store.sink import (
    BREACH_COLUMNS,
    FAILURE_COLUMNS,
    Fault,
    breach_row,
    classify_store_error,
)
from pipeline.stream.budget_book import BudgetBook, BudgetTracker, PeriodSpend
from pipeline.stream.live import LiveState
from pipeline.stream.ports import LedgerReads, LedgerWrites, Publish
from pipeline.stream.staging import Metrics

log = logging.getLogger(__name__)
Hit = tuple[PeriodSpend, str, Decimal, str]  # (period, value tier, amount, event_id)


def must_propagate(exc: BaseException) -> bool:
    """True for errors of the store itself (down, or a write refused for good): they stop
    the worker as before, instead of being blamed on the budget that was being evaluated."""
    return isinstance(exc, StoreError) or classify_store_error(exc) is Fault.transient


def failure_reason(exc: BaseException) -> str:
    """One line saying why a budget failed (for budget list, the dashboard and /health)."""
    return f"evaluation raised {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300]


class BudgetEvaluator:
    """The budget book, the tracked periods, the failed budgets, and their evaluation."""

    def __init__(self, ledger: LedgerReads, sink: LedgerWrites, live: LiveState,
                 metrics: Metrics, *, publish_breach: Publish | None,
                 partition_of: Callable[[str], int], clock: Callable[[], datetime],
                 drain: Callable[[], Awaitable[None]]) -> None:
        self.ledger = ledger
        self.sink = sink
        self.live = live  # whose partitions say which tenants this worker evaluates
        self.metrics = metrics
        self.publish_breach = publish_breach
        self.partition_of = partition_of
        self.clock = clock
        self.drain = drain  # the ledger must hold every batch already counted in memory
        self.book = BudgetBook()
        self.tracker = BudgetTracker()
        # budgets skipped until they change: id -> why (invalid, or their evaluation raised);
        # one broken budget must never stop metering for every other budget and tenant
        self.failed: dict[str, str] = {}

    def owns(self, tenant_id: str) -> bool:
        """True when this worker holds the tenant's partition."""
        return self.partition_of(tenant_id) in self.live.partitions

    async def count(self, fresh: list[PricedUsage], now: datetime,
                    failures: list[list[Any]]) -> list[BudgetBreach]:
        """Count a staged batch's fresh events; the breaches they cross (each once)."""
        breaches: list[BudgetBreach] = []
        for ps, tier, amount, event_id in await self._hits(fresh, now, failures):
            if ps.budget.budget_id in self.failed:
                continue  # failed earlier in this batch
            try:
                ps.add(tier, amount)
                breaches.extend(ps.evaluate(now, event_id))
            except Exception as exc:
                if must_propagate(exc):
                    raise
                failures.append(self.fail(ps.budget, failure_reason(exc), now))
        if self.tracker.periods:
            self.tracker.expire(now)
        return breaches

    async def _hits(self, fresh: list[PricedUsage], now: datetime,
                    failures: list[list[Any]]) -> list[Hit]:
        """(period, tier, amount, event_id) for every event x matching budget.

        Periods not yet tracked are loaded from the ledger first, before this batch is
        written, so the batch is counted exactly once. A budget that raises is marked failed
        (a row appended to ``failures``) and skipped; every other budget goes on.
        """
        wanted: list[tuple[Budget, PricedUsage, datetime, Decimal]] = []
        missing: dict[tuple[str, datetime], tuple[Budget, datetime, datetime]] = {}
        for p in fresh:
            for b in self.book.for_tenant(p.tenant_id):
                if b.budget_id in self.failed:
                    continue
                try:
                    if not b.matches(p):
                        continue
                    start, end = period_bounds(b.period, b.tz, p.timestamp)
                    amount = b.measure(p)
                except Exception as exc:
                    failures.append(self.fail(b, failure_reason(exc), now))
                    continue
                wanted.append((b, p, start, amount))
                if self.tracker.get(b.budget_id, start) is None:
                    missing[(b.budget_id, start)] = (b, start, end)
        for b, start, end in missing.values():
            if b.budget_id in self.failed:
                continue
            try:
                await self.load_period(b, start, end)
            except Exception as exc:
                if must_propagate(exc):
                    raise
                failures.append(self.fail(b, failure_reason(exc), now))
        hits = []
        for b, p, start, amount in wanted:
            ps = self.tracker.get(b.budget_id, start)
            if ps is not None and b.budget_id not in self.failed:
                hits.append((ps, p.value_tier, amount, p.event_id))
        return hits

    def fail(self, budget: Budget, reason: str, now: datetime) -> list[Any]:
        """Mark a budget failed until it changes; returns its budget_failures row."""
        self.failed[budget.budget_id] = reason
        self.tracker.forget(budget.budget_id)  # a new version reloads from the ledger
        log.error("budget %r of tenant %r is skipped until it changes: %s; metering and "
                  "every other budget go on", budget.budget_id, budget.tenant_id, reason)
        return [budget.budget_id, budget.tenant_id, True, reason, now]

    async def invalid(self, budget_id: str, tenant_id: str, reason: str) -> None:
        """A budget on the topic (or mirror) that does not validate: drop it, mark it failed."""
        self.book.delete(budget_id)
        self.tracker.forget(budget_id)
        if self.failed.get(budget_id) == reason:
            return  # the same invalid message replayed: reported already
        self.failed[budget_id] = reason
        log.error("budget %r of tenant %r is invalid and skipped: %s", budget_id,
                  tenant_id, reason)
        await self.sink.write_rows("budget_failures",
                                   [[budget_id, tenant_id, True, reason, self.clock()]],
                                   FAILURE_COLUMNS)

    async def changed(self, budget_id: str, budget: Budget | None) -> None:
        """Apply a budget set/delete; re-evaluate it here when this worker owns its tenant."""
        old = self.book.put(budget) if budget is not None else self.book.delete(budget_id)
        if budget is not None and old == budget:
            return  # replayed unchanged (a failed one stays failed until it changes)
        self.tracker.forget(budget_id)
        now = self.clock()
        if self.failed.pop(budget_id, None) is not None:
            # a new version (or a deletion) gets a fresh start; it is marked again if it
            # fails again
            tenant = budget.tenant_id if budget is not None else ""
            await self.sink.write_rows("budget_failures", [[budget_id, tenant, False, "", now]],
                                       FAILURE_COLUMNS)
        if budget is not None and self.owns(budget.tenant_id):
            await self.evaluate_isolated(budget, now)

    async def catch_up(self, partitions: set[int], now: datetime) -> None:
        """Re-evaluate the budgets of newly assigned partitions from the ledger (breaches
        crossed while no worker owned them fire now; fired ones are known and stay quiet)."""
        for b in list(self.book.budgets.values()):
            if self.partition_of(b.tenant_id) in partitions and b.budget_id not in self.failed:
                self.tracker.forget(b.budget_id)
                await self.evaluate_isolated(b, now)

    async def evaluate_isolated(self, budget: Budget, now: datetime) -> None:
        """evaluate_budget, marking the budget failed instead of raising (store errors aside)."""
        try:
            await self.evaluate_budget(budget, now)
        except Exception as exc:
            if must_propagate(exc):
                raise
            row = self.fail(budget, failure_reason(exc), now)
            await self.sink.write_rows("budget_failures", [row], FAILURE_COLUMNS)

    async def load_period(self, b: Budget, start: datetime, end: datetime) -> PeriodSpend:
        """Track a budget period from the ledger's totals and already-fired breaches."""
        await self.drain()  # the ledger must hold every batch already counted in memory
        by_tier = await asyncio.to_thread(self.ledger.period_spend, b, start, end)
        fired = await asyncio.to_thread(self.ledger.fired_breaches, b.budget_id, start)
        return self.tracker.load(b, start, end, by_tier, fired)

    async def evaluate_budget(self, budget: Budget, now: datetime) -> list[BudgetBreach]:
        """Load the budget's current period from the ledger and publish what is crossed."""
        start, end = period_bounds(budget.period, budget.tz, now)
        ps = self.tracker.get(budget.budget_id, start) or await self.load_period(
            budget, start, end)
        breaches = ps.evaluate(now, None)
        if breaches:
            await self.emit(breaches)
        return breaches

    async def spend_for(self, budget: Budget, key: str, now: datetime) -> dict[str, Decimal]:
        """Current-period spend of a budget (of one template key: "" for a plain budget),
        by pool ("" is the whole budget); loaded from the ledger when not tracked.
        The caller holds the Processor's lock."""
        start, end = period_bounds(budget.period, budget.tz, now)
        ps = self.tracker.get(budget.budget_id, start) or await self.load_period(
            budget, start, end)
        return dict(ps.spent)

    async def send(self, breaches: list[BudgetBreach]) -> list[Any]:
        """Send breaches; returns their delivery futures (awaited together, not one by one)."""
        if self.publish_breach is None or not breaches:
            return []
        return [await self.publish_breach(b.tenant_id, b.model_dump_json().encode())
                for b in breaches]

    async def emit(self, breaches: list[BudgetBreach], sent: list[Any] | None = None) -> None:
        """Publish first, then mirror: a crash in between repeats a breach_id, never loses it."""
        pending = sent if sent is not None else await self.send(breaches)
        await asyncio.gather(*(p for p in pending if p is not None))
        await self.sink.write_rows("budget_breaches", [breach_row(b) for b in breaches],
                                   BREACH_COLUMNS)
        self.metrics.breaches += len(breaches)

    async def status_rows(self, now: datetime) -> list[list[Any]]:
        """budget_status rows (current period) of the budgets whose tenants this worker owns."""
        rows = []
        failures = []
        for b in list(self.book.budgets.values()):
            if not self.owns(b.tenant_id) or b.budget_id in self.failed:
                continue
            try:
                start, end = period_bounds(b.period, b.tz, now)
                ps = self.tracker.get(b.budget_id, start) or await self.load_period(b, start,
                                                                                    end)
                spent = ps.spent.get("", Decimal(0))
                rows.append([b.budget_id, b.tenant_id, start, end, b.metric.value, spent,
                             b.limit, percent_of(spent, b.limit), b.mode.value, now])
            except Exception as exc:
                if must_propagate(exc):
                    raise
                failures.append(self.fail(b, failure_reason(exc), now))
        if failures:
            await self.sink.write_rows("budget_failures", failures, FAILURE_COLUMNS)
        return rows
