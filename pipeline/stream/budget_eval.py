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
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from typing import Any

from pipeline.core.budgets import Budget, BudgetBreach, Period, percent_of, period_bounds
from pipeline.core.events import PricedUsage
from pipeline.errors import StoreError
from pipeline.store.sink import (
    BREACH_COLUMNS,
    FAILURE_COLUMNS,
    Fault,
    breach_row,
    classify_store_error,
)
from pipeline.stream.budget_book import (
    BudgetBook,
    BudgetTracker,
    PeriodSpend,
    TemplatePeriod,
)
from pipeline.stream.live import LiveState
from pipeline.stream.ports import LedgerReads, LedgerWrites, Publish
from pipeline.stream.staging import Metrics

log = logging.getLogger(__name__)
CATCH_UP_KEYS = 100_000  # at most this many keys past a threshold are evaluated at once
# (period, template key or "", value tier, amount, event_id, event time)
Hit = tuple[PeriodSpend | TemplatePeriod, str, str, Decimal, str, datetime]


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
        if self.tracker.templates:
            # before loading: a key idle past its timeout is dropped, and its next event
            # reloads it from the ledger (exact, and memory stays bounded)
            self.tracker.expire_keys(now)
        breaches: list[BudgetBreach] = []
        for target, key, tier, amount, event_id, at in await self._hits(fresh, now, failures):
            budget = target.budget
            if budget.budget_id in self.failed:
                continue  # failed earlier in this batch
            try:
                if isinstance(target, PeriodSpend):
                    target.add(tier, amount)
                    breaches.extend(target.evaluate(now, event_id))
                    continue
                ks = target.keys.get(key)
                if ks is None:
                    continue  # its budget was forgotten in this batch (failed)
                ks.add(budget, tier, amount)
                ks.seen(at.timestamp())
                breaches.extend(target.evaluate(key, now, event_id))
            except Exception as exc:
                if must_propagate(exc):
                    raise
                failures.append(self.fail(budget, failure_reason(exc), now))
        if self.tracker.periods:
            self.tracker.expire(now)
        return breaches

    async def _hits(self, fresh: list[PricedUsage], now: datetime,
                    failures: list[list[Any]]) -> list[Hit]:
        """(period, key, tier, amount, event_id, event time) for every event x matching
        budget (a template's events without its key do not count).

        Periods (and template keys) not yet tracked are loaded from the ledger first, before
        this batch is written, so the batch is counted exactly once: one load per plain
        period, one per template period for all of its keys missing in the batch. A budget
        that raises is marked failed (a row appended to ``failures``) and skipped; every
        other budget goes on.
        """
        wanted: list[tuple[Budget, PricedUsage, datetime, Decimal, str]] = []
        missing: dict[tuple[str, datetime], tuple[Budget, datetime, datetime]] = {}
        keys: dict[tuple[str, datetime], tuple[Budget, datetime, datetime, set[str]]] = {}
        # budget_id -> the last period found in this batch: periods tile time, so an event
        # inside it is in that period (no time-zone arithmetic for most events)
        spans: dict[str, tuple[datetime, datetime]] = {}
        for p in fresh:
            for b in self.book.for_tenant(p.tenant_id):
                if b.budget_id in self.failed:
                    continue
                try:
                    if not b.matches(p):
                        continue
                    key = b.key_of(p)
                    if key is None:
                        continue  # a template's event without the key: not counted
                    span = spans.get(b.budget_id)
                    if span is not None and span[0] <= p.timestamp < span[1]:
                        start, end = span
                    else:
                        start, end = spans[b.budget_id] = period_bounds(b.period, b.tz,
                                                                        p.timestamp)
                    amount = b.measure(p)
                except Exception as exc:
                    failures.append(self.fail(b, failure_reason(exc), now))
                    continue
                wanted.append((b, p, start, amount, key))
                if b.each is None:
                    if self.tracker.get(b.budget_id, start) is None:
                        missing[(b.budget_id, start)] = (b, start, end)
                elif self.tracker.key(b.budget_id, start, key) is None:
                    keys.setdefault((b.budget_id, start), (b, start, end, set()))[3].add(key)
        loads: list[tuple[Budget, Callable[[], Awaitable[Any]]]] = []
        for b, start, end in missing.values():
            loads.append((b, partial(self.load_period, b, start, end)))
        for b, start, end, names in keys.values():
            loads.append((b, partial(self.load_keys, b, start, end, names)))
        for b, load in loads:
            if b.budget_id in self.failed:
                continue
            try:
                await load()
            except Exception as exc:
                if must_propagate(exc):
                    raise
                failures.append(self.fail(b, failure_reason(exc), now))
        hits: list[Hit] = []
        for b, p, start, amount, key in wanted:
            if b.budget_id in self.failed:
                continue
            if b.each is None:
                ps = self.tracker.get(b.budget_id, start)
                if ps is not None:
                    hits.append((ps, "", p.value_tier, amount, p.event_id, p.timestamp))
                continue
            tp = self.tracker.templates.get((b.budget_id, start))
            if tp is not None:
                hits.append((tp, key, p.value_tier, amount, p.event_id, p.timestamp))
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

    async def load_keys(self, b: Budget, start: datetime, end: datetime,
                        keys: set[str]) -> TemplatePeriod:
        """Track template keys of a period from the ledger: their totals, event-time range
        and already-fired breaches, in one query each for all of them (chunked by size)."""
        await self.drain()  # the ledger must hold every batch already counted in memory
        names = sorted(keys)
        rows = await asyncio.to_thread(self.ledger.key_spend, b, start, end, names)
        # a run's breaches name the run's own first event as period_start: match any period
        fired = await asyncio.to_thread(self.ledger.fired_key_breaches, b.budget_id,
                                        None if b.period is Period.run else start, names)
        by_key: dict[str, tuple[dict[str, Decimal], list[datetime]]] = {}
        for key, tier, amount, first, last in rows:
            by_tier, seen = by_key.setdefault(key, ({}, []))
            by_tier[tier] = by_tier.get(tier, Decimal(0)) + Decimal(amount)
            seen.extend((first, last))
        fired_of: dict[str, set[str]] = {}
        for key, bid in fired:
            fired_of.setdefault(key, set()).add(bid)
        tp = self.tracker.template(b, start, end)
        for key in names:
            by_tier, seen = by_key.get(key, ({}, []))
            tp.load(key, by_tier, fired_of.get(key, set()), min(seen, default=None),
                    max(seen, default=None))
        return tp

    async def evaluate_budget(self, budget: Budget, now: datetime) -> list[BudgetBreach]:
        """Load the budget's current period from the ledger and publish what is crossed
        (a template: its tracked keys; an untracked key is evaluated at its next event)."""
        start, end = period_bounds(budget.period, budget.tz, now)
        if budget.each is not None:
            breaches = await self._catch_up_keys(budget, start, end, now)
        else:
            ps = self.tracker.get(budget.budget_id, start) or await self.load_period(
                budget, start, end)
            breaches = ps.evaluate(now, None)
        if breaches:
            await self.emit(breaches)
        return breaches

    async def _catch_up_keys(self, budget: Budget, start: datetime, end: datetime,
                             now: datetime) -> list[BudgetBreach]:
        """Evaluate the template keys already past the budget's lowest threshold (a run
        budget: runs still open), loading the untracked ones, so a template created or
        taken over mid-period publishes what is crossed at once, as a plain budget does."""
        shares = [budget.pools[p] for p in budget.pools] or [Decimal(1)]
        least = budget.thresholds[0] * budget.limit * min(shares) / 100  # any pool's first
        since = (now - timedelta(seconds=budget.idle_timeout_s)
                 if budget.period is Period.run else None)
        await self.drain()
        keys = await asyncio.to_thread(self.ledger.keys_over, budget, start, end, least,
                                       since, CATCH_UP_KEYS)
        tp = self.tracker.template(budget, start, end)
        missing = {k for k in keys if k not in tp.keys}
        if missing:
            await self.load_keys(budget, start, end, missing)
        return [b for key in keys for b in tp.evaluate(key, now, None)]

    async def spend_for(self, budget: Budget, key: str, now: datetime) -> dict[str, Decimal]:
        """Current-period spend of a budget (of one template key: "" for a plain budget;
        a run's whole spend so far for a run budget), by pool ("" is the whole budget);
        loaded from the ledger when not tracked. The caller holds the Processor's lock."""
        start, end = period_bounds(budget.period, budget.tz, now)
        if budget.each is None:
            ps = self.tracker.get(budget.budget_id, start) or await self.load_period(
                budget, start, end)
            return dict(ps.spent)
        if not key:
            return {"": Decimal(0)}  # no key value named: nothing is spent under it
        ks = self.tracker.key(budget.budget_id, start, key)
        if ks is None:
            ks = (await self.load_keys(budget, start, end, {key})).keys[key]
        return ks.spent()

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
        """budget_status rows (current period) of the budgets whose tenants this worker owns.

        A template writes one row for itself, never one per key: ``spent`` is its most-spent
        key tracked in memory (keys idle past the timeout are not). A run budget's row spans
        its active runs (the earliest first event to the latest close) and is left out while
        no run is active.
        """
        rows = []
        failures = []
        for b in list(self.book.budgets.values()):
            if not self.owns(b.tenant_id) or b.budget_id in self.failed:
                continue
            try:
                start, end = period_bounds(b.period, b.tz, now)
                if b.each is not None:
                    row = self._template_status(b, start, end, now)
                    if row is not None:
                        rows.append(row)
                    continue
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

    def _template_status(self, b: Budget, start: datetime, end: datetime,
                         now: datetime) -> list[Any] | None:
        """The one budget_status row of a template (its most-spent tracked key)."""
        tp = self.tracker.templates.get((b.budget_id, start))
        active = list(tp.keys.values()) if tp is not None else []
        spent = max((ks.total for ks in active), default=Decimal(0))
        if b.period is Period.run:
            seen = [ks for ks in active if ks.last >= ks.first]
            if not seen:
                return None
            start = datetime.fromtimestamp(min(ks.first for ks in seen), timezone.utc)
            end = datetime.fromtimestamp(max(ks.last for ks in seen) + b.idle_timeout_s,
                                         timezone.utc)
        return [b.budget_id, b.tenant_id, start, end, b.metric.value, spent, b.limit,
                percent_of(spent, b.limit), b.mode.value, now]
