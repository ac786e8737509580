"""The shell's clock: wall time, or time that runs on from a set instant (tests, replays).

Pure code never reads a clock; adapters take one of these and pass ``now`` in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    """Wall-clock time in UTC."""
    return datetime.now(timezone.utc)


def running_from(start: datetime) -> Clock:
    """A clock that reads ``start`` now and advances with real (monotonic) time."""
    if start.tzinfo is None:
        raise ValueError("the clock's start needs a timezone (e.g. 2027-01-01T00:05:00Z)")
    origin = time.monotonic()

    def now() -> datetime:
        return start + timedelta(seconds=time.monotonic() - origin)

    return now


def clock_for(start: datetime | None) -> Clock:
    """The worker's clock: wall time unless ``TOKENMETER_CLOCK_START`` pins where it starts."""
    return wall_clock if start is None else running_from(start)
