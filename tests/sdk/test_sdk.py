"""The Python SDK against the real embedded broker."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.errors import ValidationFailed
from pipeline.sdk import AsyncUsageProducer, UsageProducer
from pipeline.settings import Settings
from pipeline.stream.topics import ensure_topics
from tests.helpers import read_all

pytestmark = pytest.mark.integration




def test_sync_producer_batches_per_tenant(settings: Settings) -> None:
    asyncio.run(ensure_topics(settings))
    with UsageProducer(settings.kafka_bootstrap, topic=settings.topic("usage-events"),
                       batch_size=100, linger_ms=50) as meter:
        ids = [meter.record(tenant_id=f"t{i % 3}", provider="openai", model="gpt-4o-mini",
                            input_tokens=10, output_tokens=i, feature="sdk")
               for i in range(250)]
        with pytest.raises(ValidationFailed) as bad:
            meter.record(tenant_id="t0", provider="openai", model="gpt-4o", input_tokens=-1,
                         output_tokens=1)
        assert bad.value.reason_code == "negative_tokens"
        with pytest.raises(ValidationFailed) as unknown:
            meter.record(tenant_id="t0", provider="x", model="no-such-model", input_tokens=1,
                         output_tokens=1)
        assert unknown.value.reason_code == "unknown_model"
    messages = asyncio.run(read_all(settings, 250))
    events = [e for key, v in messages for e in (v if isinstance(v, list) else [v])]
    assert sorted(e["event_id"] for e in events) == sorted(ids)
    assert all(len(v) <= 100 for _, v in messages if isinstance(v, list))
    assert all(key == e["tenant_id"] for key, v in messages
               for e in (v if isinstance(v, list) else [v]))
    assert len(messages) < 250  # batched, not one message per event


def test_async_producer_flushes_on_linger(settings: Settings) -> None:
    async def go() -> str:
        await ensure_topics(settings)
        async with AsyncUsageProducer(settings.kafka_bootstrap,
                                      topic=settings.topic("usage-events"), linger_ms=20) as p:
            eid = await p.record(tenant_id="solo", provider="anthropic",
                                 model="claude-3-haiku", input_tokens=5, output_tokens=5)
            await asyncio.sleep(0.3)  # the linger timer sends it without an explicit flush
            return eid

    eid = asyncio.run(go())
    messages = asyncio.run(read_all(settings, 1))
    assert messages[0][1]["event_id"] == eid


def test_sdk_sends_1h_cache_writes_and_refuses_a_split_that_does_not_add_up(
        settings: Settings) -> None:
    from pipeline.sdk import anthropic_usage

    asyncio.run(ensure_topics(settings))
    usage = {"input_tokens": 40_000, "output_tokens": 1_000, "cache_read_input_tokens": 20_000,
             "cache_creation": {"ephemeral_5m_input_tokens": 60_000,
                                "ephemeral_1h_input_tokens": 40_000}}
    with UsageProducer(settings.kafka_bootstrap, topic=settings.topic("usage-events")) as meter:
        eid = meter.record(tenant_id="acme", provider="anthropic", model="claude-sonnet-4-5",
                           **anthropic_usage(usage))
        with pytest.raises(ValidationFailed) as bad:
            meter.record(tenant_id="acme", provider="anthropic", model="claude-sonnet-4-5",
                         input_tokens=100, output_tokens=1, cache_creation_input_tokens=10,
                         cache_creation_1h_input_tokens=11)
        assert bad.value.reason_code == "inconsistent_counts"
    [(_, event)] = asyncio.run(read_all(settings, 1))
    assert event["event_id"] == eid
    assert (event["input_tokens"], event["cache_read_input_tokens"],
            event["cache_creation_input_tokens"], event["cache_creation_1h_input_tokens"]) \
        == (160_000, 20_000, 100_000, 40_000)
