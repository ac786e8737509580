"""The Watcher that settles reservation holds when their usage events are counted.

The Processor calls it in ``stage``, under its lock, right after budgets counted the batch:
an event's spend and the release of its hold change in the same locked step, so a
reservation answered in between never sees the amount twice or not at all. An event whose
reservation_id has no hold here (expired, released, or held by another worker) just counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pipeline.core.budgets import BudgetBreach
from pipeline.core.events import PricedUsage
from pipeline.core.reservations import HoldBook


class HoldWatcher:
    """Settles the holds of counted events and expires holds past their TTL."""

    def __init__(self, book: HoldBook) -> None:
        self.book = book
        self.settled = 0
        self.expired = 0

    async def observe(self, fresh: list[PricedUsage], now: datetime) -> list[BudgetBreach]:
        """Release the holds the batch's events settle; never raises a breach."""
        for p in fresh:
            if p.reservation_id and self.book.settle(p.reservation_id) is not None:
                self.settled += 1
        if self.book.holds:
            self.expired += len(self.book.expire(now))
        return []


def hold_book_of(watchers: Iterable[Any]) -> HoldBook | None:
    """The hold book of the processor's HoldWatcher (None when reservations are not wired)."""
    for w in watchers:
        if isinstance(w, HoldWatcher):
            return w.book
    return None
