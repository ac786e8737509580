"""The spend-velocity watch: a Processor Watcher that publishes anomaly breaches.

Per budget with ``anomaly.enabled`` (tenants this worker owns), each batch's fresh events
are counted into 5 s event-time buckets (core/anomaly.RateWindow) and every window is judged
against the baseline of the current UTC hour of the week. Baselines are read from the ledger
off the hot path (a task running the query in a thread), cached per (budget, hour) and the
next hour's prefetched before the hour turns; until a budget's baseline is loaded only its
max_rate applies. A failing baseline read is logged and retried later: metering never waits
for it and never stops because of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from pipeline.core.anomaly import (
    COOLDOWN_S,
    WEEKS,
    Baseline,
    Cause,
    Episode,
    HourRow,
    KeyHeat,
    RateWindow,
    anomaly_breach,
    baseline_for,
    bucket_of,
    hour_start,
    judge,
    step,
)
from pipeline.core.budgets import Budget, BudgetBreach
from pipeline.core.events import PricedUsage
from pipeline.store.baseline import hourly_history
from pipeline.stream.budget_book import BudgetBook

log = logging.getLogger(__name__)

# (budget, hour) -> the scope's (hour, spend, calls) rows; blocking (run in a thread)
BaselineRead = Callable[[Budget, datetime], Sequence[HourRow]]
BaselineKey = tuple[str, datetime]  # (budget_id, UTC hour start)
OnClear = Callable[[str, datetime], None]


class VelocityWatch:
    """Spend rate per budget over short windows, judged against a ledger baseline.

    ``source`` is a Store (the baseline query of store/baseline.py) or a blocking callable
    (budget, hour) -> rows, e.g. a test double. ``book`` is the processor's BudgetBook or a
    callable tenant -> budgets; ``owns`` says which tenants this worker evaluates (both can be
    given later with :meth:`bind`). ``on_clear(budget_id, now)`` is called when an episode
    ends (the rate stayed below the alert level for ``cooldown_s``).
    """

    def __init__(self, source: Any, clock: Callable[[], datetime], *,
                 book: BudgetBook | Callable[[str], Sequence[Budget]] | None = None,
                 owns: Callable[[str], bool] = lambda tenant: True,
                 weeks: int = WEEKS, cooldown_s: int = COOLDOWN_S, retry_s: int = 60,
                 prefetch_s: int = 600, on_clear: OnClear | None = None) -> None:
        self._read: BaselineRead = source if callable(source) else (
            lambda b, hour: hourly_history(source, b, hour, weeks))
        self.clock = clock
        self.weeks = weeks
        self.cooldown_s = cooldown_s
        self.retry_s = retry_s
        self.prefetch_s = prefetch_s
        self.on_clear = on_clear
        self._budgets_of: Callable[[str], Sequence[Budget]] = lambda tenant: ()
        self.owns = owns
        if book is not None:
            self.bind(book, owns)
        self.known: dict[str, Budget] = {}  # the version each budget's state was built for
        self.windows: dict[str, RateWindow] = {}
        self.heat: dict[str, KeyHeat] = {}  # templates: recent spend per key
        self.episodes: dict[str, Episode] = {}
        # None: loaded, but the scope has under a day of history (only max_rate applies)
        self.baselines: dict[BaselineKey, Baseline | None] = {}
        self.loading: dict[BaselineKey, asyncio.Task[None]] = {}
        self.retry_at: dict[BaselineKey, datetime] = {}
        self.loads = 0  # baseline reads that succeeded
        self.failures = 0
        self.last_failure: str | None = None
        self._hour: datetime | None = None

    def bind(self, book: BudgetBook | Callable[[str], Sequence[Budget]],
             owns: Callable[[str], bool]) -> None:
        """Read budgets from ``book`` and evaluate only tenants ``owns`` accepts."""
        self._budgets_of = book.for_tenant if isinstance(book, BudgetBook) else book
        self.owns = owns

    async def observe(self, fresh: list[PricedUsage], now: datetime) -> list[BudgetBreach]:
        """Count a batch's fresh events; the anomaly breaches of episodes it opens."""
        self._turn_hour(now)
        touched: dict[str, str] = {}  # budget_id -> last event counted (the trigger)
        watched: dict[str, list[Budget]] = {}  # tenant -> its anomaly budgets, once a batch
        for p in fresh:
            scoped = watched.get(p.tenant_id)
            if scoped is None:
                scoped = watched[p.tenant_id] = [
                    b for b in self._budgets_of(p.tenant_id) if b.anomaly.enabled
                ] if self.owns(p.tenant_id) else []
            for b in scoped:
                if not b.matches(p):
                    continue
                key = b.key_of(p)
                if key is None:  # a template's event without its key: not under it at all
                    continue
                window = self._window(b)
                amount = b.measure(p)
                if window.add(p.timestamp, amount, now):
                    touched[b.budget_id] = p.event_id
                    if key:
                        self._heat(b).add(key, amount, min(p.timestamp, now))
        out: list[BudgetBreach] = []
        for budget_id in list({*touched, *self.episodes}):
            known = self.known.get(budget_id)
            if known is None:
                continue
            breach = self._evaluate(known, now, touched.get(budget_id))
            if breach is not None:
                out.append(breach)
        return out

    def _window(self, b: Budget) -> RateWindow:
        """The budget's bucket window (state is rebuilt when the budget changes)."""
        if self.known.get(b.budget_id) != b:
            self.forget(b.budget_id)
            self.known[b.budget_id] = b
        window = self.windows.get(b.budget_id)
        if window is None:
            window = self.windows[b.budget_id] = RateWindow(max(b.anomaly.windows_s))
        return window

    def _heat(self, b: Budget) -> KeyHeat:
        heat = self.heat.get(b.budget_id)
        if heat is None:
            heat = self.heat[b.budget_id] = KeyHeat(min(b.anomaly.windows_s))
        return heat

    async def tick(self, now: datetime) -> None:
        """Advance open episodes without new events (on a timer: a block that stopped the
        only traffic still clears after the cooldown) and drop cold template keys."""
        for heat in self.heat.values():
            heat.prune(now)
        await self.observe([], now)  # evaluates open episodes only: it never fires

    def forget(self, budget_id: str) -> None:
        """Drop every piece of a budget's state (changed or deleted)."""
        self.known.pop(budget_id, None)
        self.windows.pop(budget_id, None)
        self.heat.pop(budget_id, None)
        self.episodes.pop(budget_id, None)
        for key in [k for k in self.baselines if k[0] == budget_id]:
            del self.baselines[key]

    def _evaluate(self, b: Budget, now: datetime, trigger: str | None) -> BudgetBreach | None:
        window = self.windows.get(b.budget_id)
        if window is None:
            return None
        baseline = self.baseline(b, now)
        readings = [judge(w, window.spend(w, now), window.count(w, now), b.anomaly, baseline)
                    for w in b.anomaly.windows_s]
        # the episode starts at the newest bucket counted (event time, not the worker clock),
        # so a replay of the same events repeats the same breach_id
        head = max(window.buckets, default=bucket_of(now))
        result = step(self.episodes.get(b.budget_id), readings, budget_id=b.budget_id,
                      head_bucket=min(head, bucket_of(now)), now=now,
                      cooldown_s=self.cooldown_s)
        if result.episode is None:
            self.episodes.pop(b.budget_id, None)
        else:
            self.episodes[b.budget_id] = result.episode
        if result.cleared and self.on_clear is not None:
            try:
                self.on_clear(b.budget_id, now)
            except Exception:  # a broken hook must not stop metering
                log.exception("on_clear hook failed for budget %s", b.budget_id)
        if result.fire is None or result.episode is None:
            return None
        heat = self.heat.get(b.budget_id)
        by_spend = result.fire.cause is Cause.max_rate  # attribute by what fired
        key = (heat.top(now, by_spend) if heat is not None else None) or ""
        return anomaly_breach(b, result.fire, result.episode, now, trigger, key)

    # ----- baselines, off the hot path

    def baseline(self, b: Budget, now: datetime) -> Baseline | None:
        """The baseline of ``now``'s hour, or None (not loaded yet: a load is started; or the
        scope is still learning); the next hour's is loaded in the last ``prefetch_s``."""
        hour = hour_start(now)
        got = self.baselines.get((b.budget_id, hour))
        if (b.budget_id, hour) not in self.baselines:
            self._request(b, hour, now)
        if now >= hour + timedelta(seconds=3600 - self.prefetch_s):
            self._request(b, hour + timedelta(hours=1), now)
        return got

    def _request(self, b: Budget, hour: datetime, now: datetime) -> None:
        key = (b.budget_id, hour)
        if key in self.baselines or key in self.loading:
            return
        retry = self.retry_at.get(key)
        if retry is not None and now < retry:
            return
        self.loading[key] = asyncio.get_running_loop().create_task(self._load(b, hour, key))

    async def _load(self, b: Budget, hour: datetime, key: BaselineKey) -> None:
        try:
            rows = await asyncio.to_thread(self._read, b, hour)
            if self.known.get(b.budget_id) == b:  # not changed meanwhile
                self.baselines[key] = baseline_for(rows, hour, self.weeks)
                self.retry_at.pop(key, None)
                self.loads += 1
        except Exception as exc:
            # metering goes on: until a baseline loads only max_rate applies
            self.failures += 1
            self.last_failure = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            self.retry_at[key] = self.clock() + timedelta(seconds=self.retry_s)
            log.warning("baseline read for budget %s failed (%s); retrying in %d s",
                        b.budget_id, self.last_failure[:200], self.retry_s)
        finally:
            self.loading.pop(key, None)

    async def settle(self) -> None:
        """Wait for the baseline loads in flight (tests, benchmarks, shutdown)."""
        while self.loading:
            await asyncio.gather(*list(self.loading.values()), return_exceptions=True)

    def _turn_hour(self, now: datetime) -> None:
        """On a new hour, drop baselines and retry marks of hours gone."""
        hour = hour_start(now)
        if hour == self._hour:
            return
        self._hour = hour
        for key in [k for k in self.baselines if k[1] < hour]:
            del self.baselines[key]
        for key in [k for k in self.retry_at if k[1] < hour]:
            del self.retry_at[key]
