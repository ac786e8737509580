"""GenAI span attributes -> usage-event fields, priced (no broker: the recorder meters)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.integrations.otel import UsageSpanProcessor
from tests.helpers import MeteringRecorder

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)
END_NS = int(NOW.timestamp()) * 1_000_000_000
METER = Meter(load_catalog(), load_policy())



def span(attrs: dict[str, Any]) -> tuple[UsageSpanProcessor, MeteringRecorder]:
    rec = MeteringRecorder(NOW)
    processor = UsageSpanProcessor(rec, default_tenant="acme")
    provider = TracerProvider()
    provider.add_span_processor(processor)
    s = provider.get_tracer("test").start_span("chat", start_time=END_NS - 10**9)
    s.set_attributes({"gen_ai.provider.name": "anthropic",
                      "gen_ai.request.model": "claude-sonnet-4-5", **attrs})
    s.end(end_time=END_NS)
    return processor, rec


@pytest.mark.parametrize(("attrs", "writes", "writes_1h", "total"), [
    # 60k 5m x 3.75 + 40k 1h x 6 + 1000 out x 15, per 1M = 0.225 + 0.24 + 0.015
    ({"gen_ai.usage.cache_creation.input_tokens": 100_000,
      "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": 40_000}, 100_000, 40_000,
     D("0.48")),
    ({"gen_ai.usage.cache_creation.ephemeral_5m_input_tokens": 60_000,
      "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": 40_000}, 100_000, 40_000,
     D("0.48")),
    # no split: every write at 3.75 = 0.375, + 0.015
    ({"gen_ai.usage.cache_creation.input_tokens": 100_000}, 100_000, 0, D("0.39")),
])
def test_span_cache_writes_by_lifetime(attrs: dict[str, Any], writes: int, writes_1h: int,
                                       total: D) -> None:
    processor, rec = span({"gen_ai.usage.input_tokens": 100_000,
                           "gen_ai.usage.output_tokens": 1_000, **attrs})
    assert (processor.recorded, processor.skipped) == (1, 0)
    [p] = rec.priced
    assert (p.cache_creation_input_tokens, p.cache_creation_1h_input_tokens) == (writes,
                                                                                  writes_1h)
    assert p.total_cost == total


def test_span_with_a_split_that_does_not_add_up_is_skipped_with_the_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    processor, rec = span({"gen_ai.usage.input_tokens": 100_000, "gen_ai.usage.output_tokens": 1,
                           "gen_ai.usage.cache_creation.input_tokens": 90_000,
                           "gen_ai.usage.cache_creation.ephemeral_5m_input_tokens": 60_000,
                           "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": 40_000})
    assert (processor.recorded, processor.skipped, rec.priced) == (0, 1, [])
    assert "inconsistent_counts" in caplog.text


@pytest.mark.parametrize(("attrs", "tier"), [
    ({"openai.response.service_tier": "priority"}, "priority"),
    ({"gen_ai.openai.response.service_tier": "flex"}, "flex"),
    ({}, "standard"),
])
def test_span_service_tier_is_priced(attrs: dict[str, Any], tier: str) -> None:
    _, rec = span({"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-5",
                   "gen_ai.usage.input_tokens": 1_000_000, "gen_ai.usage.output_tokens": 0,
                   **attrs})
    assert rec.priced[0].service_tier.value == tier
    # gpt-5: 1M input at standard 1.25, flex 0.625, priority 2.50
    assert rec.priced[0].total_cost == {"standard": D("1.25"), "flex": D("0.625"),
                                        "priority": D("2.50")}[tier]
