"""Late data and far-ahead timestamps against the real chDB ledger: live windows equal the
ledger for every window still open, before and after a rebuild."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.core.simulate import Simulator
from pipeline.core.spend import window_start
from pipeline.store.client import Store
from pipeline.store.sink import Sink
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from tests.helpers import NOW

pytestmark = [pytest.mark.integration, pytest.mark.clock]
METER = Meter(load_catalog(), load_policy())
GRACE = timedelta(hours=1)
TENANT = "tenant-00001"


def processor(store: Store) -> tuple[Processor, LiveState]:
    async def dlq(key: str | None, value: bytes) -> None:
        return None

    live = LiveState(grace=GRACE, horizon=timedelta(days=7), max_ids=100_000)
    live.get(0)
    return Processor(METER, Sink(store), store, live, dlq, grace=GRACE, clock=lambda: NOW), live


def run(proc: Processor, events: list[dict]) -> None:
    offsets = Counter[int]()

    async def go() -> None:
        for i in range(0, len(events), 200):
            msgs = []
            for e in events[i:i + 200]:
                msgs.append(RawMessage(json.dumps(e).encode(), "usage-events", 0, offsets[0]))
                offsets[0] += 1
            await proc.process(msgs)

    asyncio.run(go())


def day_truth(events: list[dict]) -> tuple[Decimal, int]:
    day = window_start("day", NOW)
    priced = [METER.meter_object(e, now=NOW) for e in events]
    mine = [p for p in priced if window_start("day", p.timestamp) == day]
    return sum((p.total_cost for p in mine), Decimal(0)), len(mine)


def traffic(n: int, seed: int) -> list[dict]:
    """One tenant's events spread over the two hours before NOW (clipped to today), sent in
    time order, then a log shipper's backlog of the same span arriving last."""
    rng = random.Random(seed)
    sim = Simulator(tenants=1, seed=seed, text_share=0.0)
    start = max(NOW - timedelta(hours=2), window_start("day", NOW))
    span = int((NOW - start).total_seconds())
    stamps = sorted(start + timedelta(seconds=rng.randint(0, span)) for _ in range(n))
    events = [sim.event(ts) for ts in stamps]
    for e in events:
        e["tenant_id"] = TENANT
    backlog = events[: n // 2]
    return events[n // 2:] + backlog  # the older half arrives after the newer one


def test_events_late_for_their_hour_still_count_in_the_open_day(store: Store) -> None:
    proc, live = processor(store)
    events = traffic(2000, seed=3)
    run(proc, events)
    cost, n = day_truth(events)
    day = live.window(TENANT, "day", NOW)
    assert day is not None and (day.cost, day.events) == (cost, n)
    db = store.database
    stored = store.rows(f"SELECT sum(total_cost), count() FROM {db}.usage_events FINAL "
                        "WHERE toDate(timestamp) = toDate(%(d)s)", parameters={"d": NOW})[0]
    assert (stored[0], stored[1]) == (cost, n)
    rebuilt = LiveState(grace=GRACE, horizon=timedelta(days=7), max_ids=100_000)
    rebuilt.rebuild(store, {0}, NOW)
    again = rebuilt.window(TENANT, "day", NOW)
    assert again is not None and (again.cost, again.events) == (cost, n)


def test_one_event_far_ahead_does_not_make_the_rest_late(store: Store) -> None:
    proc, live = processor(store)
    sim = Simulator(tenants=1, seed=9, text_share=0.0)
    ahead = sim.event(NOW + timedelta(hours=23))
    ahead["tenant_id"] = TENANT
    on_time = [sim.event(NOW - timedelta(seconds=i)) for i in range(300)]
    for e in on_time:
        e["tenant_id"] = TENANT
    run(proc, [ahead])
    run(proc, on_time)
    assert proc.metrics.late == 0
    hour = live.window(TENANT, "hour", NOW)
    expected = sum((METER.meter_object(e, now=NOW).total_cost for e in on_time
                    if window_start("hour", METER.meter_object(e, now=NOW).timestamp)
                    == window_start("hour", NOW)), Decimal(0))
    assert hour is not None and hour.cost == expected
    # after a restart the far-ahead row in the ledger does not move lateness either
    rebuilt = LiveState(grace=GRACE, horizon=timedelta(days=7), max_ids=100_000)
    rebuilt.rebuild(store, {0}, NOW)
    assert rebuilt.get(0).watermark is not None and rebuilt.get(0).watermark <= NOW
