"""Budgets a worker knows (all of them) and the period spend of those it evaluates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from pipeline.core.budgets import Budget, BudgetBreach, Period, evaluate

PeriodKey = tuple[str, datetime]  # (budget_id, period_start)
SWEEP = timedelta(seconds=10)  # idle template keys are looked for at most this often


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


def _crossings(budget: Budget, period: tuple[datetime, datetime], key: str,
               spent_of: Callable[[str], Decimal], fired: set[str],
               settled: list[int], now: datetime, trigger: str | None
               ) -> list[BudgetBreach]:
    """Breaches newly crossed (whole budget first, then pools); advances ``settled`` (per
    pool, in ("", *sorted pools) order: how many leading thresholds are settled)."""
    out = []
    thresholds = budget.thresholds
    for i, pool in enumerate(("", *sorted(budget.pools))):
        spent = spent_of(pool)
        done = settled[i]
        limit = budget.pool_limit(pool)
        if done < len(thresholds) and spent * 100 < thresholds[done] * limit:
            continue  # the next threshold is not reached: nothing can fire
        out.extend(evaluate(budget, pool, period, spent, fired,
                            now=now, triggering_event_id=trigger, skip=done, key=key))
        settled[i] = sum(1 for t in thresholds if spent * 100 >= t * limit)
    return out


class KeySpend:
    """One template key's spend in one period, kept compact (slots; ~100k keys live at once).

    ``total`` is the whole budget's spend, ``pools`` the per-pool spend (None without pools),
    ``fired`` the breach ids fired (None until one is), ``settled`` a leading-thresholds count
    per pool, ``first``/``last`` the earliest and latest event time counted (epoch seconds;
    a run's breach names ``first`` as its start, and the key expires ``idle_timeout_s`` after
    ``last``).
    """

    __slots__ = ("total", "pools", "fired", "settled", "first", "last")

    def __init__(self, pools: bool, n_pools: int) -> None:
        self.total = _ZERO
        self.pools: dict[str, Decimal] | None = {} if pools else None
        self.fired: set[str] | None = None
        self.settled: list[int] | int = 0 if n_pools == 1 else [0] * n_pools
        self.first = _NEVER
        self.last = -_NEVER

    def add(self, budget: Budget, tier: str, amount: Decimal) -> None:
        """Count an amount for the key, whole and in the event's pool."""
        self.total += amount
        if self.pools is not None and tier in budget.pools:
            self.pools[tier] = self.pools.get(tier, _ZERO) + amount

    def seen(self, at: float) -> None:
        """Widen [first, last] to an event time (epoch seconds)."""
        if at < self.first:
            self.first = at
        if at > self.last:
            self.last = at

    def spent(self) -> dict[str, Decimal]:
        """Spend by pool ("" is the whole budget)."""
        return {"": self.total, **(self.pools or {})}


_ZERO = Decimal(0)
_NEVER = float("inf")


