"""Mapping LiteLLM's callback arguments to usage-event fields, without a network or broker."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from pipeline.integrations.litellm import TokenmeterCallback, usage_fields

END = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def kw(tenant: str | None = "acme", provider: str | None = "openai", **extra: Any) -> dict:
    metadata = {"tenant_id": tenant} if tenant else {}
    return {"litellm_call_id": "call-1", "model": "gpt-4o",
            "litellm_params": {"custom_llm_provider": provider, "metadata": metadata}, **extra}


def resp(**usage: Any) -> dict:
    return {"id": "chatcmpl-1", "model": "gpt-4o-2024-08-06", "usage": usage}


@pytest.mark.parametrize(("kwargs", "response", "expected"), [
    (kw(), resp(prompt_tokens=100, completion_tokens=20),
     {"tenant_id": "acme", "provider": "openai", "model": "gpt-4o-2024-08-06",
      "input_tokens": 100, "output_tokens": 20, "event_id": "litellm-call-1"}),
    # OpenAI-style cached prompt tokens and reasoning tokens
    (kw(), resp(prompt_tokens=100, completion_tokens=50,
                prompt_tokens_details={"cached_tokens": 60},
                completion_tokens_details={"reasoning_tokens": 30}),
     {"cache_read_input_tokens": 60, "reasoning_output_tokens": 30}),
    # Anthropic-style cache fields
    (kw(provider="anthropic"), resp(prompt_tokens=500, completion_tokens=5,
                                    cache_read_input_tokens=300, cache_creation_input_tokens=100),
     {"provider": "anthropic", "cache_read_input_tokens": 300,
      "cache_creation_input_tokens": 100}),
    # tenant from `user` when metadata has none
    (kw(tenant=None, user="globex"), resp(prompt_tokens=1, completion_tokens=1),
     {"tenant_id": "globex"}),
    # value signals pass through from metadata
    (kw(litellm_params={"custom_llm_provider": "openai",
                        "metadata": {"tenant_id": "a", "feature": "search", "criticality": "high",
                                     "task_type": 7}}),
     resp(prompt_tokens=1, completion_tokens=1),
     {"tenant_id": "a", "feature": "search", "criticality": "high"}),
])
def test_fields(kwargs: dict, response: dict, expected: dict) -> None:
    fields = usage_fields(kwargs, response, END, None)
    assert fields is not None
    assert {k: fields.get(k) for k in expected} == expected
    assert fields["timestamp"] == "2026-11-01T12:00:00+00:00"
    assert "task_type" not in fields  # not a string: dropped, not forwarded


@pytest.mark.parametrize(("kwargs", "response"), [
    (kw(tenant=None), resp(prompt_tokens=1, completion_tokens=1)),  # no tenant anywhere
    (kw(provider=None), resp(prompt_tokens=1, completion_tokens=1)),  # no provider
    (kw(), {"id": "x", "model": "gpt-4o"}),  # no usage (e.g. an embedding without counts)
])
def test_unmeterable_calls_are_none(kwargs: dict, response: dict) -> None:
    assert usage_fields(kwargs, response, END, None) is None


def test_default_tenant_and_skips_never_raise() -> None:
    class Rec:
        def __init__(self) -> None:
            self.calls: list[dict] = []

        def record(self, **fields: Any) -> str:
            if fields["model"] == "nope":
                from pipeline.errors import PricingError
                raise PricingError("unknown_model", "no")
            self.calls.append(fields)
            return "id"

    rec = Rec()
    cb = TokenmeterCallback(rec, default_tenant="fallback")
    cb.log_success_event(kw(tenant=None), resp(prompt_tokens=3, completion_tokens=4), END, END)
    cb.log_success_event(kw(), {"model": "nope", "usage": {"prompt_tokens": 1}}, END, END)
    cb.log_success_event(kw(provider=None), resp(prompt_tokens=1), END, END)
    assert [c["tenant_id"] for c in rec.calls] == ["fallback"]
    assert (cb.recorded, cb.skipped) == (1, 2)
