"""Outcome messages: the quality signal a producer reports for one metered call (pure).

An outcome names the usage event it judges (``event_id``, ``tenant_id``) and carries at least
one of three signals: ``success`` (did the call do its job), ``score`` (a grade in [0, 1]) and
``feedback`` (an end user's verdict). It never carries prompt or answer text. Validation turns
every refusal into a stable reason code, like usage events (docs/contracts.md, "Outcome").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from pipeline.core.events import MAX_ID_CHARS, DeadLetter, Id, UtcDatetime
from pipeline.core.validate import (
    EARLIEST_EVENT,
    MAX_FUTURE_SKEW,
    Rejected,
    decode_message,
    safe_raw,
)
from pipeline.errors import ValidationFailed

MAX_SOURCE_CHARS = 64
# stable: dead letters of the outcomes topic carry one of these (docs/contracts.md)
OUTCOME_REASON_CODES = ("invalid_json", "schema", "invalid_timestamp", "too_large",
                        "no_signal", "out_of_range", "internal_error")
SIGNALS = ("success", "score", "feedback")
Source = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SOURCE_CHARS,
                                          pattern=r"^[A-Za-z0-9_.:@/-]+$")]


class Feedback(StrEnum):
    """An end user's verdict on an answer (thumbs up/down, or a neutral dismissal)."""

    positive = "positive"
    negative = "negative"
    neutral = "neutral"


class Outcome(BaseModel):
    """The quality of one metered call, as its producer (or a grader, or a user) judged it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Id
    tenant_id: Id
    timestamp: UtcDatetime = Field(description="when the outcome was judged (RFC 3339)")
    success: bool | None = Field(default=None, strict=True)
    score: float | None = Field(default=None, strict=True,
                                description="a grade from 0 (worst) to 1 (best)")
    feedback: Feedback | None = None
    source: Source = Field(default="producer",
                           description="who judged: one outcome per (event, source) is kept")


def _reason_for(err: ValidationError) -> ValidationFailed:
    first = err.errors(include_url=False)[0]
    loc = first["loc"]
    field = str(loc[0]) if loc else ""
    msg = f"{'.'.join(str(p) for p in loc) or 'outcome'}: {first['msg']}"
    if first["type"] == "missing":
        return ValidationFailed("schema", msg)
    if field == "timestamp":
        return ValidationFailed("invalid_timestamp", msg + " (RFC 3339 with offset expected)")
    if first["type"] in ("string_too_long", "too_long"):
        return ValidationFailed("too_large", msg)
    return ValidationFailed("schema", msg)


def validate_outcome(obj: Any, *, now: datetime) -> Outcome:
    """Validate one decoded object into an Outcome or raise ValidationFailed."""
    if not isinstance(obj, dict):
        raise ValidationFailed("schema", "an outcome must be a JSON object")
    ts = obj.get("timestamp")
    if ts is not None and not isinstance(ts, str):
        raise ValidationFailed("invalid_timestamp", "timestamp must be an RFC 3339 string")
    score = obj.get("score")
    if isinstance(score, bool):  # JSON true is not a grade
        raise ValidationFailed("schema", "score: a number from 0 to 1, not a boolean")
    try:
        outcome = Outcome.model_validate(obj)
    except ValidationError as exc:
        raise _reason_for(exc) from None
    if all(getattr(outcome, s) is None for s in SIGNALS):
        raise ValidationFailed("no_signal", "an outcome needs success, score or feedback "
                                            "(at least one, not null)")
    if outcome.score is not None and not (math.isfinite(outcome.score)
                                          and 0.0 <= outcome.score <= 1.0):
        raise ValidationFailed("out_of_range", f"score {outcome.score} is outside [0, 1]; "
                                               "scale grades to 0 (worst) .. 1 (best)")
    if outcome.timestamp > now + MAX_FUTURE_SKEW:
        raise ValidationFailed("invalid_timestamp",
                               f"timestamp {outcome.timestamp.isoformat()} is in the future")
    if outcome.timestamp < EARLIEST_EVENT:
        raise ValidationFailed("invalid_timestamp",
                               f"timestamp {outcome.timestamp.isoformat()} is before 2020")
    return outcome


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message came from (what its dead letters name)."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Sorted:
    """A batch of outcome messages split into good outcomes and dead letters."""

    outcomes: list[Outcome]
    dead: list[tuple[DeadLetter, int]]  # (dead letter, index of the item in its message)


def _scalar(value: Any) -> Any:
    """A known field's value as kept: a capped string, a number, a boolean or null."""
    if isinstance(value, str):
        return value[:MAX_ID_CHARS]
    if value is None or isinstance(value, bool | int | float):
        return value
    return "<removed>"


def _redacted(item: Any, raw: bytes | None) -> str:
    """What a dead letter keeps of a refused outcome: its known fields, no free text.

    Outcomes carry no text, so anything else (an unknown field, a non-object item, a
    message that is not JSON) may be a prompt or an answer sent by mistake: withheld.
    """
    if isinstance(item, dict):
        return safe_raw({k: _scalar(v) if k in Outcome.model_fields else "<removed>"
                         for k, v in item.items()})
    if item is not None:
        return f"<{type(item).__name__} withheld: an outcome is a JSON object>"
    return f"<{len(raw or b'')} bytes withheld: not a JSON outcome>"


def _dead(reason: str, detail: str, item: Any, raw: bytes | None, where: Origin,
          received_at: datetime) -> DeadLetter:
    ident = item if isinstance(item, dict) else {}
    event_id, tenant_id = ident.get("event_id"), ident.get("tenant_id")
    return DeadLetter(reason_code=reason, detail=detail[:1000], raw=_redacted(item, raw),
                      source_topic=where.topic, source_partition=where.partition,
                      source_offset=where.offset,
                      event_id=event_id if isinstance(event_id, str) else None,
                      tenant_id=tenant_id if isinstance(tenant_id, str) else None,
                      received_at=received_at)


def sort_messages(messages: list[tuple[bytes, Origin]], now: datetime) -> Sorted:
    """Decode and validate outcome messages (one object or a JSON array each)."""
    good: list[Outcome] = []
    dead: list[tuple[DeadLetter, int]] = []
    for raw, where in messages:
        items = decode_message(raw)
        if isinstance(items, Rejected):
            dead.append((_dead(items.reason_code, items.detail, None, raw, where, now), 0))
            continue
        for index, item in enumerate(items):
            try:
                good.append(validate_outcome(item, now=now))
            except ValidationFailed as exc:
                dead.append((_dead(exc.reason_code, exc.detail, item, None, where, now), index))
            except MemoryError:
                raise
            except Exception as exc:  # one item must never stop the batch (a defect)
                dead.append((_dead("internal_error", f"{type(exc).__name__}: {exc}; a "
                                   "tokenmeter defect: report it", item, None, where, now),
                             index))
    return Sorted(good, dead)


OUTCOME_COLUMNS = ("tenant_id", "event_id", "source", "timestamp", "success", "score",
                   "feedback", "received_at")


def outcome_row(o: Outcome, received_at: datetime) -> list[Any]:
    """One usage_outcomes row, in OUTCOME_COLUMNS order."""
    return [o.tenant_id, o.event_id, o.source, o.timestamp, o.success, o.score,
            o.feedback.value if o.feedback is not None else None, received_at]
