"""Decode raw messages and validate usage events into stable reason codes (pure)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import ValidationError

from pipeline.core.events import (
    LEGACY_TTL_ATTRIBUTE,
    MAX_BATCH_EVENTS,
    MAX_MESSAGE_BYTES,
    MAX_TOKENS,
    UsageEvent,
)
from pipeline.errors import ValidationFailed

# OpenTelemetry GenAI semantic-convention names accepted in place of ours. The conventions
# define no split of cache writes by lifetime (only gen_ai.usage.cache_creation.input_tokens);
# the two ephemeral_* names are what several instrumentations emit for Anthropic's split
# (not standardised): accepted because they exist, with Anthropic's meaning.
OTEL_ALIASES: dict[str, str] = {
    "gen_ai.usage.input_tokens": "input_tokens",
    "gen_ai.usage.output_tokens": "output_tokens",
    "gen_ai.usage.cache_read.input_tokens": "cache_read_input_tokens",
    "gen_ai.usage.cache_creation.input_tokens": "cache_creation_input_tokens",
    "gen_ai.usage.cache_creation.ephemeral_5m_input_tokens": "cache_creation_5m_input_tokens",
    "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": "cache_creation_1h_input_tokens",
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
        "cache_creation_1h_input_tokens",
        "output_tokens",
        "reasoning_output_tokens",
    }
)
TEXT_FIELDS = ("input_text", "output_text")
# Anthropic's usage.cache_creation object: lifetime -> its count of writes
ANTHROPIC_SPLIT = {"ephemeral_5m_input_tokens": "5-minute",
                   "ephemeral_1h_input_tokens": "1-hour"}
# input-only names of the split; they are mapped onto cache_creation_input_tokens (all writes)
# and cache_creation_1h_input_tokens (the 1-hour part) and never stored
SPLIT_INPUTS = ("cache_creation", "cache_creation_5m_input_tokens")
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
    "unpriced",
    "out_of_range",
    "internal_error",
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


def check_unicode(raw: bytes | str, obj: Any) -> None:
    """Raise ValueError when the decoded JSON holds a lone UTF-16 surrogate (``"\\ud800"``).

    Legal JSON, but no UTF-8 text: ClickHouse, Kafka and JSON output all refuse it later,
    which stopped a whole batch. Only a message that spells a surrogate escape (or a str
    holding one) is walked.
    """
    if isinstance(raw, str):
        raw.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
        spelled = "\\ud" in raw or "\\uD" in raw
    else:
        spelled = b"\\ud" in raw or b"\\uD" in raw
    if spelled:
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone UTF-16 surrogate (an unpaired \\ud800-"
                             "\\udfff escape): not Unicode text") from None


def decode_message(raw: bytes | str) -> list[Any] | Rejected:
    """Parse one message value into a list of event candidates, or reject it whole."""
    size = len(raw)
    if size > MAX_MESSAGE_BYTES:
        return Rejected("too_large", f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        obj = json.loads(text, parse_constant=_reject_constant,
                         object_pairs_hook=_no_duplicate_keys)
        check_unicode(raw, obj)
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
    if obj.keys().isdisjoint(OTEL_ALIASES):  # the common case, in C
        return obj
    out = dict(obj)
    for alias, name in OTEL_ALIASES.items():
        if alias in out:
            value = out.pop(alias)
            out.setdefault(name, value)
    return out


def _split_count(value: Any, where: str) -> int | None:
    """A token count of the cache-write split (None when absent), checked as pydantic would."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationFailed("schema", f"{where}: a whole number of tokens expected, got "
                               f"{_kind(value)}")
    if value < 0:
        raise ValidationFailed("negative_tokens", f"{where}: {value} is negative")
    if value > MAX_TOKENS:
        raise ValidationFailed("too_large", f"{where}: {value} exceeds {MAX_TOKENS}")
    return value


def _inconsistent(what: str, a: int, b: int, fix: str) -> ValidationFailed:
    return ValidationFailed("inconsistent_counts", f"{what}: {a} vs {b}; {fix}")


