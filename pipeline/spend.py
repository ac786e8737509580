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
    size = WINDOW_SIZE[kind]
    return _EPOCH + ((ts - _EPOCH) // size) * size


def window_bounds(kind: WindowKind, ts: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the window of ``kind`` containing ``ts``."""
    start = window_start(kind, ts)
    return start, start + WINDOW_SIZE[kind]


def is_late(ts: datetime, watermark: datetime | None, grace: timedelta) -> bool:
    """True when the event's hour window closed more than ``grace`` before the watermark.

    The watermark is the latest event time seen on the partition. Late events are still
    priced and stored (flagged), but no longer change live windows.
    """
    if watermark is None:
        return False
    return window_start("hour", ts) + WINDOW_SIZE["hour"] + grace <= watermark
