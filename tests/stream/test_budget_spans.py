"""One batch whose events straddle period boundaries counts each event in its own period.

The evaluator reuses the last period it found for a budget within a batch; events that
alternate across local midnight (and a DST change) must still land in the right periods.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from pipeline.core.budgets import Budget, period_bounds
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from pipeline.testing import InMemoryLedger, ListPublisher
from tests.helpers import METER

# local midnight in New York on the day US DST ends (2026-11-01 04:00Z is 00:00 EDT)
MIDNIGHT = datetime(2026, 11, 1, 4, 0, tzinfo=timezone.utc)
NOW = MIDNIGHT + timedelta(hours=1)


@pytest.mark.parametrize("period", ["hour", "day"])
def test_events_alternating_across_a_boundary_count_in_their_periods(period: str) -> None:
    budget = Budget.model_validate({"budget_id": "b", "tenant_id": "t-0", "period": period,
                                    "timezone": "America/New_York", "limit": "1000000",
                                    "metric": "tokens"})
    offsets = [-1, 1, -2, 2, -3, 3599, -3599, 0, -1]  # seconds from local midnight
    events = [{"event_id": f"e{i}", "tenant_id": "t-0", "provider": "openai",
               "model": "gpt-4o-mini", "timestamp": (MIDNIGHT + timedelta(seconds=s)).isoformat(),
               "input_tokens": 10 ** i, "output_tokens": 0} for i, s in enumerate(offsets)]
    expected: dict[datetime, Decimal] = {}
    for e, s in zip(events, offsets, strict=True):
        start, _ = period_bounds(budget.period, budget.tz, MIDNIGHT + timedelta(seconds=s))
        expected[start] = expected.get(start, Decimal(0)) + e["input_tokens"]
    assert len(expected) >= 2  # the batch really straddles a boundary

    live = LiveState(grace=timedelta(hours=2), horizon=timedelta(days=7), max_ids=1000)
    live.get(0)
    proc = Processor(METER, InMemoryLedger(), InMemoryLedger(), live, ListPublisher(),
                     clock=lambda: NOW, publish_breach=ListPublisher())

    async def run() -> None:
        await proc.budget_changed("b", budget)
        await proc.process([RawMessage(json.dumps(e).encode(), "usage-events", 0, i)
                            for i, e in enumerate(events)])

    asyncio.run(run())
    # the current period (loaded when the budget was set) has no events of this batch
    got = {start: ps.spent[""] for (bid, start), ps in proc.tracker.periods.items()
           if bid == "b" and ps.spent}
    assert got == expected
