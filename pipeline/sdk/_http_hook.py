"""The HTTP side of ``instrument``: every attempt of the SDK's retry loop, and its errors.

Hooks the ``send`` of the client's own HTTP client, attributes each attempt to the call in
flight (a context variable), and classifies transport errors (never sent, timeout,
cancelled) so a failed attempt is billed as the provider would bill it.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field
from typing import Any

from pipeline.sdk._records import CallMeter


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
