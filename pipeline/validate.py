"""Decode raw messages and validate usage events into stable reason codes (pure)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import ValidationError

from pipeline.errors import ValidationFailed
from pipeline.events import MAX_BATCH_EVENTS, MAX_MESSAGE_BYTES, UsageEvent

# OpenTelemetry GenAI semantic-convention names accepted in place of ours.
OTEL_ALIASES: dict[str, str] = {
    "gen_ai.usage.input_tokens": "input_tokens",
    "gen_ai.usage.output_tokens": "output_tokens",
    "gen_ai.usage.cache_read.input_tokens": "cache_read_input_tokens",
    "gen_ai.usage.cache_creation.input_tokens": "cache_creation_input_tokens",
    "gen_ai.usage.reasoning.output_tokens": "reasoning_output_tokens",
    "gen_ai.request.model": "model",
    "gen_ai.provider.name": "provider",
    "gen_ai.system": "provider",
}

TOKEN_FIELDS = frozenset(
    {
        "input_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "output_tokens",
        "reasoning_output_tokens",
    }
)
TEXT_FIELDS = ("input_text", "output_text")
EARLIEST_EVENT = datetime(2020, 1, 1, tzinfo=timezone.utc)
MAX_FUTURE_SKEW = timedelta(days=1)

REASON_CODES = (
    "invalid_json",
    "schema",
    "invalid_timestamp",
    "negative_tokens",
    "inconsistent_counts",
    "missing_counts",
    "unknown_model",
    "too_large",
)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message or envelope item that failed validation."""

    reason_code: str
    detail: str
    item: Any = None
    index: int | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # a billing record with two "input_tokens" is ambiguous: refuse it, never pick one
    obj = dict(pairs)
    if len(obj) != len(pairs):
        counts = Counter(k for k, _ in pairs)
        dupes = sorted(k for k, n in counts.items() if n > 1)
        raise ValueError(f"duplicate key(s) {', '.join(map(repr, dupes))[:200]}")
    return obj


def decode_message(raw: bytes | str) -> list[Any] | Rejected:
    """Parse one message value into a list of event candidates, or reject it whole."""
    size = len(raw)
    if size > MAX_MESSAGE_BYTES:
        return Rejected("too_large", f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        obj = json.loads(text, parse_constant=_reject_constant,
                         object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        return Rejected("invalid_json", "JSON nested too deeply")
    except (UnicodeDecodeError, ValueError) as exc:
        return Rejected("invalid_json", f"not valid UTF-8 JSON: {exc}"[:300])
    if isinstance(obj, list):
        if not obj:
            return Rejected("schema", "batch envelope is empty")
        if len(obj) > MAX_BATCH_EVENTS:
            return Rejected(
                "too_large", f"batch has {len(obj)} events; the limit is {MAX_BATCH_EVENTS}"
            )
        return obj
    return [obj]


def _apply_aliases(obj: dict[str, Any]) -> dict[str, Any]:
    for alias in OTEL_ALIASES:
        if alias in obj:
            break
    else:
        return obj
    out = dict(obj)
    for alias, name in OTEL_ALIASES.items():
        if alias in out:
            value = out.pop(alias)
            out.setdefault(name, value)
    return out


def _reason_for(err: ValidationError) -> ValidationFailed:
    first = err.errors(include_url=False)[0]
    loc = first["loc"]
    field = str(loc[0]) if loc else ""
    kind = first["type"]
    where = ".".join(str(p) for p in loc) or "event"
    msg = f"{where}: {first['msg']}"
    if kind == "missing":
        return ValidationFailed("schema", msg)
    if field == "timestamp":
        return ValidationFailed("invalid_timestamp", msg + " (RFC 3339 with offset expected)")
    if field in TOKEN_FIELDS and kind == "greater_than_equal":
        return ValidationFailed("negative_tokens", msg)
    if kind in ("less_than_equal", "string_too_long", "too_long"):
        return ValidationFailed("too_large", msg)
    return ValidationFailed("schema", msg)


def validate_event(obj: Any, *, now: datetime) -> UsageEvent:
    """Validate one decoded object into a UsageEvent or raise ValidationFailed."""
    if not isinstance(obj, dict):
        raise ValidationFailed("schema", f"a usage event must be a JSON object, got {_kind(obj)}")
    obj = _apply_aliases(obj)
    ts = obj.get("timestamp")
    if ts is not None and not isinstance(ts, str):
        raise ValidationFailed("invalid_timestamp", "timestamp must be an RFC 3339 string")
    try:
        event = UsageEvent.model_validate(obj)
    except ValidationError as exc:
        raise _reason_for(exc) from None
    if event.timestamp > now + MAX_FUTURE_SKEW:
        raise ValidationFailed(
            "invalid_timestamp", f"timestamp {event.timestamp.isoformat()} is in the future"
        )
    if event.timestamp < EARLIEST_EVENT:
        raise ValidationFailed(
            "invalid_timestamp", f"timestamp {event.timestamp.isoformat()} is before 2020"
        )
    if event.input_tokens is None and event.input_text is None:
        raise ValidationFailed("missing_counts", "neither input_tokens nor input_text given")
    if event.output_tokens is None and event.output_text is None:
        raise ValidationFailed("missing_counts", "neither output_tokens nor output_text given")
    if event.input_tokens is not None:
        cached = event.cache_read_input_tokens + event.cache_creation_input_tokens
        if cached > event.input_tokens:
            raise ValidationFailed(
                "inconsistent_counts",
                f"cache read + cache write ({cached}) exceed input_tokens "
                f"({event.input_tokens}); input_tokens includes cached tokens",
            )
    if event.output_tokens is not None and event.reasoning_output_tokens > event.output_tokens:
        raise ValidationFailed(
            "inconsistent_counts",
            f"reasoning_output_tokens ({event.reasoning_output_tokens}) exceed output_tokens "
            f"({event.output_tokens}); output_tokens includes reasoning",
        )
    return event


def _kind(obj: Any) -> str:
    return {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(obj), type(obj).__name__
    )


def strip_text(obj: Any) -> Any:
    """The payload with text fields removed: text is never stored, logged or forwarded."""
    if isinstance(obj, dict):
        return {k: ("<removed>" if k in TEXT_FIELDS else v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [strip_text(x) for x in obj]
    return obj


def safe_raw(obj: Any, raw: bytes | str | None = None, cap: int = 16 * 1024) -> str:
    """A size-capped, text-free rendering of a rejected payload for the DLQ."""
    if obj is not None:
        try:
            rendered = json.dumps(strip_text(obj), ensure_ascii=False, default=str)
        except (ValueError, RecursionError):
            rendered = repr(obj)
    elif raw is not None:
        rendered = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if '"input_text"' in rendered or '"output_text"' in rendered:
            # undecodable payload that mentions text fields: keep nothing of it
            rendered = f"<{len(rendered)} chars withheld: may contain input/output text>"
    else:
        rendered = ""
    rendered = rendered.replace("\x00", "\\u0000")
    if len(rendered) > cap:
        rendered = rendered[:cap] + f"...<truncated {len(rendered) - cap} chars>"
    return rendered
