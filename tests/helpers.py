"""Shared test helpers: the pinned clock every test reads instead of the wall clock.

The suite never depends on when it runs. ``NOW`` is a fixed instant (override with
``TOKENMETER_TEST_NOW`` to run date-sensitive tests at a month end, a year end or a DST
change: ``make test-clocks``); worker subprocesses get the same instant as
``TOKENMETER_CLOCK_START`` and their clock runs on from it, like ``now()`` here.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

DEFAULT_NOW = "2026-06-17T10:20:30+00:00"
# the instants `make test-clocks` runs the date-sensitive tests at (UTC): just after a month
# starts (and a year), the last minutes of a year, and the US/EU DST change days
CLOCKS = (
    "2027-01-01T00:05:00+00:00",
    "2026-12-31T23:55:00+00:00",
    "2026-03-08T07:30:00+00:00",
    "2026-03-29T01:30:00+00:00",
    "2026-10-25T01:30:00+00:00",
    "2026-11-01T06:30:00+00:00",
)


def pinned_now() -> datetime:
    """The suite's fixed "now" (whole seconds, UTC)."""
    raw = (os.environ.get("TOKENMETER_TEST_NOW") or DEFAULT_NOW).replace("Z", "+00:00")
    value = datetime.fromisoformat(raw)
    if value.tzinfo is None:
        raise ValueError(f"TOKENMETER_TEST_NOW needs a timezone: {raw!r}")
    return value.astimezone(timezone.utc).replace(microsecond=0)


NOW = pinned_now()
_ORIGIN = time.monotonic()


def now() -> datetime:
    """The pinned clock, running on with real time (what a worker started with NOW reads)."""
    return NOW + timedelta(seconds=time.monotonic() - _ORIGIN)
