"""Spend aggregation over event-time windows (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

WindowKind = Literal["hour", "day"]
WINDOWS: tuple[WindowKind, ...] = ("hour", "day")
WINDOW_SIZE: dict[WindowKind, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(slots=True)
class SpendTotals:
    """Running totals of one tenant in one window."""

    cost: Decimal = Decimal(0)
    saved_cost: Decimal = Decimal(0)
    input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_output_tokens: int = 0
    value_units: Decimal = Decimal(0)
    events: int = 0

    def add_row(self, cost: Decimal, saved: Decimal, tokens: tuple[int, int, int, int, int],
                value_units: Decimal, events: int = 1) -> None:
        """Add one event (or a pre-summed group of ``events``)."""
        self.cost += cost
        self.saved_cost += saved
        self.input_tokens += tokens[0]
        self.cache_read_input_tokens += tokens[1]
        self.cache_creation_input_tokens += tokens[2]
        self.output_tokens += tokens[3]
        self.reasoning_output_tokens += tokens[4]
        self.value_units += value_units
        self.events += events

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def as_json(self) -> dict[str, Any]:
        """JSON-safe rendering; money as decimal strings."""
        return {
            "total_cost": format(self.cost, "f"),
            "saved_cost": format(self.saved_cost, "f"),
            "tokens": self.tokens,
            "input_tokens": self.input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_output_tokens": self.reasoning_output_tokens,
            "value_units": format(self.value_units, "f"),
            "events": self.events,
        }


def window_start(kind: WindowKind, ts: datetime) -> datetime:
    """Start of the tumbling UTC window of ``kind`` containing ``ts``."""
    if ts.tzinfo is timezone.utc:  # every metered timestamp: field resets, no arithmetic
        if kind == "hour":
            return ts.replace(minute=0, second=0, microsecond=0)
        if kind == "day":
            return ts.replace(hour=0, minute=0, second=0, microsecond=0)
    size = WINDOW_SIZE[kind]
    return _EPOCH + ((ts - _EPOCH) // size) * size


def window_bounds(kind: WindowKind, ts: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the window of ``kind`` containing ``ts``."""
    start = window_start(kind, ts)
    return start, start + WINDOW_SIZE[kind]


def open_windows(ts: datetime, watermark: datetime | None,
                 grace: timedelta) -> tuple[WindowKind, ...]:
    """The window kinds whose window of ``ts`` is still open, or closed for less than ``grace``.

    Lateness is judged per window: an event two hours old has missed its hour window but
    still counts in the day window that is open.
    """
    if watermark is None:
        return WINDOWS
    return tuple(k for k in WINDOWS if window_start(k, ts) + WINDOW_SIZE[k] + grace > watermark)


def open_window_starts(ts: datetime, watermark: datetime | None,
                       grace: timedelta) -> dict[WindowKind, datetime]:
    """The windows of ``ts`` still open (as ``open_windows`` judges), kind -> window start.

    One call per metered event: each start is computed once and used as the window's key.
    """
    starts = {k: window_start(k, ts) for k in WINDOWS}
    if watermark is None:
        return starts
    return {k: s for k, s in starts.items() if s + WINDOW_SIZE[k] + grace > watermark}


def is_late(ts: datetime, watermark: datetime | None, grace: timedelta) -> bool:
    """True when the event's hour window closed more than ``grace`` before the watermark.

    Late events are priced, stored (flagged ``late``) and counted in every window of theirs
    that is still open (see ``open_windows``).
    """
    return "hour" not in open_windows(ts, watermark, grace)


def advance_watermark(watermark: datetime | None, ts: datetime, now: datetime) -> datetime:
    """The partition's watermark after an event at ``ts``: the latest event time seen, but
    never ahead of the worker's clock, so one event stamped far ahead cannot make every
    later event on the partition late."""
    mark = min(ts, now)
    return mark if watermark is None or mark > watermark else watermark
