"""The in-memory ledger of pipeline/testing.py answers every read as the ClickHouse ledger does.

The same traffic (on-time, late, duplicated, four partitions), budgets and breaches go
through a Processor on the real chDB and through one on InMemoryLedger; every LedgerReads
method must then give the same answer from both, so the fast unit tests prove what the real
ledger would.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from pipeline.core.budgets import Budget, period_bounds
from pipeline.store.client import Store
from pipeline.store.ledger import ClickHouseLedger
from pipeline.store.sink import Sink, usage_row
from pipeline.stream.budget_feed import BUDGET_COLUMNS, budget_row
from pipeline.stream.live import LiveState
from pipeline.stream.ports import LedgerReads, LedgerWrites
from pipeline.stream.processor import Processor
from pipeline.testing import InMemoryLedger, ListPublisher
from tests.helpers import METER, NOW, messages, traffic

pytestmark = [pytest.mark.integration, pytest.mark.clock]


def norm(v: Any) -> Any:
    """chDB hands back naive UTC datetimes and scaled Decimals: compare values, not types."""
    if isinstance(v, datetime):
        return v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v.astimezone(timezone.utc)
    if isinstance(v, Decimal):
        return v.normalize()
    if isinstance(v, (tuple, list)):
        return tuple(norm(x) for x in v)
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, set):
        return {norm(x) for x in v}
    return v


def budgets(tenant: str, model: str) -> list[Budget]:
    def b(budget_id: str, **kw: Any) -> Budget:
        return Budget.model_validate({"budget_id": budget_id, "tenant_id": tenant,
                                      "period": "day", **kw})

    return [b("cost", limit="0.001"), b("tokens", limit="1000", metric="tokens"),
            b("units", limit="1", metric="value_units"), b("model", limit="0.001", model=model),
            b("feature", limit="1", feature="chat", project_id=f"{tenant}-p1")]


def feed(sink: LedgerWrites, reads: Store | LedgerReads, events: list[dict[str, Any]],
         scoped: list[Budget]) -> None:
    live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=100_000)
    for p in range(4):
        live.get(p)
    proc = Processor(METER, sink, reads, live, ListPublisher(), clock=lambda: NOW,
                     publish_breach=ListPublisher(),
                     partition_of=lambda t: int(t.rsplit("-", 1)[-1]) % 4)

    async def run() -> None:
        for b in scoped:
            await proc.budget_changed(b.budget_id, b)
        msgs = messages(events)
        for i in range(0, len(msgs), 50):
            await proc.process(msgs[i:i + 50])
        rows = [budget_row(b.budget_id, b, NOW) for b in scoped]
        rows.append(budget_row("cost", None, NOW + timedelta(seconds=1)))  # deleted later
        await sink.write_rows("budgets", rows, BUDGET_COLUMNS)
        # a row flagged late ahead of every on-time one (a far-ahead clock, another worker):
        # watermarks count on-time rows only
        ahead = METER.meter_object({**events[0], "event_id": "late-ahead",
                                    "timestamp": (NOW + timedelta(hours=2)).isoformat()},
                                   now=NOW)
        await sink.write([usage_row(ahead, late=True, partition=3, offset=10**6,
                                    ingested_at=NOW)], [])

    asyncio.run(run())


def test_every_read_of_the_in_memory_ledger_matches_clickhouse(store: Store) -> None:
    recent, old = traffic(seed=5, n=400)
    events = recent + old + recent[:40]  # replays are deduplicated on both
    tenant, model = recent[0]["tenant_id"], recent[0]["model"]
    scoped = budgets(tenant, model)
    memory = InMemoryLedger()
    feed(Sink(store), store, events, scoped)
    feed(memory, memory, events, scoped)
    real = ClickHouseLedger(store)

    pairs = [(e["tenant_id"], e["event_id"]) for e in events] + [(tenant, "never-seen")]
    assert real.existing_ids(pairs) == memory.existing_ids(pairs)
    assert len(real.existing_ids(pairs)) == len({e["event_id"] for e in events})
    parts = {0, 1, 2, 3}
    assert norm(real.watermarks(parts)) == norm(memory.watermarks(parts))
    since = NOW - timedelta(days=7)
    for p in sorted(parts):
        assert sorted(norm(real.recent_ids(p, since, 100_000))) == \
            sorted(norm(memory.recent_ids(p, since, 100_000)))
        assert len(memory.recent_ids(p, since, 5)) == 5
    # from the middle of the old (late) events on: the bound itself is included
    cut = sorted(datetime.fromisoformat(e["timestamp"]) for e in old)[len(old) // 2]
    for partition in (*sorted(parts), None):
        for kind in ("hour", "day"):
            got = sorted(norm(memory.window_sums(partition, kind, cut)))
            assert sorted(norm(real.window_sums(partition, kind, cut))) == got and got
    assert sorted(real.tenant_partitions(since)) == sorted(memory.tenant_partitions(since))
    for b in scoped:
        start, end = period_bounds(b.period, b.tz, NOW)
        spent = norm(memory.period_spend(b, start, end))
        assert norm(real.period_spend(b, start, end)) == spent and spent, b.budget_id
        fired = memory.fired_breaches(b.budget_id, start)
        assert real.fired_breaches(b.budget_id, start) == fired
    assert memory.fired_breaches("cost", period_bounds(scoped[0].period, scoped[0].tz,
                                                       NOW)[0])  # the cheap ones fired
    assert sorted(real.stored_budgets()) == sorted(memory.stored_budgets())
    assert ("cost", "", True) in memory.stored_budgets()
    assert json.loads(dict((b, s) for b, s, _ in memory.stored_budgets())["units"])[
        "metric"] == "value_units"
