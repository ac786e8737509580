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

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.pricing import TokenCounts, cost_lines
from pipeline.core.providers import service_tier as provider_tier
from pipeline.core.tokens import TokenCounter
from pipeline.errors import ConfigError

log = logging.getLogger("tokenmeter.instrument")

ZERO = Decimal(0)
# provider service tier -> ours; anything else is priced as standard and kept raw in
# attributes.provider_service_tier ("scale" is prepaid capacity, billed at standard rates)
_TEXT_KEYS = ("content", "text", "input", "arguments", "output", "thinking")


# ---------------------------------------------------------------------------------------
# functional core: usage mapping, prompt/output text, pricing, event fields (no I/O)


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


def _get(obj: Any, name: str) -> Any:
    """Attribute or key: the SDKs hand out pydantic objects, raw JSON is dicts."""
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _int(obj: Any, name: str) -> int:
    value = _get(obj, name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def service_tier(raw: Any) -> tuple[str, str | None]:
    """(our service tier, the provider's raw value when it differs)."""
    if not isinstance(raw, str) or not raw:
        return "standard", None
    # one vocabulary of provider tier names, shared with the LiteLLM and OTel integrations
    ours = provider_tier(raw) or "standard"
    return ours, (None if raw == ours else raw)


def openai_chat_usage(usage: Any, tier: Any = None) -> CallUsage | None:
    """Chat Completions ``usage`` (prompt_tokens includes cached, completion reasoning)."""
    if usage is None:
        return None
    ours, raw = service_tier(tier)
    return CallUsage(
        input_tokens=_int(usage, "prompt_tokens"),
        output_tokens=_int(usage, "completion_tokens"),
        cache_read_input_tokens=_int(_get(usage, "prompt_tokens_details"), "cached_tokens"),
        reasoning_output_tokens=_int(_get(usage, "completion_tokens_details"),
                                     "reasoning_tokens"),
        service_tier=ours, provider_service_tier=raw)


def openai_responses_usage(usage: Any, tier: Any = None) -> CallUsage | None:
    """Responses API ``usage`` (input_tokens includes cached, output_tokens reasoning)."""
    if usage is None:
        return None
    ours, raw = service_tier(tier)
    return CallUsage(
        input_tokens=_int(usage, "input_tokens"),
        output_tokens=_int(usage, "output_tokens"),
        cache_read_input_tokens=_int(_get(usage, "input_tokens_details"), "cached_tokens"),
        reasoning_output_tokens=_int(_get(usage, "output_tokens_details"), "reasoning_tokens"),
        service_tier=ours, provider_service_tier=raw)


def anthropic_call_usage(usage: Any) -> CallUsage | None:
    """Messages ``usage`` via ``anthropic_usage`` (their input excludes cache reads/writes)."""
    if usage is None:
        return None
    from pipeline.sdk import anthropic_usage

    mapped = anthropic_usage(usage)
    ours, raw = service_tier(_get(usage, "service_tier"))
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


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """What one attempt is metered as, before it is sent to the producer."""

    number: int
    status: str  # ok | rejected | timeout | error | cancelled
    usage: CallUsage
    model: str
    estimated: bool = False
    token_source: str = "provided"  # noqa: S105 - not a secret
    http_status: int | None = None
    provider_request_id: str | None = None
    error: str | None = None


def event_fields(rec: AttemptRecord, *, request_id: str, api: str, stream: bool,
                 run: str | None, base: Mapping[str, Any], now: datetime,
                 event_id: str) -> dict[str, Any]:
    """``record()`` keyword arguments (besides tenant/provider/model) of one attempt."""
    fields = dict(base)
    attributes = {str(k): str(v) for k, v in (fields.pop("attributes", None) or {}).items()}
    attributes.update({"request_id": request_id, "attempt": str(rec.number),
                       "status": rec.status, "api": api, "stream": str(stream).lower(),
                       "estimated": str(rec.estimated).lower(),
                       "token_source": rec.token_source})
    if rec.http_status is not None:
        attributes["http_status"] = str(rec.http_status)
    if rec.provider_request_id:
        attributes["provider_request_id"] = rec.provider_request_id
    if rec.usage.provider_service_tier:
        attributes["provider_service_tier"] = rec.usage.provider_service_tier
    if rec.error:
        attributes["error"] = rec.error[:200]
    if run:
        attributes["run_id"] = run
        fields.setdefault("trace_id", run)
    u = rec.usage
    fields.update(event_id=event_id, timestamp=now, attributes=attributes,
                  input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                  service_tier=u.service_tier)
    for name in ("cache_read_input_tokens", "cache_creation_input_tokens",
                 "cache_creation_1h_input_tokens", "reasoning_output_tokens"):
        if getattr(u, name):
            fields[name] = getattr(u, name)
    return fields


# ---------------------------------------------------------------------------------------
# what the caller reads back


@dataclass(slots=True)
class MeteredAttempt:
    """One recorded attempt: its event id, status and offline-priced cost."""

    number: int
    status: str
    event_id: str
    cost: Decimal | None
    estimated: bool
    input_tokens: int
    output_tokens: int
    http_status: int | None = None


@dataclass(slots=True)
class CallMeter:
    """The metering of one call (``response.tokenmeter``, ``stream.tokenmeter``,
    ``exc.tokenmeter``): every attempt and what the whole call cost."""

    request_id: str
    currency: str = "USD"
    attempts: list[MeteredAttempt] = field(default_factory=list)
    done: bool = False
    error: str | None = None

    @property
    def cost(self) -> Decimal | None:
        """What the call cost over all its attempts (None if one could not be priced)."""
        total = ZERO
        for a in self.attempts:
            if a.cost is None:
                return None
            total += a.cost
        return total

    @property
    def event_id(self) -> str | None:
        """The event of the last attempt (the one that answered, when one did)."""
        return self.attempts[-1].event_id if self.attempts else None

    @property
    def estimated(self) -> bool:
        """True when any attempt's tokens were counted offline instead of reported."""
        return any(a.estimated for a in self.attempts)


# ---------------------------------------------------------------------------------------
# runs (agent / tool loops)

_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("tokenmeter_run",
                                                                   default=None)


def current_run() -> str | None:
    """The run id of the innermost ``meter_run`` (None outside one)."""
    return _RUN.get()


@contextmanager
def meter_run(run_id: str) -> Iterator[str]:
    """Every instrumented call inside carries ``run_id`` (trace_id and attributes.run_id),
    and so do ``reserve`` and ``decide`` (the run's budgets apply to them)."""
    token = _RUN.set(run_id)
    try:
        yield run_id
    finally:
        _RUN.reset(token)


# ---------------------------------------------------------------------------------------
# the shell: HTTP attempt hook, stream proxies, recording


@dataclass(slots=True)
class _HttpAttempt:
    http_status: int | None = None
    error: BaseException | None = None
    provider_request_id: str | None = None
    response: Any = None


@dataclass(slots=True)
class _Call:
    api: str
    model: str
    kwargs: dict[str, Any]
    stream: bool
    meter: CallMeter
    run: str | None
    hide_usage_chunk: bool = False
    http: list[_HttpAttempt] = field(default_factory=list)
    _prompt_tokens: tuple[int, str] | None = None


_CURRENT: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("tokenmeter_call",
                                                                        default=None)


def _not_sent_errors() -> tuple[type[BaseException], ...]:
    """Transport errors after which the provider never had the whole request."""
    out: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        out += [mod.ConnectError, mod.ConnectTimeout, mod.PoolTimeout, mod.WriteTimeout]
    return tuple(out)


def _timeout_errors() -> tuple[type[BaseException], ...]:
    out: list[type[BaseException]] = [TimeoutError]
    for name in ("httpx2", "httpx"):
        try:
            out.append(__import__(name).TimeoutException)
        except ImportError:
            continue
    for name in ("openai", "anthropic"):
        try:
            out.append(__import__(name).APITimeoutError)
        except ImportError:
            continue
    return tuple(out)


_NOT_SENT = _not_sent_errors()
_TIMEOUTS = _timeout_errors()
_CANCELS: tuple[type[BaseException], ...] = (GeneratorExit, KeyboardInterrupt)
_PENDING: set[asyncio.Task[None]] = set()


def _error_status(exc: BaseException) -> str:
    if isinstance(exc, (*_CANCELS, asyncio.CancelledError)):
        return "cancelled"
    if isinstance(exc, _TIMEOUTS) or isinstance(exc.__cause__, _TIMEOUTS):
        return "timeout"
    return "error"


def _request_id(response: Any) -> str | None:
    headers = getattr(response, "headers", None) or {}
    value = headers.get("x-request-id") or headers.get("request-id")
    return str(value) if value else None


def _hook_http(http: Any, is_async: bool) -> None:
    """Observe every attempt of the SDK's retry loop at its HTTP client's ``send``.

    Attempts are attributed through a context variable to the instrumented call in flight,
    so a shared HTTP client is hooked once and calls of uninstrumented clients pass through.
    """
    if http is None or getattr(http, "_tokenmeter_hooked", False):
        return
    send = http.send

    def begin() -> _HttpAttempt | None:
        call = _CURRENT.get()
        if call is None:
            return None
        att = _HttpAttempt()
        call.http.append(att)
        return att

    def done(att: _HttpAttempt, response: Any) -> Any:
        att.http_status = getattr(response, "status_code", None)
        att.provider_request_id = _request_id(response)
        att.response = response
        return response

    if is_async:
        async def hooked_async(request: Any, *args: Any, **kwargs: Any) -> Any:
            att = begin()
            if att is None:
                return await send(request, *args, **kwargs)
            try:
                response = await send(request, *args, **kwargs)
            except BaseException as exc:
                att.error = exc
                raise
            return done(att, response)
        http.send = hooked_async
    else:
        def hooked(request: Any, *args: Any, **kwargs: Any) -> Any:
            att = begin()
            if att is None:
                return send(request, *args, **kwargs)
            try:
                response = send(request, *args, **kwargs)
            except BaseException as exc:
                att.error = exc
                raise
            return done(att, response)
        http.send = hooked
    http._tokenmeter_hooked = True


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
        self.model = _get(chunk, "model") or self.model
        self.tier = _get(chunk, "service_tier") or self.tier
        choices = _get(chunk, "choices") or []
        for choice in choices:
            delta = _get(choice, "delta")
            for key in ("content", "refusal"):
                value = _get(delta, key)
                if isinstance(value, str):
                    self.text.append(value)
            for tc in _get(delta, "tool_calls") or []:
                fn = _get(tc, "function")
                for key in ("name", "arguments"):
                    value = _get(fn, key)
                    if isinstance(value, str):
                        self.text.append(value)
        usage = _get(chunk, "usage")
        if usage is not None:
            self.final = openai_chat_usage(usage, self.tier)
            return self.hide_usage_chunk and not choices
        return False

    def _messages(self, event: Any) -> None:
        kind = _get(event, "type")
        if kind == "message_start":
            message = _get(event, "message")
            self.model = _get(message, "model") or self.model
            self.start = _as_dict(_get(message, "usage"))
            self.partial = anthropic_call_usage(self.start)
        elif kind == "content_block_delta":
            delta = _get(event, "delta")
            for key in ("text", "partial_json", "thinking"):
                value = _get(delta, key)
                if isinstance(value, str):
                    self.text.append(value)
        elif kind == "message_delta":
            usage = _get(event, "usage")
            if usage is not None:
                self.final = merge_anthropic(self.start, usage)

    def _responses(self, event: Any) -> None:
        kind = _get(event, "type") or ""
        response = _get(event, "response")
        if response is not None:
            self.model = _get(response, "model") or self.model
            self.tier = _get(response, "service_tier") or self.tier
            usage = _get(response, "usage")
            if usage is not None:
                self.final = openai_responses_usage(usage, self.tier)
        delta = _get(event, "delta")
        if isinstance(kind, str) and kind.endswith(".delta") and isinstance(delta, str):
            self.text.append(delta)


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


class _Meterer:
    """Turns attempts into events on the producer and a CallMeter for the caller."""

    def __init__(self, *, producer: Any, tenant: str, provider: str, catalog: Catalog,
                 clock: Callable[[], datetime], fields: dict[str, Any], run: str | None,
                 raise_errors: bool, counter: TokenCounter | None) -> None:
        self.producer = producer
        self.tenant = tenant
        self.provider = provider
        self.catalog = catalog
        self.clock = clock
        self.fields = fields
        self.run = run
        self.raise_errors = raise_errors
        self._counter = counter

    @property
    def counter(self) -> TokenCounter:
        """The offline token counter (loaded on first estimate)."""
        if self._counter is None:
            self._counter = TokenCounter()
        return self._counter

    def new_call(self, api: str, kwargs: dict[str, Any]) -> _Call:
        """A call in flight, before its first attempt."""
        stream = bool(kwargs.get("stream"))
        call = _Call(api=api, model=str(kwargs.get("model") or ""), kwargs=kwargs,
                     stream=stream, run=_RUN.get() or self.run,
                     meter=CallMeter(request_id=str(uuid.uuid4()),
                                     currency=self.catalog.currency))
        if api == "chat.completions" and stream:
            options = dict(kwargs.get("stream_options") or {})
            if "include_usage" not in options:
                # without it OpenAI never sends usage on a stream (logged at $0 otherwise)
                options["include_usage"] = True
                kwargs["stream_options"] = options
                call.hide_usage_chunk = True
        return call

    def prompt_tokens(self, call: _Call) -> tuple[int, str]:
        """(tokens, token_source) of the request's prompt, counted offline once per call."""
        if call._prompt_tokens is None:
            count, source = self.counter.count(call.model or "unknown",
                                               prompt_text(call.kwargs))
            call._prompt_tokens = (count, source)
        return call._prompt_tokens

    def _estimated(self, call: _Call, number: int, status: str, partial: CallUsage | None,
                   text: str, model: Any, att: _HttpAttempt | None,
                   tier: CallUsage | None = None, error: str | None = None) -> AttemptRecord:
        prompt, source = (0, "provided") if partial and partial.input_tokens else \
            self.prompt_tokens(call)
        out = self.counter.count(call.model or "unknown", text)[0] if text else 0
        if text:
            source = self.counter.encoding_for(call.model or "unknown")[1]
        return AttemptRecord(
            number=number, status=status, usage=estimate(partial, prompt, out, tier),
            model=pick_model(self.catalog, self.provider, model, call.model), estimated=True,
            token_source=source, http_status=att.http_status if att else None,
            provider_request_id=att.provider_request_id if att else None, error=error)

    def failed_attempts(self, call: _Call, upto: int) -> list[AttemptRecord]:
        """Records of the first ``upto`` HTTP attempts, all of which failed."""
        out: list[AttemptRecord] = []
        for i, att in enumerate(call.http[:upto], start=1):
            err = type(att.error).__name__ if att.error is not None else None
            if att.error is None:
                usage = _body_usage(call.api, att.response)
                out.append(AttemptRecord(
                    number=i, status="error" if usage else "rejected",
                    usage=usage or NO_TOKENS, model=call.model or "unknown",
                    http_status=att.http_status, provider_request_id=att.provider_request_id))
            elif isinstance(att.error, _NOT_SENT):
                out.append(AttemptRecord(number=i, status="rejected", usage=NO_TOKENS,
                                         model=call.model or "unknown", error=err))
            else:
                # the request reached the provider, which may have processed (and billed)
                # it: the prompt at least, counted offline; the output was never seen
                out.append(self._estimated(call, i, _error_status(att.error), None, "",
                                           None, att, error=err))
        return out

    def after_error(self, call: _Call, exc: BaseException) -> list[AttemptRecord]:
        """Records when the SDK call raised: every attempt it made."""
        records = self.failed_attempts(call, len(call.http))
        last = call.http[-1] if call.http else None
        if last is not None and last.error is None and last.http_status is not None \
                and last.http_status < 400:
            # answered, then failed after the answer (parsing): billed as asked
            records[-1] = self._estimated(call, len(call.http), _error_status(exc), None,
                                          "", None, last, error=type(exc).__name__)
        return records

    def success(self, call: _Call, usage: CallUsage | None, model: Any) -> AttemptRecord:
        """The record of the attempt that answered (non-streamed)."""
        number = max(len(call.http), 1)
        att = call.http[-1] if call.http else None
        if usage is None:
            return self._estimated(call, number, "ok", None, "", model, att)
        return AttemptRecord(number=number, status="ok", usage=usage,
                             model=pick_model(self.catalog, self.provider, model, call.model),
                             http_status=att.http_status if att else None,
                             provider_request_id=att.provider_request_id if att else None)

    def stream_end(self, call: _Call, state: _StreamState,
                   exc: BaseException | None) -> AttemptRecord:
        """The record of a streamed attempt once it ended (finished, cut, failed)."""
        number = max(len(call.http), 1)
        att = call.http[-1] if call.http else None
        status = "ok" if exc is None else _error_status(exc)
        err = type(exc).__name__ if exc is not None and status != "cancelled" else None
        if state.final is not None:
            return AttemptRecord(number=number, status=status, usage=state.final,
                                 model=pick_model(self.catalog, self.provider, state.model,
                                                  call.model),
                                 http_status=att.http_status if att else None,
                                 provider_request_id=att.provider_request_id if att else None,
                                 error=err)
        tier = None
        if state.tier is not None:
            ours, raw = service_tier(state.tier)
            tier = CallUsage(0, 0, service_tier=ours, provider_service_tier=raw)
        return self._estimated(call, number, status, state.partial, "".join(state.text),
                               state.model, att, tier=tier, error=err)

    def prepare(self, call: _Call, rec: AttemptRecord) -> tuple[dict[str, Any], MeteredAttempt]:
        """The record() arguments and the caller's view of one attempt (priced offline)."""
        now = self.clock()
        event_id = str(uuid.uuid4())
        cost: Decimal | None
        try:
            cost = price(self.catalog, self.provider, rec.model, rec.usage, now)
        except Exception as exc:  # noqa: BLE001 - the ledger prices (or dead-letters) it
            cost = None
            self._fail(call, f"could not price {rec.model!r}: {exc}", exc)
        fields = event_fields(rec, request_id=call.meter.request_id, api=call.api,
                              stream=call.stream, run=call.run, base=self.fields, now=now,
                              event_id=event_id)
        kwargs = {"tenant_id": self.tenant, "provider": self.provider, "model": rec.model,
                  **fields}
        return kwargs, MeteredAttempt(
            number=rec.number, status=rec.status, event_id=event_id, cost=cost,
            estimated=rec.estimated, input_tokens=rec.usage.input_tokens,
            output_tokens=rec.usage.output_tokens, http_status=rec.http_status)

    def _fail(self, call: _Call, message: str, exc: BaseException) -> None:
        call.meter.error = message
        log.error("tokenmeter: %s (request %s)", message, call.meter.request_id)
        if self.raise_errors:
            raise exc

    def emit(self, call: _Call, records: list[AttemptRecord]) -> None:
        """Record attempts with a blocking producer."""
        for rec in records:
            kwargs, seen = self.prepare(call, rec)
            try:
                self.producer.record(**kwargs)
            except Exception as exc:  # noqa: BLE001 - the caller's call must not fail for it
                self._fail(call, f"could not record attempt {rec.number}: {exc}", exc)
            call.meter.attempts.append(seen)

    async def aemit(self, call: _Call, records: list[AttemptRecord]) -> None:
        """Record attempts with an asyncio producer (or a blocking one)."""
        for rec in records:
            kwargs, seen = self.prepare(call, rec)
            try:
                result = self.producer.record(**kwargs)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - the caller's call must not fail for it
                self._fail(call, f"could not record attempt {rec.number}: {exc}", exc)
            call.meter.attempts.append(seen)


def _attach(obj: Any, meter: CallMeter) -> None:
    try:
        # object.__setattr__: pydantic response models keep it out of their dumps
        object.__setattr__(obj, "tokenmeter", meter)
    except (AttributeError, TypeError):
        pass


def _response_usage(api: str, response: Any) -> CallUsage | None:
    usage = _get(response, "usage")
    if api == "messages":
        return anthropic_call_usage(usage)
    if api == "responses":
        return openai_responses_usage(usage, _get(response, "service_tier"))
    return openai_chat_usage(usage, _get(response, "service_tier"))


def _observe(inner: Any, state: _StreamState) -> Iterator[Any]:
    for item in inner:
        if not state.observe(item):
            yield item


class MeteredStream:
    """A provider stream that records its usage when it ends (iterate it in one loop).

    Breaking out of the loop, ``close()`` or leaving ``with`` ends it: the connection is
    closed (the provider stops generating) and what was received is recorded.
    """

    def __init__(self, inner: Any, call: _Call, meterer: _Meterer) -> None:
        self._inner = inner
        self._call = call
        self._meterer = meterer
        self._state = _StreamState(call.api, call.hide_usage_chunk)
        # a free function, not a method: a generator holding self would make a reference
        # cycle, and __del__ (recording a dropped stream) would wait for the cyclic GC
        self._gen = _observe(inner, self._state)
        self.tokenmeter = call.meter

    def _finish(self, exc: BaseException | None) -> None:
        if self._call.meter.done:
            return
        self._call.meter.done = True
        self._meterer.emit(self._call, [self._meterer.stream_end(self._call, self._state, exc)])

    def __next__(self) -> Any:
        try:
            return next(self._gen)
        except StopIteration:
            self._finish(None)
            raise
        except BaseException as exc:
            self._finish(exc)
            raise

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                try:
                    item = next(self._gen)
                except StopIteration:
                    self._finish(None)
                    return
                yield item
        except BaseException as exc:  # GeneratorExit when the caller broke out of the loop
            self._close_inner()
            self._finish(exc)
            raise

    def _close_inner(self) -> None:
        close = getattr(self._inner, "close", None)
        if callable(close):
            close()

    def close(self) -> None:
        """End the stream now and record what it billed."""
        self._close_inner()
        self._finish(GeneratorExit() if not self._call.meter.done else None)

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # a stream dropped without being read to the end or closed was still billed
        if "_call" not in self.__dict__ or self._call.meter.done:
            return
        try:
            self._close_inner()
            self._finish(GeneratorExit())
        except Exception:  # noqa: BLE001, S110 - nothing to tell in a finalizer
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class AsyncMeteredStream:
    """The asyncio twin of MeteredStream (use ``async with`` or read it to the end)."""

    def __init__(self, inner: Any, call: _Call, meterer: _Meterer) -> None:
        self._inner = inner
        self._call = call
        self._meterer = meterer
        self._state = _StreamState(call.api, call.hide_usage_chunk)
        self.tokenmeter = call.meter

    async def _finish(self, exc: BaseException | None) -> None:
        if self._call.meter.done:
            return
        self._call.meter.done = True
        await self._meterer.aemit(self._call,
                                  [self._meterer.stream_end(self._call, self._state, exc)])

    def __aiter__(self) -> AsyncMeteredStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                item = await self._inner.__anext__()
            except StopAsyncIteration:
                await self._finish(None)
                raise
            except BaseException as exc:
                await self._finish(exc)
                raise
            if not self._state.observe(item):
                return item

    async def close(self) -> None:
        """End the stream now and record what it billed."""
        close = getattr(self._inner, "close", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result
        await self._finish(GeneratorExit())

    async def __aenter__(self) -> AsyncMeteredStream:
        return self

    def __del__(self) -> None:
        # dropped unfinished (``break`` out of ``async for``): record on the running loop
        if "_call" not in self.__dict__ or self._call.meter.done:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.error("tokenmeter: stream of request %s dropped outside its event loop; "
                      "not recorded (use `async with`)", self._call.meter.request_id)
            return
        task = loop.create_task(self.close())
        _PENDING.add(task)  # a task only weakly referenced by the loop could be collected
        task.add_done_callback(_PENDING.discard)

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


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
                                            _get(result, "model"))])
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
                                                   _get(result, "model"))])
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
