"""The ``_Meterer`` of ``instrument``: turns a call's attempts into producer events.

Decides what each attempt is billed as (reported, estimated offline, rejected), prices it
and records it with a blocking or an asyncio producer, without failing the caller's call.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.core.catalog import Catalog
from pipeline.core.tokens import TokenCounter
from pipeline.sdk._call_usage import (
    NO_TOKENS,
    CallUsage,
    _body_usage,
    _StreamState,
    estimate,
    pick_model,
    price,
    prompt_text,
    service_tier,
)
from pipeline.sdk._http_hook import _NOT_SENT, _Call, _error_status, _HttpAttempt
from pipeline.sdk._records import _RUN, AttemptRecord, CallMeter, MeteredAttempt, event_fields

log = logging.getLogger("tokenmeter.instrument")


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
