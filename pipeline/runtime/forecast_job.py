"""The forecast job: ledger -> statsmodels -> forecasts table + forecast breaches.

Fits run in a pool of processes (both cores) for many budgets; reads and writes stay in the
calling process, which owns the ClickHouse store.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pipeline.core.budgets import Budget, BudgetBreach, period_bounds
from pipeline.core.forecast import (
    Forecast,
    bucket_step,
    forecast_breaches,
    forecast_budget,
    forecastable,
)
from pipeline.store import ledger
from pipeline.store.client import Store

HISTORY = {timedelta(hours=1): timedelta(days=21), timedelta(days=1): timedelta(days=120)}
FORECAST_COLUMNS = (
    "budget_id", "tenant_id", "run_at", "period_start", "period_end", "model", "reason",
    "history_points", "spent", "limit", "predicted_spend", "lower", "upper", "run_rate_spend",
    "probability_exceed", "backtest_wape", "points_at", "points_p50", "points_lower",
    "points_upper",
)
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
INLINE_BELOW = 24  # fewer budgets than this: fit in-process (a pool costs ~2 s to start)


@dataclass(frozen=True)
class Job:
    """Inputs of one budget's forecast, gathered from the ledger."""

    budget: Budget
    history: list[tuple[datetime, Decimal]]
    spent: Decimal
    period: tuple[datetime, datetime]
    now: datetime


def _run(job: Job) -> Forecast:
    return forecast_budget(job.budget, job.history, job.spent, job.period, job.now)


def gather(store: Store, budget: Budget, now: datetime) -> Job:
    """Read one budget's bucket history and period-to-date spend."""
    step = bucket_step(budget)
    period = period_bounds(budget.period, budget.tz, now)
    history = ledger.bucket_history(store, budget, now - HISTORY[step], now,
                                    hourly=step == timedelta(hours=1))
    spent = sum(ledger.period_spend(store, budget, period[0], period[1]).values(), Decimal(0))
    return Job(budget, [(ts, Decimal(a)) for ts, a in history], spent, period, now)


def forecast_row(f: Forecast) -> list[Any]:
    """One forecasts-table row, in FORECAST_COLUMNS order."""
    return [
        f.budget_id, f.tenant_id, f.run_at, f.period_start, f.period_end, f.model, f.reason,
        f.history_points, f.spent, f.limit, f.predicted_spend, f.lower, f.upper,
        f.run_rate_spend, f.probability_exceed, f.backtest_wape,
        [p.at for p in f.points], [p.p50 for p in f.points], [p.lower for p in f.points],
        [p.upper for p in f.points],
    ]


def fit_all(jobs: Sequence[Job], processes: int = 2,
            progress: Callable[[int, int], None] = lambda done, total: None) -> list[Forecast]:
    """Forecast every job, in parallel processes when there are many."""
    if len(jobs) < INLINE_BELOW or processes <= 1:
        out = []
        for i, job in enumerate(jobs, 1):
            out.append(_run(job))
            progress(i, len(jobs))
        return out
    ctx = multiprocessing.get_context("spawn")  # never fork a process holding chDB
    # one BLAS thread per process: N processes x N BLAS threads on N cores thrash
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
            results = []
            for i, f in enumerate(pool.map(_run, jobs, chunksize=4), 1):
                results.append(f)
                progress(i, len(jobs))
            return results
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def run_forecasts(store: Store, budgets: Iterable[Budget], now: datetime, *,
                        publish: Callable[[BudgetBreach], Awaitable[None]] | None = None,
                        processes: int = 2,
                        progress: Callable[[int, int], None] = lambda d, t: None,
                        ) -> tuple[list[Forecast], list[BudgetBreach]]:
    """Forecast budgets, store every run, publish forecast breaches (publish, then mirror)."""
    import asyncio

    from pipeline.store.sink import BREACH_COLUMNS, breach_row

    wanted = [b for b in budgets if forecastable(b)]
    jobs = [await asyncio.to_thread(gather, store, b, now) for b in wanted]
    forecasts = await asyncio.to_thread(fit_all, jobs, processes, progress)
    if forecasts:
        await asyncio.to_thread(store.insert, "forecasts", [forecast_row(f) for f in forecasts],
                                FORECAST_COLUMNS)
    breaches: list[BudgetBreach] = []
    for budget, f in zip(wanted, forecasts, strict=True):
        fired = await asyncio.to_thread(ledger.fired_breaches, store, budget.budget_id,
                                        f.period_start)
        breaches.extend(forecast_breaches(budget, f, fired, now))
    if breaches:
        if publish is not None:
            for b in breaches:
                await publish(b)
        await asyncio.to_thread(store.insert, "budget_breaches",
                                [breach_row(b) for b in breaches], BREACH_COLUMNS)
    return forecasts, breaches


def summary(f: Forecast) -> dict[str, Any]:
    """The `tokenmeter forecast --json` object of one budget."""
    data = f.model_dump(mode="json", exclude={"points"})
    return data
