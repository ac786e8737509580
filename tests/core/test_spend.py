"""Per-window lateness and the clock-bounded watermark (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.core.spend import WINDOW_SIZE, advance_watermark, is_late, open_windows, window_start

UTC = timezone.utc
GRACE = timedelta(hours=1)
WM = datetime(2026, 6, 17, 10, 20, tzinfo=UTC)  # the partition's watermark


@pytest.mark.parametrize(("ts", "expected"), [
    (WM, ("hour", "day")),
    (datetime(2026, 6, 17, 9, 0, tzinfo=UTC), ("hour", "day")),  # hour closed 20 min ago
    (datetime(2026, 6, 17, 9, 20, 1, tzinfo=UTC), ("hour", "day")),
    # the 9:00 hour closed at 10:00: past grace from 11:00; at WM still within it
    (datetime(2026, 6, 17, 8, 59, 59, tzinfo=UTC), ("day",)),  # hour 8 closed 1h20 ago
    (datetime(2026, 6, 17, 0, 0, tzinfo=UTC), ("day",)),
    (datetime(2026, 6, 16, 23, 59, tzinfo=UTC), ()),  # yesterday closed 10h20 ago
    (datetime(2026, 6, 18, 9, 0, tzinfo=UTC), ("hour", "day")),  # ahead: open
])
def test_lateness_is_judged_per_window(ts: datetime, expected: tuple) -> None:
    assert open_windows(ts, WM, GRACE) == expected
    assert is_late(ts, WM, GRACE) == ("hour" not in expected)


def test_day_within_grace_after_midnight() -> None:
    wm = datetime(2026, 6, 18, 0, 30, tzinfo=UTC)
    assert open_windows(datetime(2026, 6, 17, 23, 10, tzinfo=UTC), wm, GRACE) == ("hour", "day")
    assert open_windows(datetime(2026, 6, 17, 22, 10, tzinfo=UTC), wm, GRACE) == ("day",)
    assert open_windows(datetime(2026, 6, 17, 22, 10, tzinfo=UTC),
                        wm + timedelta(hours=1), GRACE) == ()


def test_no_watermark_everything_open() -> None:
    assert open_windows(datetime(2000, 1, 1, tzinfo=UTC), None, GRACE) == ("hour", "day")


@pytest.mark.parametrize(("wm", "ts", "now", "expected"), [
    (None, WM, WM, WM),
    (WM, WM - timedelta(hours=3), WM, WM),  # old events never move it back
    (WM, WM + timedelta(minutes=5), WM + timedelta(minutes=10), WM + timedelta(minutes=5)),
    # 23 hours ahead of the clock: the watermark stops at the clock
    (WM, WM + timedelta(hours=23), WM + timedelta(seconds=1), WM + timedelta(seconds=1)),
    (None, WM + timedelta(hours=23), WM, WM),
])
def test_watermark_never_passes_the_clock(wm, ts, now, expected) -> None:
    assert advance_watermark(wm, ts, now) == expected


@pytest.mark.parametrize("ts", [
    datetime(2026, 6, 17, 10, 20, 30, 123456, tzinfo=timezone.utc),
    datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
    datetime(2027, 1, 1, 0, 0, tzinfo=timezone.utc),
    datetime(1999, 3, 28, 1, 30, tzinfo=timezone.utc),
    # not UTC: the general path, which must agree with the UTC instant's window
    datetime(2026, 3, 8, 3, 30, tzinfo=timezone(timedelta(hours=-5))),
    datetime(2026, 6, 17, 0, 15, tzinfo=timezone(timedelta(hours=5, minutes=30))),
])
@pytest.mark.parametrize("kind", ["hour", "day"])
def test_window_start_fast_path_agrees_with_the_arithmetic(ts: datetime, kind: str) -> None:
    size = WINDOW_SIZE[kind]  # type: ignore[index]
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    expected = epoch + ((ts - epoch) // size) * size
    got = window_start(kind, ts)  # type: ignore[arg-type]
    assert got == expected
    assert got.utcoffset() == timedelta(0)
    assert got <= ts < got + size
