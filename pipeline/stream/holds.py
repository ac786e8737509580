"""The Watcher that takes counted usage events out of their reservation holds.

The Processor calls it in ``stage``, under its lock, right after budgets counted the batch:
an event's spend goes in and the same amount of its hold comes out in the same locked step,
so a reservation answered in between never sees the amount twice or not at all. A hold
stays while its block's calls report (each event takes its actual amount out of it) and
ends when it is used up, when the events its holder released it after are counted, or at
its TTL. An event whose reservation_id has no hold here (ended, expired, or held by another
worker) just counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pipeline.core.budgets import BudgetBreach
from pipeline.core.events import PricedUsage
from pipeline.core.reservations import HoldBook


class HoldWatcher:
    """Spends the holds of counted events and expires holds past their TTL."""

    def __init__(self, book: HoldBook) -> None:
        self.book = book
        self.spent = 0  # events taken out of an open hold
        self.settled = 0  # holds ended by their events
        self.expired = 0

    async def observe(self, fresh: list[PricedUsage], now: datetime) -> list[BudgetBreach]:
        """Take the batch's events out of their holds; never raises a breach."""
        for p in fresh:
            if not p.reservation_id:
                continue
            after = self.book.spend(p)
            if after is not None:
                self.spent += 1
                self.settled += after.reservation_id not in self.book.holds
        if self.book.holds:
            self.expired += len(self.book.expire(now))
        return []


def hold_book_of(watchers: Iterable[Any]) -> HoldBook | None:
    """The hold book of the processor's HoldWatcher (None when reservations are not wired)."""
    for w in watchers:
        if isinstance(w, HoldWatcher):
            return w.book
    return None
