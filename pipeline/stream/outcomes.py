"""The worker's consumer of the usage-outcomes topic: outcomes to ClickHouse, bad ones to the DLQ.

Outcomes are their own small agent in the worker group (each message handled by one worker),
off the metering path: nothing here touches usage events, live state or budgets, and a
failure is logged without stopping anything. A batch is acked only once its rows are in
ClickHouse; a re-delivered outcome lands on the same (tenant, event, source) key of the
ReplacingMergeTree ``usage_outcomes`` and counts once under FINAL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from pipeline.core.outcomes import OUTCOME_COLUMNS, Origin, outcome_row, sort_messages
from pipeline.store.sink import DLQ_COLUMNS, dlq_row
from pipeline.stream.ports import Publish
from pipeline.stream.staging import RawMessage

log = logging.getLogger(__name__)
TAKE_MAX, TAKE_WITHIN_S = 1000, 0.5


class RowWriter(Protocol):
    """The part of the Sink this consumer uses (durable on return, transient errors retried)."""

    async def write_rows(self, table: str, rows: Sequence[Sequence[Any]],
                         columns: Sequence[str]) -> None: ...


class OutcomeWriter:
    """Validates a batch of outcome messages, stores the good ones, dead-letters the rest."""

    def __init__(self, sink: RowWriter, publish_dlq: Publish,
                 clock: Callable[[], datetime]) -> None:
        self.sink = sink
        self.publish_dlq = publish_dlq
        self.clock = clock
        self.stored = 0
        self.dead = 0

    async def handle(self, messages: Sequence[RawMessage]) -> None:
        """Make a batch durable: outcome rows, then dead-letter rows, then DLQ messages."""
        now = self.clock()
        sorted_ = sort_messages([(m.value or b"", Origin(m.topic, m.partition, m.offset))
                                 for m in messages], now)
        if sorted_.outcomes:
            await self.sink.write_rows("usage_outcomes",
                                       [outcome_row(o, now) for o in sorted_.outcomes],
                                       OUTCOME_COLUMNS)
        if sorted_.dead:
            await self.sink.write_rows("dlq_events", [dlq_row(d, i) for d, i in sorted_.dead],
                                       DLQ_COLUMNS)
            for d, _ in sorted_.dead:
                await self.publish_dlq(d.tenant_id, d.model_dump_json().encode())
        self.stored += len(sorted_.outcomes)
        self.dead += len(sorted_.dead)


def wire_outcomes(app: Any, topic: Any, writer: OutcomeWriter) -> None:
    """Attach the ``outcomes`` agent to a worker's Faust app."""

    @app.agent(topic, name="outcomes")  # type: ignore[untyped-decorator]
    async def outcomes(stream: Any) -> None:
        async for events in stream.noack_take(TAKE_MAX, within=TAKE_WITHIN_S):
            batch = [RawMessage(e.message.value, e.message.topic, e.message.partition,
                                e.message.offset) for e in events]
            try:
                await writer.handle(batch)
            except Exception as exc:
                # left unacked: the group's committed offset stays before them, so a restart
                # stores them again (idempotent); metering goes on either way
                log.error("could not store %d outcome messages (%s: %s); restart the worker "
                          "once ClickHouse takes them", len(batch), type(exc).__name__,
                          str(exc).splitlines()[0][:200] if str(exc) else "")
                continue
            for e in events:
                await stream.ack(e)
