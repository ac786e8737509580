"""Exact event_id deduplication with bounded memory.

Recent ids live in memory, bucketed by event-time day. When the entry cap is reached the
oldest day buckets are dropped and ``watermark`` moves past them: an id whose event time is
below the watermark may have been seen and must be checked against the ledger (ClickHouse)
instead. Everything at or above the watermark is answered from memory, exactly.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta


class DedupIndex:
    """The ids seen on one partition, for event times at or after ``watermark``."""

    def __init__(self, max_ids: int = 2_000_000, horizon: timedelta = timedelta(days=7),
                 watermark: datetime | None = None) -> None:
        self.max_ids = max_ids
        self.horizon = horizon
        self.watermark = watermark
        self._days: dict[date, set[str]] = {}
        self._all: set[str] = set()  # one lookup per event on the hot path

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._all

    def covers(self, ts: datetime) -> bool:
        """True when memory alone answers whether an id with event time ``ts`` was seen."""
        return self.watermark is None or ts >= self.watermark

    def add(self, event_id: str, ts: datetime) -> None:
        """Remember an id."""
        if event_id in self._all:
            return
        day = ts.date()
        ids = self._days.get(day)
        if ids is None:
            ids = self._days[day] = set()
        ids.add(event_id)
        self._all.add(event_id)

    def expire(self, now_event_time: datetime) -> None:
        """Drop days beyond the horizon, and oldest days while over the entry cap."""
        oldest_kept = (now_event_time - self.horizon).date()
        for day in sorted(self._days):
            if day >= oldest_kept and len(self._all) <= self.max_ids:
                break
            self._all -= self._days.pop(day)
            cut = datetime.combine(day + timedelta(days=1), datetime.min.time(),
                                   tzinfo=now_event_time.tzinfo)
            if self.watermark is None or cut > self.watermark:
                self.watermark = cut
