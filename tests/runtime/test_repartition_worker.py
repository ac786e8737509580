"""A real worker and broker move misplaced events to their tenant's partition before dedup."""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import timedelta
from decimal import Decimal

import pytest

from pipeline.core.simulate import Simulator
from pipeline.stream.topics import partition_for
from tests.helpers import METER, produce, query, start_worker, wait_events, wait_ready
from tests.helpers import now as clock_now

pytestmark = pytest.mark.integration


def test_worker_moves_misplaced_events_before_dedup(settings) -> None:
    """A real worker and broker: no keys, random keys and padded keys, 10% duplicates on
    other partitions; the ledger holds each event once, on its tenant's partition."""
    rng = random.Random(11)
    sim = Simulator(tenants=5, seed=11, text_share=0.0)
    at = clock_now()
    events = [sim.event(at - timedelta(seconds=rng.randint(0, 600))) for _ in range(300)]
    sent = events + rng.sample(events, 30)
    rng.shuffle(sent)
    keys = [None, b"", b"random-key", b" tenant-00001 "]
    msgs = [(rng.choice(keys) if i % 3 else f"k{rng.random()}".encode(), json.dumps(e).encode())
            for i, e in enumerate(sent)]
    proc = start_worker(settings)
    try:
        wait_ready(settings, proc)
        asyncio.run(produce(settings, msgs))
        assert wait_events(settings, len(events)) == len(events)
        time.sleep(1.0)  # a second copy, were it stored, would have arrived by now
        rows = query(settings, "SELECT count(), uniqExact(event_id), toString(sum(total_cost)) "
                               "FROM tokenmeter.usage_events")
        expected = sum((METER.meter_object(e, now=at).total_cost for e in events), Decimal(0))
        assert rows[0][0] == rows[0][1] == len(events)
        assert Decimal(rows[0][2]) == expected
        placed = query(settings, "SELECT tenant_id, groupUniqArray(source_partition) "
                                 "FROM tokenmeter.usage_events GROUP BY tenant_id")
        assert all(parts == [partition_for(t, settings.partitions)] for t, parts in placed)
        hourly = query(settings, "SELECT toString(sum(total_cost)) FROM tokenmeter.spend_hourly")
        assert Decimal(hourly[0][0]) == expected
    finally:
        proc.terminate()
        proc.wait(timeout=30)
