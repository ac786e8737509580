"""Fault: ClickHouse unavailable for 30 s. A fault-injecting client is the only way to take
an in-process chDB "down"; everything else (engine, tables, processor) is real."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.core.simulate import Simulator
from pipeline.store.client import Store
from pipeline.store.sink import Sink
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from tests.helpers import now as clock_now

pytestmark = pytest.mark.integration
OUTAGE_S = 30.0


class FlakyStore:
    """The real store, except that inserts fail while ``down`` is set."""

    def __init__(self, real: Store) -> None:
        self.real = real
        self.down_until = 0.0
        self.refused = 0

    def insert(self, *args: Any, **kwargs: Any) -> None:
        if time.monotonic() < self.down_until:
            self.refused += 1
            raise ConnectionError("Connection refused (fault injected)")
        self.real.insert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_outage_backs_off_pauses_and_loses_nothing(store: Store) -> None:
    flaky = FlakyStore(store)
    meter = Meter(load_catalog(), load_policy())
    now = clock_now()

    async def dlq(key: str | None, value: bytes) -> None:
        return None

    live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=100_000)
    # one batch may wait while one is written: consumption pauses after that
    proc = Processor(meter, Sink(flaky, max_backoff_s=2.0), flaky, live, dlq,  # type: ignore[arg-type]
                     max_pending_rows=100)
    sim = Simulator(tenants=5, seed=3, text_share=0.0)
    events = [sim.event(now - timedelta(seconds=i)) for i in range(3000)]
    batches = [[RawMessage(json.dumps(e).encode(), "usage-events", 0, i * 100 + j)
                for j, e in enumerate(events[i * 100:(i + 1) * 100])] for i in range(30)]
    acked: list[int] = []
    staged_not_durable = []

    async def run() -> None:
        flaky.down_until = time.monotonic() + OUTAGE_S
        for i, batch in enumerate(batches):
            async def ack(i: int = i) -> None:
                # offsets are acked only once the rows are in ClickHouse
                ids = [json.loads(m.value)["event_id"] for m in batches[i]]
                n = store.rows(f"SELECT count() FROM {store.database}.usage_events "
                               "WHERE event_id IN %(ids)s", parameters={"ids": ids})[0][0]
                assert n == len(ids)
                acked.append(i)

            await proc.submit(batch, ack)
            staged_not_durable.append(i + 1 - len(acked))
        await proc.drain()

    started = time.monotonic()
    asyncio.run(run())
    took = time.monotonic() - started
    assert took >= OUTAGE_S  # it really waited the outage out
    assert flaky.refused >= 5  # and retried with backoff meanwhile (not a hot loop)
    assert flaky.refused < 200
    assert max(staged_not_durable) <= 2  # consumption paused: one staged, one in flight
    assert acked == list(range(30))
    truth = sum((meter.meter_object(e, now=now).total_cost for e in events), Decimal(0))
    got = store.rows(f"SELECT count(), sum(total_cost) FROM {store.database}.usage_events FINAL")
    assert got == [(3000, truth)]
    assert proc.sink.healthy
