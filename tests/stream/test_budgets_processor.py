"""Budget evaluation in the metering step, against the real chDB ledger."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal

import pytest

from pipeline.core.budgets import Budget
from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.store.client import Store
from pipeline.store.sink import Sink
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from tests.helpers import NOW

# date-sensitive: `make test-clocks` runs it again at each instant of tests.helpers.CLOCKS
pytestmark = [pytest.mark.integration, pytest.mark.clock]
METER = Meter(load_catalog(), load_policy())


class Harness:
    def __init__(self, store: Store) -> None:
        self.breaches: list[dict] = []
        self.offset = 0

        async def dlq(key: str | None, value: bytes) -> None:
            return None

        async def breach(key: str | None, value: bytes) -> None:
            self.breaches.append(json.loads(value))

        live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=10_000)
        self.proc = Processor(METER, Sink(store), store, live, dlq, publish_breach=breach,
                              clock=lambda: NOW)
        live.get(0)  # this worker owns partition 0, where every tenant lands in these tests

    def send(self, *events: dict) -> None:
        msgs = []
        for e in events:
            msgs.append(RawMessage(json.dumps(e).encode(), "usage-events", 0, self.offset))
            self.offset += 1
        asyncio.run(self.proc.process(msgs))

    def budget(self, **kw) -> Budget:
        b = Budget.model_validate({"budget_id": "b1", "tenant_id": "acme", "limit": "10",
                                   "period": "day", "metric": "tokens", **kw})
        asyncio.run(self.proc.budget_changed(b.budget_id, b))
        return b

    def fired(self) -> list[tuple]:
        return [(b["budget_id"], b["pool"], Decimal(b["threshold_pct"]), b["action"])
                for b in self.breaches]


_n = 0


def ev(tokens: int, tenant: str = "acme", task: str = "summarization", **kw) -> dict:
    global _n
    _n += 1
    return {"event_id": f"ev-{_n}-{NOW.timestamp()}", "timestamp": NOW.isoformat(),
            "tenant_id": tenant, "provider": "openai", "model": "gpt-4o-mini",
            "input_tokens": tokens, "output_tokens": 0, "task_type": task, **kw}


def test_each_threshold_fires_once_and_control_tenant_stays_quiet(store: Store) -> None:
    h = Harness(store)
    h.budget(limit="1000")
    h.send(ev(400), ev(400, tenant="control"))
    assert h.fired() == []
    h.send(ev(100))  # 500 = 50%
    assert h.fired() == [("b1", "", Decimal(50), "alert")]
    h.send(ev(100), ev(100), ev(50))  # 750
    assert len(h.breaches) == 1
    h.send(ev(60))  # 810 = 81%
    h.send(ev(300), ev(1000))  # 2110
    assert [f[2] for f in h.fired()] == [50, 80, 100]
    first = h.breaches[1]
    assert first["spent"] == "810" and first["limit"] == "1000"
    assert first["triggering_event_id"].startswith("ev-")
    assert all(b["tenant_id"] == "acme" for b in h.breaches)
    # mirrored once each
    n = store.rows(f"SELECT count() FROM {store.database}.budget_breaches FINAL")[0][0]
    assert n == 3


def test_budget_created_mid_period_counts_period_to_date(store: Store) -> None:
    h = Harness(store)
    h.send(ev(900))  # before any budget exists
    assert h.breaches == []
    h.budget(limit="1000")  # 90% already spent
    assert [f[2] for f in h.fired()] == [50, 80]
    assert all(b["triggering_event_id"] is None for b in h.breaches)


def test_raise_rearms_and_lower_publishes(store: Store) -> None:
    h = Harness(store)
    h.budget(limit="1000")
    h.send(ev(600))
    assert [f[2] for f in h.fired()] == [50]
    h.budget(limit="2000")  # 30%: nothing now
    assert len(h.breaches) == 1
    h.send(ev(500))  # 1100 = 55% of the new limit: 50% fires again for the new limit
    assert [f[2] for f in h.fired()] == [50, 50]
    assert h.breaches[0]["breach_id"] != h.breaches[1]["breach_id"]
    h.budget(limit="1100")  # lowering: 100% now crossed
    assert [f[2] for f in h.fired()][2:] == [50, 80, 100]


def test_pools_throttle_low_value_work_while_critical_runs(store: Store) -> None:
    h = Harness(store)
    h.budget(limit="1000", mode="hard", pools={"critical": "0.5", "standard": "0.35", "low": "0.15"})
    h.send(*[ev(50, task="sales_email") for _ in range(3)])  # low pool: 150 = 100% of 150
    low = [b for b in h.breaches if b["pool"] == "low"]
    assert [Decimal(b["threshold_pct"]) for b in low] == [50, 80, 100]
    assert low[-1]["action"] == "throttle"
    assert not [b for b in h.breaches if b["pool"] != "low"]
    h.send(ev(200, task="regulatory_compliance"))  # critical pool: 200 of 500 = 40%
    assert not [b for b in h.breaches if b["pool"] == "critical"]
    h.send(ev(650, task="regulatory_compliance"))  # whole budget 1000 = 100% -> block
    whole = [b for b in h.breaches if b["pool"] == ""]
    assert [Decimal(b["threshold_pct"]) for b in whole] == [50, 80, 100]
    assert whole[-1]["action"] == "block" and whole[-1]["severity"] == "critical"


def test_scope_and_metric(store: Store) -> None:
    h = Harness(store)
    h.budget(limit="0.001", metric="cost", feature="search", thresholds=["100"])
    h.send(ev(10_000, feature="chat"))  # out of scope
    assert h.breaches == []
    h.send(ev(10_000, feature="search"))  # 10k * 0.15/M = 0.0015 > 0.001
    assert [f[2] for f in h.fired()] == [100]
    assert h.breaches[0]["metric"] == "cost" and h.breaches[0]["spent"] == "0.0015"


def test_restart_replay_never_fires_a_new_id(store: Store) -> None:
    h = Harness(store)
    h.budget(limit="1000")
    events = [ev(300) for _ in range(4)]
    h.send(*events[:2])
    h.send(*events[2:])
    ids = {b["breach_id"] for b in h.breaches}
    assert len(ids) == 3
    h2 = Harness(store)  # a new worker: state from the ledger
    h2.proc.book.put(h.proc.book.budgets["b1"])
    asyncio.run(h2.proc.rebuild({0}))
    h2.offset = 0
    h2.send(*events)  # replay from offset 0
    assert {b["breach_id"] for b in h2.breaches} <= ids
    assert h2.breaches == []  # fired set came back from the mirror: nothing repeats


def test_deleted_budget_stops_evaluating(store: Store) -> None:
    h = Harness(store)
    h.budget(limit="100")
    asyncio.run(h.proc.budget_changed("b1", None))
    h.send(ev(1000))
    assert h.breaches == []