@dataclass
class TemplatePeriod:
    """The keys of one template budget in one period (a run budget: one "period" for all
    runs, RUN_START to RUN_END, its runs told apart by key)."""

    budget: Budget
    start: datetime
    end: datetime
    keys: dict[str, KeySpend] = field(default_factory=dict)

    def load(self, key: str, by_tier: dict[str, Decimal], fired: set[str],
             first: datetime | None, last: datetime | None) -> KeySpend:
        """Track a key from its ledger totals, fired breaches and event-time range."""
        ks = KeySpend(bool(self.budget.pools), 1 + len(self.budget.pools))
        for tier, amount in by_tier.items():
            ks.add(self.budget, tier, Decimal(amount))
        if fired:
            ks.fired = set(fired)
        if first is not None:
            ks.seen(first.timestamp())
        if last is not None:
            ks.seen(last.timestamp())
        self.keys[key] = ks
        return ks

    def evaluate(self, key: str, now: datetime, trigger: str | None) -> list[BudgetBreach]:
        """Breaches the key newly crossed; marks them fired."""
        ks = self.keys[key]
        thresholds = self.budget.thresholds
        if isinstance(ks.settled, int) and ks.settled < len(thresholds) and \
                ks.total * 100 < thresholds[ks.settled] * self.budget.limit:
            return []  # no pools and the next threshold not reached: the common case
        settled = [ks.settled] if isinstance(ks.settled, int) else ks.settled
        spent = ks.spent()
        new = _crossings(self.budget, (self.start, self.end), key,
                         lambda pool: spent.get(pool, _ZERO), ks.fired or set(),
                         settled, now, trigger)
        ks.settled = settled[0] if isinstance(ks.settled, int) else settled
        if not new:
            return new
        ks.fired = (ks.fired or set()) | {b.breach_id for b in new}
        if self.budget.period is Period.run and ks.first != _NEVER:
            # a run's breach names the run: from its earliest event counted to when it closes
            # if nothing more comes (breach_id keeps RUN_START, so it does not move with them)
            start = datetime.fromtimestamp(ks.first, timezone.utc)
            end = datetime.fromtimestamp(ks.last, timezone.utc) + timedelta(
                seconds=self.budget.idle_timeout_s)
            new = [b.model_copy(update={"period_start": start, "period_end": end})
                   for b in new]
        return new

    def expire(self, now: datetime) -> int:
        """Drop keys idle (by event time) longer than the budget's idle timeout; how many."""
        cutoff = now.timestamp() - self.budget.idle_timeout_s
        idle = [k for k, ks in self.keys.items() if ks.last < cutoff]
        for k in idle:
            del self.keys[k]
        return len(idle)


class BudgetTracker:
    """Period spend of the budgets this worker evaluates (tenants on its partitions):
    ``periods`` for plain budgets, ``templates`` (their keys) for templates and runs."""

    def __init__(self) -> None:
        self.periods: dict[PeriodKey, PeriodSpend] = {}
        self.templates: dict[PeriodKey, TemplatePeriod] = {}
        self._swept: datetime | None = None

    def get(self, budget_id: str, start: datetime) -> PeriodSpend | None:
        """The tracked period of a plain budget, if loaded."""
        return self.periods.get((budget_id, start))

    def template(self, budget: Budget, start: datetime, end: datetime) -> TemplatePeriod:
        """The tracked keys of a template budget's period (created empty)."""
        tp = self.templates.get((budget.budget_id, start))
        if tp is None:
            tp = self.templates[(budget.budget_id, start)] = TemplatePeriod(budget, start, end)
        return tp

    def key(self, budget_id: str, start: datetime, key: str) -> KeySpend | None:
        """A template key's tracked spend, if loaded."""
        tp = self.templates.get((budget_id, start))
        return None if tp is None else tp.keys.get(key)

    def active_keys(self) -> int:
        """How many template keys are tracked (all budgets and periods)."""
        return sum(len(tp.keys) for tp in self.templates.values())

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
        for key in [k for k in self.templates if k[0] == budget_id]:
            del self.templates[key]

    def expire(self, now: datetime, keep: timedelta = timedelta(days=1)) -> None:
        """Drop periods that ended more than ``keep`` ago."""
        for key in [k for k, v in self.periods.items() if v.end + keep < now]:
            del self.periods[key]

    def expire_keys(self, now: datetime, every: timedelta = SWEEP) -> int:
        """Drop template keys idle (by event time) longer than their budget's idle timeout,
        and template periods that ended a day ago; at most one sweep per ``every`` of the
        worker clock (a sweep walks every key). A returning key is reloaded from the ledger.
        Returns how many keys were dropped."""
        if self._swept is not None and now - self._swept < every:
            return 0
        self._swept = now
        dropped = 0
        for key, tp in list(self.templates.items()):
            if tp.end + timedelta(days=1) < now:
                dropped += len(tp.keys)
                del self.templates[key]
                continue
            dropped += tp.expire(now)
            if not tp.keys:
                del self.templates[key]
        return dropped