def cache_write_split(obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Anthropic's ``cache_creation`` object and ``cache_creation_5m_input_tokens`` mapped
    onto ``cache_creation_input_tokens`` (all writes) and ``cache_creation_1h_input_tokens``;
    with whether any lifetime count was given (an explicit split).

    All writes = 5-minute + 1-hour writes when ``cache_creation_input_tokens`` is absent;
    when present it must equal that sum. A lifetime given twice (nested and flat) must agree.
    """
    if obj.keys().isdisjoint(SPLIT_INPUTS):
        return obj, obj.get("cache_creation_1h_input_tokens") is not None
    out = dict(obj)
    nested = out.pop("cache_creation", None)
    five = _split_count(out.pop("cache_creation_5m_input_tokens", None),
                        "cache_creation_5m_input_tokens")
    one = _split_count(out.get("cache_creation_1h_input_tokens"),
                       "cache_creation_1h_input_tokens")
    if nested is not None:
        if not isinstance(nested, dict):
            raise ValidationFailed("schema", "cache_creation: an object of ephemeral_5m_input_"
                                   f"tokens / ephemeral_1h_input_tokens expected, got "
                                   f"{_kind(nested)}")
        unknown = sorted(set(nested) - set(ANTHROPIC_SPLIT))
        if unknown:
            # a lifetime we cannot price must not vanish from the bill: refuse it
            raise ValidationFailed(
                "schema", f"cache_creation.{unknown[0][:64]} is not a cache lifetime tokenmeter "
                "prices (known: ephemeral_5m_input_tokens, ephemeral_1h_input_tokens)")
        n5 = _split_count(nested.get("ephemeral_5m_input_tokens"),
                          "cache_creation.ephemeral_5m_input_tokens")
        n1 = _split_count(nested.get("ephemeral_1h_input_tokens"),
                          "cache_creation.ephemeral_1h_input_tokens")
        for mine, theirs, name in ((five, n5, "5m"), (one, n1, "1h")):
            if mine is not None and theirs is not None and mine != theirs:
                raise _inconsistent(f"cache_creation_{name}_input_tokens and cache_creation."
                                    f"ephemeral_{name}_input_tokens differ", mine, theirs,
                                    "send the split once")
        five = five if five is not None else n5
        one = one if one is not None else n1
    if one is not None:
        out["cache_creation_1h_input_tokens"] = one
    if five is None and one is None:
        return out, False
    split_total = (five or 0) + (one or 0)
    total = _split_count(out.get("cache_creation_input_tokens"), "cache_creation_input_tokens")
    if total is None:
        out["cache_creation_input_tokens"] = split_total
    elif five is not None and total != split_total:
        raise _inconsistent(
            f"cache_creation_input_tokens is not the 5-minute ({five}) plus the 1-hour "
            f"({one or 0}) cache writes", total, split_total,
            "cache_creation_input_tokens counts every write (or leave it out)")
    return out, True


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


_VALIDATE: Callable[[Any], UsageEvent] = UsageEvent.__pydantic_validator__.validate_python


def validate_event(obj: Any, *, now: datetime) -> UsageEvent:
    """Validate one decoded object into a UsageEvent or raise ValidationFailed."""
    if not isinstance(obj, dict):
        raise ValidationFailed("schema", f"a usage event must be a JSON object, got {_kind(obj)}")
    obj = _apply_aliases(obj)
    obj, explicit_split = cache_write_split(obj)
    ts = obj.get("timestamp")
    if ts is not None and not isinstance(ts, str):
        raise ValidationFailed("invalid_timestamp", "timestamp must be an RFC 3339 string")
    try:
        # the model's validator itself: model_validate adds only a wrapper call per event
        event = _VALIDATE(obj)
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
    if event.cache_creation_1h_input_tokens > event.cache_creation_input_tokens:
        raise ValidationFailed(
            "inconsistent_counts",
            f"cache_creation_1h_input_tokens ({event.cache_creation_1h_input_tokens}) exceed "
            f"cache_creation_input_tokens ({event.cache_creation_input_tokens}); the latter "
            "counts every cache write, 5-minute and 1-hour")
    if (explicit_split and event.attributes.get(LEGACY_TTL_ATTRIBUTE) == "1h"
            and event.cache_creation_input_tokens and not event.cache_creation_1h_input_tokens):
        # the ledger could not tell this from "no split given" (legacy: all writes 1-hour)
        raise ValidationFailed(
            "inconsistent_counts",
            "attributes.cache_ttl is 1h (legacy: every write is a 1-hour write) but the explicit "
            "split has no 1-hour writes; drop the cache_ttl attribute")
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
    # a str payload may hold a lone surrogate: stored and sent as UTF-8, so escape it
    rendered = rendered.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(rendered) > cap:
        rendered = rendered[:cap] + f"...<truncated {len(rendered) - cap} chars>"
    return rendered
