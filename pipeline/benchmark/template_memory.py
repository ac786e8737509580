"""Memory per active template key, measured with tracemalloc at 100k keys.

    python -m pipeline.benchmark.template_memory [KEYS]

Events of KEYS distinct users go through BudgetEvaluator.count (the worker's own path: the
batched key loads from an in-memory ledger, the slots, the breaches) for a $5/day template
over user_id, and a run budget over trace_id with three value-tier pools. The figure is the
memory traced after counting, minus before (the events themselves excluded), per key; the
key strings are part of it, as the worker keeps them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pipeline.core.budgets import Budget
from pipeline.core.catalog import load_catalog
from pipeline.core.events import PricedUsage
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.stream.budget_eval import BudgetEvaluator
from pipeline.stream.live import LiveState
from pipeline.stream.staging import Metrics
from pipeline.testing import InMemoryLedger

T0 = datetime(2026, 6, 17, 10, 0, tzinfo=timezone.utc)
BATCH = 5_000


def _events(keys: int, each: str) -> list[PricedUsage]:
    """Two events per key; one key in ten crosses 50% of a $5 limit (a fired breach)."""
    meter = Meter(load_catalog(), load_policy())
    out = []
    for i in range(2 * keys):
        k = i % keys
        tokens = 1_100_000 if k % 10 == 0 else 1_000
        field: dict[str, Any] = ({"user_id": f"user-{k:07d}"} if each == "user_id"
                                 else {"trace_id": f"run-{k:07d}"})
        out.append(meter.meter_object({
            "event_id": f"e{i}", "tenant_id": "acme", "timestamp": T0.isoformat(),
            "provider": "openai", "model": "gpt-4o", "input_tokens": tokens,
            "output_tokens": 0, "value_tier": ("critical", "standard", "low")[k % 3],
            **field}, now=T0))
    return out


async def _noop() -> None:
    return None


def measure(budget: Budget, keys: int) -> dict[str, float]:
    """Bytes per active key of one template budget after ``keys`` keys were counted."""
    events = _events(keys, budget.each or "")
    ledger = InMemoryLedger()
    live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=1), max_ids=10)
    live.get(0)
    evaluator = BudgetEvaluator(ledger, ledger, live, Metrics(), publish_breach=None,
                                partition_of=lambda tenant: 0, clock=lambda: T0, drain=_noop)
    evaluator.book.put(budget)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    breaches = 0
    for i in range(0, len(events), BATCH):
        breaches += len(asyncio.run(evaluator.count(events[i:i + BATCH], T0, [])))
    seconds = time.perf_counter() - started
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    active = evaluator.tracker.active_keys()
    return {"keys": active, "bytes_per_key": round((after - before) / active, 1),
            "mib": round((after - before) / 2**20, 1), "breaches": breaches,
            "count_seconds": round(seconds, 2)}


def run(keys: int = 100_000) -> dict[str, Any]:
    """Memory per active key of a user_id day template and a trace_id run budget."""
    users = Budget(budget_id="users", tenant_id="acme", limit=Decimal(5), period="day",
                   each="user_id")
    runs = Budget(budget_id="runs", tenant_id="acme", limit=Decimal(5), period="run",
                  each="trace_id", pools={"critical": Decimal("0.5"),
                                          "standard": Decimal("0.3"), "low": Decimal("0.2")})
    u, r = measure(users, keys), measure(runs, keys)
    return {"template_keys": u["keys"], "template_bytes_per_key": u["bytes_per_key"],
            "template_mib": u["mib"], "template_count_s": u["count_seconds"],
            "run_pools_bytes_per_key": r["bytes_per_key"], "run_pools_mib": r["mib"],
            "run_pools_count_s": r["count_seconds"]}


def main() -> None:  # pragma: no cover
    keys = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(json.dumps(run(keys)))


if __name__ == "__main__":  # pragma: no cover
    main()
