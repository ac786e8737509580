"""Budgets a worker knows (all of them) and the period spend of those it evaluates."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from pipeline.core.budgets import Budget, BudgetBreach, evaluate

PeriodKey = tuple[str, datetime]  # (budget_id, period_start)


class BudgetBook:
    """Every budget, by id and by tenant (each worker holds all of them)."""

    def __init__(self) -> None:
        self.budgets: dict[str, Budget] = {}
        self._by_tenant: dict[str, list[Budget]] = {}

    def put(self, budget: Budget) -> Budget | None:
        """Add or replace a budget; returns the version it replaced."""
        old = self.budgets.get(budget.budget_id)
        self.budgets[budget.budget_id] = budget
        self._reindex()
        return old

    def delete(self, budget_id: str) -> Budget | None:
        """Remove a budget; returns it when it existed."""
        old = self.budgets.pop(budget_id, None)
        self._reindex()
        return old

    def for_tenant(self, tenant_id: str) -> list[Budget]:
        """The tenant's budgets (empty list when none)."""
        return self._by_tenant.get(tenant_id, [])

    def _reindex(self) -> None:
        index: dict[str, list[Budget]] = {}
        for b in self.budgets.values():
            index.setdefault(b.tenant_id, []).append(b)
        self._by_tenant = index


@dataclass
class PeriodSpend:
    """Spend of one budget in one period: whole ("") and per pool, and breaches fired."""

    budget: Budget
    start: datetime
    end: datetime
    spent: dict[str, Decimal] = field(default_factory=dict)
    fired: set[str] = field(default_factory=set)
    # per pool: how many leading thresholds are crossed and settled. Spend only grows in a
    # period, so evaluation starts there instead of re-hashing every crossed threshold.
    settled: dict[str, int] = field(default_factory=dict)

    def add(self, tier: str, amount: Decimal) -> None:
        """Count an amount for the whole budget and for the event's pool."""
        self.spent[""] = self.spent.get("", Decimal(0)) + amount
        if tier in self.budget.pools:
            self.spent[tier] = self.spent.get(tier, Decimal(0)) + amount

    def evaluate(self, now: datetime, trigger: str | None) -> list[BudgetBreach]:
        """Breaches newly crossed (whole budget first, then pools); marks them fired."""
        out = []
        thresholds = self.budget.thresholds
        for pool in ("", *sorted(self.budget.pools)):
            spent = self.spent.get(pool, Decimal(0))
            done = self.settled.get(pool, 0)
            if done < len(thresholds) and spent * 100 < thresholds[done] * \
                    self.budget.pool_limit(pool):
                continue  # the next threshold is not reached: nothing can fire
            new = evaluate(self.budget, pool, (self.start, self.end), spent, self.fired,
                           now=now, triggering_event_id=trigger, skip=done)
            self.fired.update(b.breach_id for b in new)
            limit = self.budget.pool_limit(pool)
            self.settled[pool] = sum(1 for t in thresholds if spent * 100 >= t * limit)
            out.extend(new)
        return out


class BudgetTracker:
    """Period spend of the budgets this worker evaluates (tenants on its partitions)."""

    def __init__(self) -> None:
        self.periods: dict[PeriodKey, PeriodSpend] = {}

    def get(self, budget_id: str, start: datetime) -> PeriodSpend | None:
        """The tracked period, if loaded."""
        return self.periods.get((budget_id, start))

    def load(self, budget: Budget, start: datetime, end: datetime,
             by_tier: dict[str, Decimal], fired: set[str]) -> PeriodSpend:
        """Start tracking a period from its ledger totals and already-fired breaches."""
        ps = PeriodSpend(budget, start, end, fired=set(fired))
        for tier, amount in by_tier.items():
            ps.add(tier, Decimal(amount))
        self.periods[(budget.budget_id, start)] = ps
        return ps

    def forget(self, budget_id: str) -> None:
        """Drop every period of a budget (changed or deleted: reload from the ledger)."""
        for key in [k for k in self.periods if k[0] == budget_id]:
            del self.periods[key]

    def expire(self, now: datetime, keep: timedelta = timedelta(days=1)) -> None:
        """Drop periods that ended more than ``keep`` ago."""
        for key in [k for k, v in self.periods.items() if v.end + keep < now]:
            del self.periods[key]
