"""The metering step the agent calls: raw messages in, durable effects out."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pipeline.meter import Meter, Source
from pipeline.store.sink import Sink, dlq_row, usage_row

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A consumed message: value bytes and where it came from."""

    value: bytes | None
    topic: str
    partition: int
    offset: int


Publish = Callable[[str | None, bytes], Awaitable[Any]]


class Metrics:
    """Counters the worker exposes on /metrics (owned by one Processor)."""

    def __init__(self) -> None:
        self.messages = 0
        self.events = 0
        self.dead = Counter[str]()
        self.batches = 0


class Processor:
    """Meters a batch, writes it to ClickHouse, publishes dead letters; then it may be acked."""

    def __init__(self, meter: Meter, sink: Sink, publish_dlq: Publish,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.meter = meter
        self.sink = sink
        self.publish_dlq = publish_dlq
        self.clock = clock
        self.metrics = Metrics()

    async def process(self, batch: Sequence[RawMessage]) -> None:
        """Handle one batch end to end; returns once its effects are durable."""
        now = self.clock()
        usage: list[list[Any]] = []
        dlq: list[list[Any]] = []
        dead_out = []
        for msg in batch:
            source = Source(msg.topic, msg.partition, msg.offset)
            metered = self.meter.meter_message(msg.value or b"", now=now, source=source)
            for p in metered.priced:
                usage.append(usage_row(p, late=False, partition=msg.partition,
                                       offset=msg.offset, ingested_at=now))
            for i, d in enumerate(metered.dead):
                dlq.append(dlq_row(d, i))
                dead_out.append(d)
                self.metrics.dead[d.reason_code] += 1
            self.metrics.events += len(metered.priced)
        await self.sink.write(usage, dlq)
        for d in dead_out:
            await self.publish_dlq(d.tenant_id, d.model_dump_json().encode())
        self.metrics.messages += len(batch)
        self.metrics.batches += 1

