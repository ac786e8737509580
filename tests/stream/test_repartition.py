"""Exact totals whatever keys producers use: events move to their tenant's partition
before dedup (real chDB ledger, the Processor's forward loop played as the topic would)."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from pipeline.core.budgets import Budget, period_bounds
from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.core.simulate import Simulator
from pipeline.store.client import Store
from pipeline.store.sink import Sink
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from pipeline.stream.topics import partition_for
from tests.helpers import NOW

pytestmark = [pytest.mark.integration, pytest.mark.clock]
METER = Meter(load_catalog(), load_policy())
PARTITIONS = 4
HOUR = NOW.replace(minute=0, second=0)


class Topic:
    """The events topic as the processor sees it: per-partition offsets, and re-sends."""

    def __init__(self) -> None:
        self.offsets: Counter[int] = Counter()
        self.resent: list[RawMessage] = []

    def message(self, partition: int, value: bytes) -> RawMessage:
        msg = RawMessage(value, "usage-events", partition, self.offsets[partition])
        self.offsets[partition] += 1
        return msg

    async def forward(self, partition: int, key: str, value: bytes) -> None:
        assert partition == partition_for(key, PARTITIONS)
        self.resent.append(self.message(partition, value))


def workload(seed: int) -> tuple[list[dict], list[RawMessage], Topic]:
    """Events on random partitions (random keys, no keys), envelopes mixing tenants, and 10%
    exact duplicates re-sent on other partitions."""
    rng = random.Random(seed)
    sim = Simulator(tenants=7, seed=seed, text_share=0.0)
    events = [sim.event(HOUR + timedelta(seconds=rng.randint(-3000, 0))) for _ in range(600)]
    sent = events + [dict(e) for e in rng.sample(events, 60)]
    rng.shuffle(sent)
    topic = Topic()
    msgs: list[RawMessage] = []
    i = 0
    while i < len(sent):
        n = rng.choice([1, 1, 1, 5, 20])
        group = sent[i:i + n]
        value = json.dumps(group[0] if n == 1 else group).encode()
        msgs.append(topic.message(rng.randrange(PARTITIONS), value))
        i += n
    return events, msgs, topic


def test_duplicates_across_partitions_are_stored_once(store: Store) -> None:
    events, msgs, topic = workload(seed=5)
    live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=100_000)

    async def dlq(key: str | None, value: bytes) -> None:
        return None

    proc = Processor(METER, Sink(store), store, live, dlq, clock=lambda: NOW,
                     partition_of=lambda t: partition_for(t, PARTITIONS),
                     forward=topic.forward)
    for p in range(PARTITIONS):
        live.get(p)
    tenants = sorted({e["tenant_id"] for e in events})
    budgets = [Budget.model_validate({"budget_id": f"b-{t}", "tenant_id": t,
                                      "limit": "1000000", "period": "day"}) for t in tenants]

    async def run() -> None:
        for b in budgets:
            await proc.budget_changed(b.budget_id, b)
        for i in range(0, len(msgs), 40):
            await proc.process(msgs[i:i + 40])
        rounds = 0
        while topic.resent:  # the re-sent envelopes, consumed on their own partitions
            batch, topic.resent = topic.resent, []
            await proc.process(batch)
            rounds += 1
        assert rounds <= 1  # a moved event is never moved again

    asyncio.run(run())
    truth: dict[str, list] = defaultdict(lambda: [Decimal(0), 0])
    for e in events:
        p = METER.meter_object(e, now=NOW)
        truth[p.tenant_id][0] += p.total_cost
        truth[p.tenant_id][1] += 1
    db = store.database
    # no FINAL: every event_id is stored exactly once
    rows = store.rows(f"SELECT tenant_id, sum(total_cost), count(), uniqExact(event_id), "
                      f"uniqExact(source_partition) FROM {db}.usage_events GROUP BY tenant_id")
    assert {t: (c, n) for t, c, n, _, _ in rows} == {t: tuple(v) for t, v in truth.items()}
    assert all(n == u and parts == 1 for _, _, n, u, parts in rows)
    for t, _, _, _, _ in rows:
        part = store.rows(f"SELECT any(source_partition) FROM {db}.usage_events "
                          "WHERE tenant_id = %(t)s", parameters={"t": t})[0][0]
        assert part == partition_for(t, PARTITIONS)
    hourly = store.rows(f"SELECT tenant_id, sum(total_cost), sum(events) FROM {db}.spend_hourly "
                        "GROUP BY tenant_id")
    assert {t: (c, n) for t, c, n in hourly} == {t: tuple(v) for t, v in truth.items()}
    # the traffic may straddle midnight (the pinned clock can sit at 00:05): per day
    by_day: dict[tuple[str, object], list] = defaultdict(lambda: [Decimal(0), 0])
    for e in events:
        p = METER.meter_object(e, now=NOW)
        day_key = by_day[(p.tenant_id, p.timestamp.date())]
        day_key[0] += p.total_cost
        day_key[1] += 1
    start, _ = period_bounds(budgets[0].period, budgets[0].tz, NOW)
    for (t, day_date), (cost, n) in by_day.items():
        at = datetime.combine(day_date, datetime.min.time(), tzinfo=timezone.utc)
        day = live.window(t, "day", at)
        assert day is not None and (day.cost, day.events) == (cost, n)
        if day_date == NOW.date():
            ps = proc.tracker.get(f"b-{t}", start)
            assert ps is not None and ps.spent[""] == cost
    assert proc.metrics.moved > 0 and proc.metrics.duplicates >= 60




def test_a_moved_event_is_never_moved_again(store: Store) -> None:
    """Workers that disagree on the partition count would bounce an event between them
    forever; one that arrives moved is metered where it lands."""
    topic = Topic()
    live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=1000)

    async def dlq(key: str | None, value: bytes) -> None:
        return None

    # this worker thinks there are 8 partitions; the event was moved by one that thinks 4
    proc = Processor(METER, Sink(store), store, live, dlq, clock=lambda: NOW,
                     partition_of=lambda t: partition_for(t, 8), forward=topic.forward)
    sim = Simulator(tenants=3, seed=2, text_share=0.0)
    e = sim.event(NOW)
    here = (partition_for(e["tenant_id"], 8) + 1) % 8  # not where this worker would put it
    msg = RawMessage(json.dumps(e).encode(), "usage-events", here, 0, moved=True)
    asyncio.run(proc.process([msg]))
    assert topic.resent == [] and proc.metrics.misplaced == 1
    assert store.rows(f"SELECT count() FROM {store.database}.usage_events")[0][0] == 1


@pytest.mark.parametrize(("headers", "moved"), [
    (None, False), ([], False), ([("tokenmeter-moved", b"1")], True),
    ({"tokenmeter-moved": b"1"}, True), ([("other", b"1")], False),
])
def test_moved_header(headers, moved) -> None:
    from pipeline.stream.processor import was_moved

    assert was_moved(headers) is moved


def test_a_changed_partition_count_still_stores_each_event_once(store: Store) -> None:
    """Dedup memory is rebuilt per partition: after TOKENMETER_PARTITIONS goes from 4 to 8 a
    tenant's new partition holds none of the ids stored under its old one."""
    tenant = next(f"t{i}" for i in range(100)
                  if partition_for(f"t{i}", 4) != partition_for(f"t{i}", 8))
    old, new = partition_for(tenant, 4), partition_for(tenant, 8)

    def ev(event_id: str) -> dict:
        return {"event_id": event_id, "timestamp": (NOW - timedelta(minutes=5)).isoformat(),
                "tenant_id": tenant, "provider": "openai", "model": "gpt-4o-mini",
                "input_tokens": 10, "output_tokens": 1}

    async def dlq(key: str | None, value: bytes) -> None:
        return None

    async def no_move(partition: int, key: str, value: bytes) -> None:
        raise AssertionError("nothing here is misplaced")

    def worker(partitions: int) -> Processor:
        live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=1000)
        return Processor(METER, Sink(store), store, live, dlq, clock=lambda: NOW,
                         partition_of=lambda t: partition_for(t, partitions), forward=no_move)

    async def run() -> Processor:
        a = worker(4)
        await a.rebuild({old})
        await a.process([RawMessage(json.dumps(ev("dup-1")).encode(), "usage-events", old, 0)])
        b = worker(8)  # the operator raised the partition count and restarted
        await b.rebuild({new})
        await b.process([RawMessage(json.dumps([ev("dup-1"), ev("new-2")]).encode(),
                                    "usage-events", new, 0)])
        return b

    b = asyncio.run(run())
    rows = store.rows(f"SELECT event_id, count() FROM {store.database}.usage_events "
                      "GROUP BY event_id ORDER BY event_id")
    assert rows == [("dup-1", 1), ("new-2", 1)]
    day = b.live.window(tenant, "day", NOW)  # the old partition's spend counts once, here
    assert day is not None and day.events == 2


def test_partitioner_memoizes_the_same_answers_and_stays_bounded() -> None:
    from pipeline.stream.topics import Partitioner

    part = Partitioner(PARTITIONS, max_keys=50)
    keys = [f"tenant-{i}" for i in range(200)]
    for _ in range(2):  # second round from the cache (or recomputed after a clear)
        assert [part(k) for k in keys] == [partition_for(k, PARTITIONS) for k in keys]
    assert len(part._cache) <= 50
