"""OTel gen_ai.conversation.id feeds session budgets (attributes.session_id)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from pipeline.core.budgets import Budget
from pipeline.core.catalog import load_catalog
from pipeline.core.events import PricedUsage
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.integrations.otel import UsageSpanProcessor
from tests.helpers import MeteringRecorder

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)
END_NS = int(NOW.timestamp()) * 1_000_000_000
METER = Meter(load_catalog(), load_policy())



def metered(attrs: dict[str, Any]) -> PricedUsage:
    rec = MeteringRecorder(NOW)
    provider = TracerProvider()
    provider.add_span_processor(UsageSpanProcessor(rec, default_tenant="acme"))
    s = provider.get_tracer("test").start_span("chat", start_time=END_NS - 10**9)
    s.set_attributes({"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                      "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10,
                      **attrs})
    s.end(end_time=END_NS)
    (event,) = rec.priced
    return event


def test_conversation_id_is_the_session_a_run_budget_counts_by() -> None:
    runs = Budget(budget_id="s", tenant_id="acme", limit=2, period="run", each="session_id")
    event = metered({"gen_ai.conversation.id": "conv-42"})
    assert event.attributes == {"session_id": "conv-42"}
    assert runs.key_of(event) == "conv-42"
    assert event.trace_id is not None and len(event.trace_id) == 32
    plain = metered({})
    assert plain.attributes == {} and runs.key_of(plain) is None
