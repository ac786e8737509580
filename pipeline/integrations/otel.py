"""OpenTelemetry: turn GenAI spans (``gen_ai.*`` attributes) into usage events.

    from opentelemetry.sdk.trace import TracerProvider
    from pipeline.sdk import UsageProducer
    from pipeline.integrations.otel import UsageSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(UsageSpanProcessor(UsageProducer("kafka:9092")))

The event id is derived from the span's trace and span ids, so a span exported twice is
metered once. The tenant comes from a span attribute (``tenant.id`` by default) or a fixed
default. A span that cannot be metered is logged and skipped, never raised into the app.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from pipeline.core.providers import service_tier
from pipeline.core.validate import OTEL_ALIASES
from pipeline.errors import TokenmeterError

log = logging.getLogger(__name__)

# the token counts among the OpenTelemetry names validation accepts (one list, in validate:
# the GenAI conventions name no split of cache writes by lifetime; the ephemeral_* pair is what
# instrumentations emit for Anthropic's 5-minute / 1-hour split)
_COUNTS = {k: v for k, v in OTEL_ALIASES.items() if k.startswith("gen_ai.usage.")}


class Recorder(Protocol):
    """Anything with UsageProducer.record's signature."""

    def record(self, *, tenant_id: str, provider: str, model: str,
               input_tokens: int | None = ..., output_tokens: int | None = ...,
               **fields: Any) -> str: ...


class UsageSpanProcessor(SpanProcessor):
    """Records one usage event per finished span that carries GenAI usage attributes."""

    def __init__(self, recorder: Recorder, *, tenant_attribute: str = "tenant.id",
                 default_tenant: str | None = None) -> None:
        self.recorder = recorder
        self.tenant_attribute = tenant_attribute
        self.default_tenant = default_tenant
        self.recorded = 0
        self.skipped = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Meter a finished GenAI span."""
        attrs = dict(span.attributes or {})
        if "gen_ai.usage.input_tokens" not in attrs and "gen_ai.usage.output_tokens" not in attrs:
            return
        tenant = attrs.get(self.tenant_attribute, self.default_tenant)
        model = attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model")
        provider = attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system")
        ctx = span.get_span_context()
        if not tenant or not model or not provider or ctx is None:
            self.skipped += 1
            log.warning("GenAI span %r lacks a tenant, model or provider; not metered",
                        span.name)
            return
        counts: dict[str, Any] = {name: value for key, name in _COUNTS.items()
                                  if isinstance(value := attrs.get(key), int)}
        # the tier the call ran in (semconv: openai.response.service_tier; older instrumentations
        # gen_ai.openai.response.service_tier): a priority call costs about twice standard
        tier = service_tier(attrs.get("openai.response.service_tier")
                            or attrs.get("gen_ai.openai.response.service_tier")
                            or attrs.get("gen_ai.request.service_tier"))
        if tier is not None:
            counts["service_tier"] = tier
        conversation = attrs.get("gen_ai.conversation.id")
        if conversation:
            # the conversation is the session: run budgets (--each session_id) count by it
            counts["attributes"] = {"session_id": str(conversation)}
        ended = span.end_time or span.start_time or 0
        try:
            self.recorder.record(
                tenant_id=str(tenant), provider=str(provider), model=str(model),
                event_id=f"otel-{ctx.trace_id:032x}-{ctx.span_id:016x}",
                timestamp=datetime.fromtimestamp(ended / 1e9, tz=timezone.utc).isoformat(),
                trace_id=f"{ctx.trace_id:032x}", feature=attrs.get("gen_ai.operation.name"),
                **counts)
            self.recorded += 1
        except TokenmeterError as exc:
            self.skipped += 1
            log.warning("GenAI span %r not metered: %s", span.name, exc)

    def shutdown(self) -> None:
        """Nothing held here; the producer is closed by its owner."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the producer if it can."""
        flush = getattr(self.recorder, "flush", None)
        if flush is not None:
            flush()
        return True
