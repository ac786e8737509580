"""The outcomes consumer on real chDB: rows stored once however often they are delivered, bad
outcomes in dlq_events and on the dead-letter topic (the publish port's double records them)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from pipeline.store.client import Store
from pipeline.store.sink import Sink
from pipeline.stream.outcomes import OutcomeWriter
from pipeline.stream.staging import RawMessage
from pipeline.testing import ListPublisher
from tests.helpers import NOW

pytestmark = [pytest.mark.integration]
TOPIC = "usage-outcomes"


def message(offset: int, *items: dict) -> RawMessage:
    value = items[0] if len(items) == 1 else list(items)
    return RawMessage(json.dumps(value).encode(), TOPIC, 2, offset)


def outcome(event_id: str, **kw: object) -> dict:
    return {"event_id": event_id, "tenant_id": "acme",
            "timestamp": (NOW - timedelta(minutes=5)).isoformat(), **kw}


def test_redelivered_outcomes_are_stored_once(store: Store) -> None:
    writer = OutcomeWriter(Sink(store), ListPublisher(), lambda: NOW)
    batch = [message(0, outcome("e1", success=True), outcome("e2", score=0.25)),
             message(1, outcome("e1", feedback="positive", source="user"))]
    asyncio.run(writer.handle(batch))
    asyncio.run(writer.handle(batch))  # the whole batch again (a crash before the ack)
    asyncio.run(writer.handle(batch[1:]))  # and one message alone, in another batch
    db = store.database
    # 7 rows were inserted (merges may already have collapsed some); FINAL reads each once
    rows = store.rows(f"SELECT event_id, source, success, score, feedback "
                      f"FROM {db}.usage_outcomes FINAL ORDER BY event_id, source")
    assert rows == [("e1", "producer", True, None, None), ("e1", "user", None, None, "positive"),
                    ("e2", "producer", None, 0.25, None)]


def test_a_later_judgement_replaces_the_earlier_one(store: Store) -> None:
    writer = OutcomeWriter(Sink(store), ListPublisher(), lambda: NOW)
    asyncio.run(writer.handle([message(0, outcome("e1", success=False))]))
    later = outcome("e1", success=True, timestamp=(NOW - timedelta(minutes=1)).isoformat())
    asyncio.run(writer.handle([message(1, later), message(0, outcome("e1", success=False))]))
    rows = store.rows(f"SELECT success FROM {store.database}.usage_outcomes FINAL")
    assert rows == [(True,)]


def test_bad_outcomes_go_to_the_dead_letters(store: Store) -> None:
    published = ListPublisher()
    writer = OutcomeWriter(Sink(store), published, lambda: NOW)
    asyncio.run(writer.handle([message(7, outcome("e1"), outcome("e2", score=2)),
                               RawMessage(b"not json", TOPIC, 2, 8),
                               RawMessage(None, TOPIC, 2, 9)]))
    assert (writer.stored, writer.dead) == (0, 4)
    rows = store.rows(f"SELECT source_topic, source_offset, item_index, reason_code, event_id, "
                      f"tenant_id FROM {store.database}.dlq_events FINAL "
                      "ORDER BY source_offset, item_index")
    assert rows == [(TOPIC, 7, 0, "no_signal", "e1", "acme"),
                    (TOPIC, 7, 1, "out_of_range", "e2", "acme"),
                    (TOPIC, 8, 0, "invalid_json", "", ""), (TOPIC, 9, 0, "invalid_json", "", "")]
    sent = [(key, json.loads(value)["reason_code"]) for key, value in published.sent]
    assert sent == [("acme", "no_signal"), ("acme", "out_of_range"), (None, "invalid_json"),
                    (None, "invalid_json")]
