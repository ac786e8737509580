"""Provider usage in our semantics: the functional core of ``instrument`` (no I/O).

Maps what OpenAI and Anthropic send (a response, an error body, a stream's chunks) to
``CallUsage``, extracts the prompt text counted offline when usage never arrives, and
prices an attempt from the catalog. Kept apart from the wrappers so it can be read and
tested without a client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.core.catalog import Catalog
from pipeline.core.pricing import TokenCounts, cost_lines
from pipeline.core.providers import service_tier as provider_tier

ZERO = Decimal(0)
_TEXT_KEYS = ("content", "text", "input", "arguments", "output", "thinking")


@dataclass(frozen=True, slots=True)
class CallUsage:
    """Token counts of one attempt in our semantics (input includes cache, output reasoning)."""

    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    reasoning_output_tokens: int = 0
    service_tier: str = "standard"
    provider_service_tier: str | None = None


NO_TOKENS = CallUsage(0, 0)


def field_of(obj: Any, name: str) -> Any:
    """Attribute or key: the SDKs hand out pydantic objects, raw JSON is dicts."""
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def count_of(obj: Any, name: str) -> int:
    """A token count field, 0 when absent or not an integer."""
    value = field_of(obj, name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# provider service tier -> ours; anything else is priced as standard and kept raw in
# attributes.provider_service_tier ("scale" is prepaid capacity, billed at standard rates)
def service_tier(raw: Any) -> tuple[str, str | None]:
    """(our service tier, the provider's raw value when it differs)."""
    if not isinstance(raw, str) or not raw:
        return "standard", None
    # one vocabulary of provider tier names, shared with the LiteLLM and OTel integrations
    ours = provider_tier(raw) or "standard"
    return ours, (None if raw == ours else raw)


def _openai_usage(usage: Any, tier: Any, counted_in: str, counted_out: str) -> CallUsage | None:
    # both OpenAI APIs: the input count includes cached tokens, the output count reasoning
    # ones, each with its "<name>_details" breakdown; only the names differ
    if usage is None:
        return None
    ours, raw = service_tier(tier)
    return CallUsage(
        input_tokens=count_of(usage, counted_in),
        output_tokens=count_of(usage, counted_out),
        cache_read_input_tokens=count_of(field_of(usage, f"{counted_in}_details"),
                                         "cached_tokens"),
        reasoning_output_tokens=count_of(field_of(usage, f"{counted_out}_details"),
                                         "reasoning_tokens"),
        service_tier=ours, provider_service_tier=raw)


def openai_chat_usage(usage: Any, tier: Any = None) -> CallUsage | None:
    """Chat Completions ``usage`` (prompt_tokens includes cached, completion reasoning)."""
    return _openai_usage(usage, tier, "prompt_tokens", "completion_tokens")


def openai_responses_usage(usage: Any, tier: Any = None) -> CallUsage | None:
    """Responses API ``usage`` (input_tokens includes cached, output_tokens reasoning)."""
    return _openai_usage(usage, tier, "input_tokens", "output_tokens")


def anthropic_call_usage(usage: Any) -> CallUsage | None:
    """Messages ``usage`` via ``anthropic_usage`` (their input excludes cache reads/writes)."""
    if usage is None:
        return None
    from pipeline.sdk._producer import anthropic_usage

    mapped = anthropic_usage(usage)
    ours, raw = service_tier(field_of(usage, "service_tier"))
    return CallUsage(
        input_tokens=mapped["input_tokens"], output_tokens=mapped["output_tokens"],
        cache_read_input_tokens=mapped.get("cache_read_input_tokens", 0),
        cache_creation_input_tokens=mapped.get("cache_creation_input_tokens", 0),
        cache_creation_1h_input_tokens=mapped.get("cache_creation_1h_input_tokens", 0),
        service_tier=ours, provider_service_tier=raw)


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key in _TEXT_KEYS:
            if key in value:
                yield from _texts(value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)


def prompt_text(kwargs: Mapping[str, Any]) -> str:
    """The text of a request the provider tokenizes: system, messages/input, tools."""
    parts: list[str] = []
    for key in ("system", "instructions", "messages", "input"):
        parts.extend(_texts(kwargs.get(key)))
    tools = kwargs.get("tools")
    if tools:
        parts.append(json.dumps(tools, default=str, sort_keys=True))
    return "\n".join(parts)


def estimate(partial: CallUsage | None, prompt_tokens: int, output_tokens: int,
             tier: CallUsage | None = None) -> CallUsage:
    """Usage to bill when the provider's final usage never arrived.

    The provider's partial numbers win where it sent them (Anthropic's message_start has the
    exact input and cache counts); the output is at least what was counted from the text.
    """
    tiers = tier or partial
    base = partial or CallUsage(prompt_tokens, 0)
    return replace(base,
                   input_tokens=base.input_tokens or prompt_tokens,
                   output_tokens=max(base.output_tokens, output_tokens),
                   service_tier=tiers.service_tier if tiers else "standard",
                   provider_service_tier=tiers.provider_service_tier if tiers else None)


def price(catalog: Catalog, provider: str, model: str, usage: CallUsage,
          at: datetime) -> Decimal:
    """Total cost of one attempt with the catalog's version in force at ``at``."""
    if usage.input_tokens == 0 and usage.output_tokens == 0:
        return ZERO
    entry, version = catalog.price_version(model, at, provider)
    counts = TokenCounts(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
        reasoning_output_tokens=usage.reasoning_output_tokens,
        cache_creation_1h_input_tokens=usage.cache_creation_1h_input_tokens)
    return cost_lines(counts, entry, version, currency=catalog.currency,
                      service_tier=usage.service_tier).total_cost


def pick_model(catalog: Catalog, provider: str, reported: Any, requested: str) -> str:
    """The model that ran (the response's) when the catalog knows it, else the requested."""
    if isinstance(reported, str) and reported and catalog.resolve(reported, provider):
        return reported
    return requested or (reported if isinstance(reported, str) else "") or "unknown"


def _response_usage(api: str, response: Any) -> CallUsage | None:
    usage = field_of(response, "usage")
    if api == "messages":
        return anthropic_call_usage(usage)
    if api == "responses":
        return openai_responses_usage(usage, field_of(response, "service_tier"))
    return openai_chat_usage(usage, field_of(response, "service_tier"))


def _body_usage(api: str, response: Any) -> CallUsage | None:
    """Usage in an error response's body, if the provider billed the failed attempt."""
    try:
        body = json.loads(response.content)
    except Exception:  # noqa: BLE001 - unread stream, not JSON: no usage either way
        return None
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    if api == "messages":
        return anthropic_call_usage(usage)
    if api == "responses":
        return openai_responses_usage(usage)
    return openai_chat_usage(usage)


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    dump = getattr(obj, "model_dump", None)
    return dict(dump()) if callable(dump) else {}


def merge_anthropic(start: Mapping[str, Any], delta_usage: Any) -> CallUsage:
    """message_delta's usage is cumulative; fields it leaves out keep message_start's."""
    merged = dict(start)
    merged.update({k: v for k, v in _as_dict(delta_usage).items() if v is not None})
    return anthropic_call_usage(merged) or NO_TOKENS


class _StreamState:
    """What a stream showed so far: model, usage (final or partial), output text."""

    def __init__(self, api: str, hide_usage_chunk: bool) -> None:
        self.api = api
        self.hide_usage_chunk = hide_usage_chunk
        self.model: Any = None
        self.final: CallUsage | None = None
        self.partial: CallUsage | None = None
        self.tier: Any = None
        self.start: dict[str, Any] = {}  # Anthropic's message_start usage, as sent
        self.text: list[str] = []

    def observe(self, item: Any) -> bool:
        """Take one chunk/event in; True when the caller should not see it."""
        if self.api == "chat.completions":
            return self._chat(item)
        if self.api == "messages":
            self._messages(item)
        else:
            self._responses(item)
        return False

    def _chat(self, chunk: Any) -> bool:
        self.model = field_of(chunk, "model") or self.model
        self.tier = field_of(chunk, "service_tier") or self.tier
        choices = field_of(chunk, "choices") or []
        for choice in choices:
            delta = field_of(choice, "delta")
            for key in ("content", "refusal"):
                value = field_of(delta, key)
                if isinstance(value, str):
                    self.text.append(value)
            for tc in field_of(delta, "tool_calls") or []:
                fn = field_of(tc, "function")
                for key in ("name", "arguments"):
                    value = field_of(fn, key)
                    if isinstance(value, str):
                        self.text.append(value)
        usage = field_of(chunk, "usage")
        if usage is not None:
            self.final = openai_chat_usage(usage, self.tier)
            return self.hide_usage_chunk and not choices
        return False

    def _messages(self, event: Any) -> None:
        kind = field_of(event, "type")
        if kind == "message_start":
            message = field_of(event, "message")
            self.model = field_of(message, "model") or self.model
            self.start = _as_dict(field_of(message, "usage"))
            self.partial = anthropic_call_usage(self.start)
        elif kind == "content_block_delta":
            delta = field_of(event, "delta")
            for key in ("text", "partial_json", "thinking"):
                value = field_of(delta, key)
                if isinstance(value, str):
                    self.text.append(value)
        elif kind == "message_delta":
            usage = field_of(event, "usage")
            if usage is not None:
                self.final = merge_anthropic(self.start, usage)

    def _responses(self, event: Any) -> None:
        kind = field_of(event, "type") or ""
        response = field_of(event, "response")
        if response is not None:
            self.model = field_of(response, "model") or self.model
            self.tier = field_of(response, "service_tier") or self.tier
            usage = field_of(response, "usage")
            if usage is not None:
                self.final = openai_responses_usage(usage, self.tier)
        delta = field_of(event, "delta")
        if isinstance(kind, str) and kind.endswith(".delta") and isinstance(delta, str):
            self.text.append(delta)
