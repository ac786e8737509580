"""LiteLLM: publish one usage event per successful completion, with LiteLLM's own counts.

    import litellm
    from pipeline.sdk import UsageProducer
    from pipeline.integrations.litellm import TokenmeterCallback

    litellm.callbacks = [TokenmeterCallback(UsageProducer("kafka:9092"))]
    litellm.completion(model="gpt-4o", messages=[...], metadata={"tenant_id": "acme"})

Install with ``pip install 'tokenmeter[litellm]'``. The tenant comes from the call's
``metadata["tenant_id"]``, else its ``user``, else ``default_tenant``. The event id is
LiteLLM's call id, so a callback fired twice for one call is metered once. Token counts
follow LiteLLM's normalised usage: ``prompt_tokens`` already includes cache reads and
writes, which is what ``input_tokens`` means here too; Anthropic's one-hour cache writes
(``prompt_tokens_details.cache_creation_token_details.ephemeral_1h_input_tokens``) become
``cache_creation_1h_input_tokens``. A call that cannot be metered is
logged and skipped, never raised into the caller's completion.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from pipeline.core.providers import service_tier
from pipeline.errors import TokenmeterError
from pipeline.integrations.otel import Recorder

log = logging.getLogger(__name__)


def _get(obj: Any, name: str) -> Any:
    """Attribute or key: LiteLLM hands out both pydantic objects and plain dicts."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_fields(kwargs: dict[str, Any], response: Any, end_time: Any,
                 default_tenant: str | None) -> dict[str, Any] | None:
    """Keyword arguments for ``record`` from one LiteLLM success callback, or None."""
    usage = _get(response, "usage")
    params = kwargs.get("litellm_params") or {}
    metadata = params.get("metadata") or {}
    tenant = (metadata.get("tenant_id") or kwargs.get("user")
              or (kwargs.get("optional_params") or {}).get("user") or default_tenant)
    provider = params.get("custom_llm_provider") or kwargs.get("custom_llm_provider")
    model = _get(response, "model") or kwargs.get("model")
    if usage is None or not tenant or not provider or not model:
        return None
    fields: dict[str, Any] = {
        "tenant_id": str(tenant), "provider": str(provider), "model": str(model),
        "input_tokens": _count(_get(usage, "prompt_tokens")),
        "output_tokens": _count(_get(usage, "completion_tokens")),
        "event_id": f"litellm-{kwargs.get('litellm_call_id') or _get(response, 'id')}",
    }
    cached = _count(_get(_get(usage, "prompt_tokens_details"), "cached_tokens"))
    cached = cached if cached is not None else _count(_get(usage, "cache_read_input_tokens"))
    if cached:
        fields["cache_read_input_tokens"] = cached
    details = _get(usage, "prompt_tokens_details")
    written = _count(_get(usage, "cache_creation_input_tokens"))
    for name in ("cache_write_tokens", "cache_creation_tokens"):  # OpenAI / Anthropic naming
        written = written if written is not None else _count(_get(details, name))
    if written:
        fields["cache_creation_input_tokens"] = written
    # Anthropic's 5-minute / 1-hour split: LiteLLM keeps it in prompt_tokens_details (a raw
    # Anthropic usage dict has it as cache_creation); only the 1-hour part is sent, the rest
    # of the writes are 5-minute writes (LiteLLM folds writes without a lifetime into 5m)
    split = _get(details, "cache_creation_token_details") or _get(usage, "cache_creation")
    one_hour = _count(_get(split, "ephemeral_1h_input_tokens"))
    if one_hour:
        fields["cache_creation_1h_input_tokens"] = one_hour
        if written is None:
            fields["cache_creation_input_tokens"] = one_hour + (
                _count(_get(split, "ephemeral_5m_input_tokens")) or 0)
    reasoning = _count(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens"))
    if reasoning:
        fields["reasoning_output_tokens"] = reasoning
    tier = service_tier(_get(response, "service_tier")
                        or (kwargs.get("optional_params") or {}).get("service_tier"))
    if tier is not None:
        fields["service_tier"] = tier
    if isinstance(end_time, datetime):
        stamp = end_time if end_time.tzinfo else end_time.astimezone()
        fields["timestamp"] = stamp.astimezone(timezone.utc).isoformat()
    for key in ("feature", "project_id", "user_id", "task_type", "criticality", "user_tier"):
        if isinstance(metadata.get(key), str):
            fields[key] = metadata[key]
    return fields


class TokenmeterCallback(CustomLogger):
    """A LiteLLM callback that records every successful completion as a usage event."""

    def __init__(self, recorder: Recorder, *, default_tenant: str | None = None) -> None:
        super().__init__()
        self.recorder = recorder
        self.default_tenant = default_tenant
        self.recorded = 0
        self.skipped = 0

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any,
                          start_time: Any, end_time: Any) -> None:
        """Meter one finished call (LiteLLM runs this off the caller's path)."""
        fields = usage_fields(kwargs, response_obj, end_time, self.default_tenant)
        if fields is None:
            self.skipped += 1
            log.warning("LiteLLM call %s lacks usage, a tenant or a provider; not metered",
                        kwargs.get("litellm_call_id"))
            return
        try:
            self.recorder.record(**fields)
            self.recorded += 1
        except TokenmeterError as exc:
            self.skipped += 1
            log.warning("LiteLLM call %s not metered: %s", kwargs.get("litellm_call_id"), exc)

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        """Async completions: same as the sync hook (record only queues)."""
        self.log_success_event(kwargs, response_obj, start_time, end_time)
