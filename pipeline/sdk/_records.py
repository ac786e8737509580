"""What ``instrument`` records and hands back: attempt records, event fields, CallMeter.

Plain data and the run context (``meter_run``), no I/O: the ``_Meterer`` fills them in,
the HTTP hook and the wrappers carry the ``CallMeter`` to the caller.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.sdk._call_usage import ZERO, CallUsage


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
