"""Profile the metering step in-process on the real chDB ledger (no Kafka).

Usage: .venv/bin/python -m pipeline.benchmark.profile_processor [N_EVENTS] [ENVELOPE_SIZE]
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from datetime import timedelta

from pipeline.benchmark.throughput import envelope_messages, make_events, single_messages
from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.settings import load_settings
from pipeline.store.client import open_store
from pipeline.store.migrations import migrate
from pipeline.store.sink import Sink
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage


async def _noop(key: str | None, value: bytes) -> None:
    return None


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    events = make_events(n)
    msgs = envelope_messages(events, size) if size > 1 else single_messages(events)
    raw = [RawMessage(v, "usage-events", hash(k) % 4, i) for i, (k, v) in enumerate(msgs)]
    with tempfile.TemporaryDirectory() as d:
        store = open_store(load_settings(data_dir=d))
        migrate(store)
        live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=2_000_000)
        proc = Processor(Meter(load_catalog(), load_policy()), Sink(store), store, live, _noop)
        per = 2000 if size == 1 else max(1, 2000 // size)

        async def go() -> None:
            for i in range(0, len(raw), per):
                await proc.process(raw[i:i + per])

        profile = "--profile" in sys.argv
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        if profile:
            prof.enable()
        asyncio.run(go())
        prof.disable()
        took = time.perf_counter() - t0
        print(f"{n} events in {took:.2f} s: {n / took:.0f} events/s ({took / n * 1e6:.1f} us/event)"
              f"; sink {proc.sink.seconds:.2f} s")
        if profile:
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
