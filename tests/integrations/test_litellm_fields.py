"""Mapping LiteLLM's callback arguments to usage-event fields, without a network or broker."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D
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


# --- 5-minute and 1-hour cache writes (issue #16) ---
@pytest.mark.parametrize(("response", "expected"), [
    # LiteLLM's normalised Anthropic usage: the split sits in prompt_tokens_details
    (resp(prompt_tokens=500, completion_tokens=5, cache_read_input_tokens=300,
          cache_creation_input_tokens=100,
          prompt_tokens_details={"cached_tokens": 300, "cache_creation_token_details": {
              "ephemeral_5m_input_tokens": 60, "ephemeral_1h_input_tokens": 40}}),
     {"cache_read_input_tokens": 300, "cache_creation_input_tokens": 100,
      "cache_creation_1h_input_tokens": 40}),
    # only 5-minute writes: no 1-hour count is sent
    (resp(prompt_tokens=500, completion_tokens=5, cache_creation_input_tokens=100,
          prompt_tokens_details={"cache_creation_token_details": {
              "ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0}}),
     {"cache_creation_input_tokens": 100, "cache_creation_1h_input_tokens": None}),
    # a raw Anthropic-shaped usage dict without a total: all writes = 5m + 1h
    (resp(prompt_tokens=500, completion_tokens=5,
          cache_creation={"ephemeral_5m_input_tokens": 60, "ephemeral_1h_input_tokens": 40}),
     {"cache_creation_input_tokens": 100, "cache_creation_1h_input_tokens": 40}),
    # OpenAI naming of the writes in prompt_tokens_details
    (resp(prompt_tokens=500, completion_tokens=5,
          prompt_tokens_details={"cached_tokens": 10, "cache_write_tokens": 70}),
     {"cache_read_input_tokens": 10, "cache_creation_input_tokens": 70}),
])
def test_cache_write_lifetimes(response: dict, expected: dict) -> None:
    fields = usage_fields(kw(provider="anthropic"), response, END, None)
    assert fields is not None
    assert {k: fields.get(k) for k in expected} == expected


def test_litellm_anthropic_usage_object_is_metered_with_its_1h_writes() -> None:
    """LiteLLM's own Anthropic usage mapping (the object its callbacks receive), metered."""
    from litellm.llms.anthropic.chat.transformation import AnthropicConfig

    from pipeline.core.catalog import load_catalog
    from pipeline.core.meter import Meter
    from pipeline.core.scoring import load_policy

    # Anthropic's input_tokens (40k) excludes the 20k reads and 100k writes
    usage = AnthropicConfig().calculate_usage(
        {"input_tokens": 40_000, "output_tokens": 1_000, "cache_read_input_tokens": 20_000,
         "cache_creation_input_tokens": 100_000,
         "cache_creation": {"ephemeral_5m_input_tokens": 60_000,
                            "ephemeral_1h_input_tokens": 40_000}}, None)
    fields = usage_fields(kw(provider="anthropic"),
                          {"id": "msg_1", "model": "claude-sonnet-4-5", "usage": usage}, END, None)
    assert fields is not None
    assert (fields["input_tokens"], fields["cache_read_input_tokens"],
            fields["cache_creation_input_tokens"], fields["cache_creation_1h_input_tokens"]) \
        == (160_000, 20_000, 100_000, 40_000)
    p = Meter(load_catalog(), load_policy()).meter_object(fields, now=END)
    # 40k x 3 + 20k x 0.30 + 60k x 3.75 + 40k x 6 + 1000 x 15 (per 1M)
    # = 0.12 + 0.006 + 0.225 + 0.24 + 0.015
    assert p.total_cost == D("0.606")


@pytest.mark.parametrize(("kwargs", "response", "tier"), [
    (kw(), {**resp(prompt_tokens=1, completion_tokens=1), "service_tier": "priority"},
     "priority"),
    (kw(), {**resp(prompt_tokens=1, completion_tokens=1), "service_tier": "default"},
     "standard"),
    (kw(optional_params={"service_tier": "flex"}), resp(prompt_tokens=1, completion_tokens=1),
     "flex"),
    (kw(), resp(prompt_tokens=1, completion_tokens=1), None),
])
def test_the_service_tier_the_call_ran_in_is_carried(kwargs, response, tier) -> None:
    """A gpt-5 priority call metered as standard is billed at half its price."""
    fields = usage_fields(kwargs, response, END, None)
    assert fields is not None and fields.get("service_tier") == tier
