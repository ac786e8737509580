"""The SDK's outcome(): validated at the call site, sent to the outcomes topic of its prefix
(sending itself runs against the real broker in tests/runtime/test_outcomes_worker.py)."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.errors import ValidationFailed
from pipeline.sdk import AsyncUsageProducer
from tests.helpers import NOW


@pytest.mark.parametrize(("topic", "outcomes"), [
    ("usage-events", "usage-outcomes"),
    ("t1234-usage-events", "t1234-usage-outcomes"),
    ("my-own-topic", "usage-outcomes"),
])
def test_the_outcomes_topic_follows_the_events_topic(topic: str, outcomes: str) -> None:
    p = AsyncUsageProducer("127.0.0.1:1", topic=topic, clock=lambda: NOW)
    assert p.outcomes_topic == outcomes
    assert AsyncUsageProducer("127.0.0.1:1", outcomes_topic="x").outcomes_topic == "x"


@pytest.mark.parametrize(("signals", "reason"), [
    ({}, "no_signal"),
    ({"score": 1.2}, "out_of_range"),
    ({"feedback": "meh"}, "schema"),
])
def test_a_bad_outcome_raises_before_sending(signals: dict, reason: str) -> None:
    p = AsyncUsageProducer("127.0.0.1:1", clock=lambda: NOW)  # never started: nothing sent
    with pytest.raises(ValidationFailed) as exc:
        asyncio.run(p.outcome(event_id="e1", tenant_id="acme", **signals))
    assert exc.value.reason_code == reason
