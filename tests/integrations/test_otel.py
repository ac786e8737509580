"""Real OpenTelemetry SDK spans become usage events on the real broker."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider

from pipeline.integrations.otel import UsageSpanProcessor
from pipeline.sdk import UsageProducer
from pipeline.settings import Settings
from pipeline.stream.topics import ensure_topics
from tests.helpers import read_all

pytestmark = pytest.mark.integration


def test_genai_spans_become_usage_events(settings: Settings) -> None:
    asyncio.run(ensure_topics(settings))
    producer = UsageProducer(settings.kafka_bootstrap, topic=settings.topic("usage-events"))
    processor = UsageSpanProcessor(producer, default_tenant="acme")
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("chat gpt-4o") as span:
        span.set_attributes({"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                             "gen_ai.response.model": "gpt-4o-2024-08-06",
                             "gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 120,
                             "gen_ai.usage.output_tokens": 30,
                             "gen_ai.usage.cache_read.input_tokens": 100,
                             "tenant.id": "globex"})
        trace_id = span.get_span_context().trace_id
    with tracer.start_as_current_span("not an llm call"):
        pass
    with tracer.start_as_current_span("bad") as span:  # unknown model: skipped, not raised
        span.set_attributes({"gen_ai.system": "x", "gen_ai.request.model": "nope",
                             "gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 1})
    provider.force_flush()
    producer.close()
    assert (processor.recorded, processor.skipped) == (1, 1)
    messages = asyncio.run(read_all(settings, 1))
    event = messages[0][1]
    assert messages[0][0] == "globex"
    assert event["tenant_id"] == "globex" and event["model"] == "gpt-4o-2024-08-06"
    assert (event["input_tokens"], event["output_tokens"], event["cache_read_input_tokens"]) == (120, 30, 100)
    assert event["event_id"].startswith(f"otel-{trace_id:032x}")
    assert event["trace_id"] == f"{trace_id:032x}" and event["feature"] == "chat"


def test_genai_span_cache_write_split_reaches_the_broker(settings: Settings) -> None:
    asyncio.run(ensure_topics(settings))
    producer = UsageProducer(settings.kafka_bootstrap, topic=settings.topic("usage-events"))
    processor = UsageSpanProcessor(producer, default_tenant="acme")
    provider = TracerProvider()
    provider.add_span_processor(processor)
    with provider.get_tracer("test").start_as_current_span("chat claude") as span:
        span.set_attributes({"gen_ai.provider.name": "anthropic",
                             "gen_ai.request.model": "claude-sonnet-4-5",
                             "gen_ai.usage.input_tokens": 100_000,
                             "gen_ai.usage.output_tokens": 1_000,
                             "gen_ai.usage.cache_creation.input_tokens": 100_000,
                             "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": 40_000})
    provider.force_flush()
    producer.close()
    assert (processor.recorded, processor.skipped) == (1, 0)
    [(_, event)] = asyncio.run(read_all(settings, 1))
    assert (event["cache_creation_input_tokens"], event["cache_creation_1h_input_tokens"]) \
        == (100_000, 40_000)
