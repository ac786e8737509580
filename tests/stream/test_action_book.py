"""ActionBook: actions written through to budget_actions, seen by every worker, reset sticks."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

from pipeline.core.budgets import BreachKind, Budget, BudgetBreach, Metric
from pipeline.store.client import Store
from pipeline.stream.action_book import ActionBook
from tests.helpers import NOW

# the book keeps whatever key a breach names; one budget carries both kinds here (a template
# may not have a forecast action: forecasts skip templates)
BUDGET = Budget.model_validate({"budget_id": "runs", "tenant_id": "acme", "limit": 2,
                                "actions": {"anomaly": "block", "forecast": "downgrade"}})


def breach(kind: BreachKind, key: str, bid: str, at: Any = NOW) -> BudgetBreach:
    return BudgetBreach(
        breach_id=bid, budget_id="runs", tenant_id="acme", kind=kind,
        threshold_pct=Decimal(100), spent=Decimal(1), limit=Decimal(2), percent=Decimal(50),
        metric=Metric.cost, period_start=NOW - timedelta(hours=1),
        period_end=NOW + timedelta(hours=1), severity="critical", action="block",
        emitted_at=at, each="trace_id", key=key)


def test_actions_are_shared_through_clickhouse_and_reset_sticks(store: Store) -> None:
    async def scenario() -> None:
        one, two = ActionBook(store), ActionBook(store)  # two workers
        a = await one.on_breach(BUDGET, breach(BreachKind.anomaly, "run-1", "x1"), NOW)
        assert a is not None and (a.action, a.key) == ("block", "run-1")
        await one.on_breach(BUDGET, breach(BreachKind.forecast, "run-2", "x2"), NOW)
        await two.refresh(NOW)
        assert [(x.kind, x.key, x.action) for x in two.active(NOW)] == [
            ("anomaly", "run-1", "block"), ("forecast", "run-2", "downgrade")]
        # the velocity watch clears the anomaly on another worker
        cleared = await two.clear("runs", "anomaly", NOW + timedelta(seconds=1))
        assert [x.key for x in cleared] == ["run-1"]
        await one.refresh(NOW + timedelta(seconds=2))
        assert [x.kind for x in one.active(NOW)] == ["forecast"]
        # an operator resets the budget; a fresh worker (a restart) sees nothing active
        lifted = await one.reset("runs", NOW + timedelta(seconds=3))
        assert [x.key for x in lifted] == ["run-2"]
        fresh = ActionBook(store)
        await fresh.refresh(NOW + timedelta(seconds=4))
        assert fresh.active(NOW + timedelta(seconds=4)) == []
        # a replay of a lifted breach does not turn it on again; a new breach does
        later = NOW + timedelta(seconds=5)
        assert await fresh.on_breach(BUDGET, breach(BreachKind.forecast, "run-2", "x2"),
                                     later) is None
        again = await fresh.on_breach(BUDGET, breach(BreachKind.anomaly, "run-1", "x3",
                                                     at=later), later)
        assert again is not None and again.breach_id == "x3"
        await two.refresh(later)
        assert [(x.key, x.breach_id) for x in two.active(later)] == [("run-1", "x3")]
        # the safety expiry: an anomaly action whose clear never came ends by itself
        assert two.active(later + timedelta(hours=2)) == []

    asyncio.run(scenario())
