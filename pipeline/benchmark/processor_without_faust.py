"""How much of the single-message gap to the Faust floor is Faust's stream? A measurement.

Runs, on the same pre-loaded single-event messages in one run: the Faust floor agent, the
real worker, and our whole metering step (Processor: validate, price, score, dedup,
windows, budgets, group-committed ClickHouse inserts) driven by a bare aiokafka consumer
loop instead of a Faust agent. Not a product path: it has no consumer group, rebalances or
offset commits; it only shows what the per-message stream costs.

Usage: .venv/bin/python -m pipeline.benchmark.processor_without_faust [N_EVENTS]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from pipeline.benchmark.throughput import (
    faust_baseline,
    free_port,
    make_events,
    preload,
    single_messages,
    worker_rate,
)
from pipeline.embedded.broker import EmbeddedBroker


async def bare_loop(bootstrap: str, topic: str, n: int, partitions: int, data: str) -> float:
    """events/s of the Processor fed by a bare consumer loop, first to n-th stored event."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from pipeline.core.catalog import load_catalog
    from pipeline.core.meter import Meter
    from pipeline.core.scoring import load_policy
    from pipeline.settings import load_settings
    from pipeline.store.client import open_store
    from pipeline.store.migrations import migrate
    from pipeline.store.sink import Sink
    from pipeline.stream.live import LiveState
    from pipeline.stream.processor import Processor, RawMessage

    store = open_store(load_settings(data_dir=data))
    migrate(store)

    async def nowhere(key: str | None, value: bytes) -> None:
        return None

    live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=500_000)
    proc = Processor(Meter(load_catalog(), load_policy()), Sink(store), store, live, nowhere)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        await proc.rebuild(set(range(partitions)))
        seen = 0
        t0 = 0.0

        async def durable() -> None:
            return None

        while seen < n:
            got = await consumer.getmany(timeout_ms=50, max_records=2000)
            batch = [RawMessage(m.value, m.topic, m.partition, m.offset)
                     for msgs in got.values() for m in msgs]
            if not batch:
                continue
            if not t0:
                t0 = time.perf_counter()
            seen += len(batch)
            await proc.submit(batch, durable)
        await proc.drain()
        return proc.metrics.events / (time.perf_counter() - t0)
    finally:
        await consumer.stop()
        store.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    broker = EmbeddedBroker("127.0.0.1", free_port(),
                            log_path=Path(tempfile.gettempdir()) / "tm-bare-broker.log")
    broker.start()
    try:
        asyncio.run(preload(broker.bootstrap, "nf-usage-events",
                            single_messages(make_events(n)), 4))
        floor = faust_baseline("floor", broker.bootstrap, "nf-usage-events", n, 4)
        worker = worker_rate(broker.bootstrap, "nf-", n, 4)
        with tempfile.TemporaryDirectory() as data:
            bare = asyncio.run(bare_loop(broker.bootstrap, "nf-usage-events", n, 4, data))
    finally:
        broker.stop()
    print(json.dumps({"faust_floor_events_per_s": round(floor, 1),
                      "worker_events_per_s": round(worker, 1),
                      "processor_bare_loop_events_per_s": round(bare, 1),
                      "worker_vs_floor": round(worker / floor, 3),
                      "bare_loop_vs_floor": round(bare / floor, 3)}))


if __name__ == "__main__":
    main()
