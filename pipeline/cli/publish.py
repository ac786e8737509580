"""Publishing events to Kafka from the CLI (produce, simulate)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from pipeline.settings import TOPIC_EVENTS, Settings
from pipeline.stream.topics import start_producer


async def _producer(settings: Settings) -> Any:
    return await start_producer(settings, "publish usage events")


def envelopes(events: Sequence[dict[str, Any]], batch: int) -> list[tuple[bytes, bytes]]:
    """(key, value) messages: single events, or arrays of up to ``batch`` per tenant."""
    if batch <= 1:
        return [(e["tenant_id"].encode(), json.dumps(e).encode()) for e in events]
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_tenant.setdefault(str(e["tenant_id"]), []).append(e)
    out = []
    for tenant, items in by_tenant.items():
        for i in range(0, len(items), batch):
            out.append((tenant.encode(), json.dumps(items[i:i + batch]).encode()))
    return out


async def publish_events(settings: Settings, events: Sequence[dict[str, Any]], *,
                         batch: int = 100) -> int:
    """Publish events (keyed by tenant) and wait until the broker has them all."""
    producer = await _producer(settings)
    topic = settings.topic(TOPIC_EVENTS)
    try:
        futures = [await producer.send(topic, v, key=k) for k, v in envelopes(events, batch)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(events)


async def simulate(settings: Settings, *, tenants: int, rate: float, duration: float,
                   seed: int, batch: int = 1) -> int:
    """Send synthetic events at ``rate``/s for ``duration`` s, showing progress."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.clock import clock_for
    from pipeline.core.simulate import Simulator

    clock = clock_for(settings.clock_start)
    sim = Simulator(tenants=tenants, seed=seed)
    producer = await _producer(settings)
    topic = settings.topic(TOPIC_EVENTS)
    total = int(rate * duration)
    sent = 0
    tick = 0.05
    started = time.monotonic()
    try:
        with Progress(TextColumn("simulate"), BarColumn(), TextColumn("{task.completed}/"
                      "{task.total} events"), TimeRemainingColumn(), transient=False) as bar:
            task = bar.add_task("send", total=total)
            while sent < total:
                due = min(total, int((time.monotonic() - started) * rate) + 1)
                if due > sent:
                    now = clock()
                    events = [sim.event(now) for _ in range(due - sent)]
                    for k, v in envelopes(events, batch):
                        await producer.send(topic, v, key=k)
                    sent = due
                    bar.update(task, completed=sent)
                await asyncio.sleep(tick)
            await producer.flush()
    finally:
        await producer.stop()
    return sent
