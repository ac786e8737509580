"""Client wrappers: meter every OpenAI / Anthropic call the provider may bill.

    client = instrument(OpenAI(), producer=meter, tenant="acme", feature="search")
    resp = client.chat.completions.create(model="gpt-4o", messages=[...])
    resp.tokenmeter.cost          # Decimal, priced offline from the same catalog

``instrument`` wraps the *instance's* ``chat.completions.create`` and ``responses.create``
(OpenAI, Azure OpenAI) or ``messages.create`` (Anthropic), sync and async, and hooks the
``send`` of the client's own HTTP client to see every attempt of the SDK's retry loop. No
class is patched: other clients in the process are untouched.

What each call records (one event per attempt the provider may bill, all sharing
``attributes.request_id``, numbered by ``attributes.attempt``):

* a success: the provider's own usage (cache reads, 5m/1h writes, reasoning, service tier);
* a stream: usage from its final usage chunk (OpenAI's ``stream_options.include_usage`` is
  requested when the caller did not set it, and the extra usage-only chunk is not shown to
  a caller that did not ask for it); Anthropic's message_start/message_delta usage;
* a stream cut short (closed, broken out of, network error, timeout) or a timed-out or
  cancelled request: what was seen, counted offline with tiktoken where the provider sent
  no usage (the prompt from the request, the output from the text received), marked
  ``attributes.estimated = "true"`` and ``attributes.token_source = "tiktoken:..."``;
* an attempt rejected before any tokens were processed (an HTTP error status without usage
  in its body, or a connection that never delivered the request): zero tokens, zero cost,
  ``attributes.status = "rejected"`` and ``attributes.http_status``.

Metering never breaks the caller's call: a failure to price or record is logged (logger
``tokenmeter.instrument``) and kept in ``CallMeter.error``, unless ``raise_errors=True``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.tokens import TokenCounter
from pipeline.errors import ConfigError

# the parts live in private modules (_call_usage: usage mapping and pricing; _records:
# attempt records, CallMeter, runs; _http_hook: the retry loop's attempts; _meterer:
# attempts -> events; _streams: stream proxies); their public names stay importable here
from pipeline.sdk._call_usage import (
    NO_TOKENS,
    ZERO,
    CallUsage,
    _response_usage,
    anthropic_call_usage,
    estimate,
    field_of,
    merge_anthropic,
    openai_chat_usage,
    openai_responses_usage,
    pick_model,
    price,
    prompt_text,
    service_tier,
)
from pipeline.sdk._http_hook import _CURRENT, _hook_http
from pipeline.sdk._meterer import _Meterer
from pipeline.sdk._records import (
    AttemptRecord,
    CallMeter,
    MeteredAttempt,
    current_run,
    event_fields,
    meter_run,
)
from pipeline.sdk._streams import AsyncMeteredStream, MeteredStream

__all__ = [
    "NO_TOKENS", "ZERO", "AsyncMeteredStream", "AttemptRecord", "CallMeter", "CallUsage",
    "MeteredAttempt", "MeteredStream", "anthropic_call_usage", "current_run", "estimate",
    "event_fields", "instrument", "merge_anthropic", "meter_run", "openai_chat_usage",
    "openai_responses_usage", "pick_model", "price", "prompt_text", "service_tier",
]


def _attach(obj: Any, meter: CallMeter) -> None:
    try:
        # object.__setattr__: pydantic response models keep it out of their dumps
        object.__setattr__(obj, "tokenmeter", meter)
    except (AttributeError, TypeError):
        pass


def _wrap_sync(original: Callable[..., Any], api: str, meterer: _Meterer) -> Callable[..., Any]:
    @functools.wraps(original)
    def create(*args: Any, **kwargs: Any) -> Any:
        call = meterer.new_call(api, kwargs)
        token = _CURRENT.set(call)
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            _CURRENT.reset(token)
            call.meter.done = True
            meterer.emit(call, meterer.after_error(call, exc))
            _attach(exc, call.meter)
            raise
        _CURRENT.reset(token)
        meterer.emit(call, meterer.failed_attempts(call, len(call.http) - 1))
        if call.stream:
            return MeteredStream(result, call, meterer)
        call.meter.done = True
        meterer.emit(call, [meterer.success(call, _response_usage(api, result),
                                            field_of(result, "model"))])
        _attach(result, call.meter)
        return result

    create.__tokenmeter_original__ = original  # type: ignore[attr-defined]
    return create


def _wrap_async(original: Callable[..., Any], api: str, meterer: _Meterer) -> Callable[..., Any]:
    @functools.wraps(original)
    async def create(*args: Any, **kwargs: Any) -> Any:
        call = meterer.new_call(api, kwargs)
        token = _CURRENT.set(call)
        try:
            result = await original(*args, **kwargs)
        except BaseException as exc:
            _CURRENT.reset(token)
            call.meter.done = True
            await meterer.aemit(call, meterer.after_error(call, exc))
            _attach(exc, call.meter)
            raise
        _CURRENT.reset(token)
        await meterer.aemit(call, meterer.failed_attempts(call, len(call.http) - 1))
        if call.stream:
            return AsyncMeteredStream(result, call, meterer)
        call.meter.done = True
        await meterer.aemit(call, [meterer.success(call, _response_usage(api, result),
                                                   field_of(result, "model"))])
        _attach(result, call.meter)
        return result

    create.__tokenmeter_original__ = original  # type: ignore[attr-defined]
    return create


def _kind(client: Any) -> tuple[str, list[tuple[Any, str]]]:
    """(provider, [(resource, api)]) of a supported client, else ConfigError."""
    module = type(client).__module__.split(".", 1)[0]
    if module == "openai":
        provider = "azure" if "Azure" in type(client).__name__ else "openai"
        targets = [(client.chat.completions, "chat.completions")]
        responses = getattr(client, "responses", None)
        if responses is not None and hasattr(responses, "create"):
            targets.append((responses, "responses"))
        return provider, targets
    if module == "anthropic":
        return "anthropic", [(client.messages, "messages")]
    raise ConfigError(f"instrument() supports openai and anthropic clients, got "
                      f"{type(client).__module__}.{type(client).__name__}; record usage with "
                      "UsageProducer.record() for other clients")


def instrument(client: Any, *, producer: Any, tenant: str, feature: str | None = None,
               run: str | None = None, catalog: Catalog | None = None,
               clock: Callable[[], datetime] | None = None, provider: str | None = None,
               raise_errors: bool = False, counter: TokenCounter | None = None,
               **fields: Any) -> Any:
    """Meter every call of an OpenAI or Anthropic client (sync or async); returns it."""
    kind, targets = _kind(client)
    # the SDKs' argument-checking decorators hide that create() is a coroutine function
    is_async = type(client).__name__.startswith("Async")
    if not is_async and inspect.iscoroutinefunction(getattr(producer, "record", None)):
        raise ConfigError("a blocking client needs a blocking producer: use UsageProducer "
                          "(AsyncUsageProducer only with AsyncOpenAI / AsyncAnthropic)")
    if not callable(getattr(producer, "record", None)):
        raise ConfigError("producer needs a record(**event) method (UsageProducer)")
    if feature is not None:
        fields["feature"] = feature
    meterer = _Meterer(producer=producer, tenant=tenant, provider=provider or kind,
                       catalog=catalog or getattr(producer, "catalog", None) or load_catalog(),
                       clock=clock or (lambda: datetime.now(timezone.utc)), fields=fields,
                       run=run, raise_errors=raise_errors, counter=counter)
    _hook_http(getattr(client, "_client", None), is_async)
    wrap = _wrap_async if is_async else _wrap_sync
    for resource, api in targets:
        # re-instrumenting replaces the previous wrapper instead of stacking another
        original = getattr(resource.create, "__tokenmeter_original__", resource.create)
        resource.create = wrap(original, api, meterer)
    return client
