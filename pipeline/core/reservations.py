"""Reservations: amounts held against budget rooms until settled or expired (pure).

A room is (budget_id, pool, key): the whole budget or one pool of it, for one template key
value ("" for a plain budget). A room's remaining is limit - spent - held. A hold counts
only until the usage event carrying its reservation_id is counted (settle) or its TTL runs
out (expire), so over-reserving never pins a budget. Time is passed in.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from pipeline.core.decision import Decision, Request, amount
from pipeline.core.scoring import ValuePolicy
from pipeline.errors import ValidationFailed

RoomId = tuple[str, str, str]  # (budget_id, pool, key)
ZERO = Decimal(0)
# open holds per worker: beyond this a reservation is refused (memory stays bounded)
MAX_HOLDS = 100_000


@dataclass(frozen=True, slots=True)
class Hold:
    """One reservation's amounts per room, until ``expires_at``."""

    reservation_id: str
    tenant_id: str
    amounts: Mapping[RoomId, Decimal]
    expires_at: datetime


class HoldBook:
    """Open holds by reservation and their sums by room."""

    def __init__(self, max_holds: int = MAX_HOLDS) -> None:
        self.max_holds = max_holds
        self.holds: dict[str, Hold] = {}
        self._held: dict[RoomId, Decimal] = {}
        self._expiry: list[tuple[datetime, str]] = []  # a heap; settled ids are skipped

    def hold(self, reservation_id: str, tenant_id: str, amounts: Mapping[RoomId, Decimal],
             expires_at: datetime) -> Hold:
        """Hold ``amounts`` until ``expires_at`` (an id held already is replaced)."""
        self.settle(reservation_id)
        if len(self.holds) >= self.max_holds:
            raise ValidationFailed("too_many_holds", f"{len(self.holds)} reservations are "
                                   "open on this worker; settle or release some (DELETE "
                                   "/api/reservations/ID) or wait for their TTL")
        h = Hold(reservation_id, tenant_id, dict(amounts), expires_at)
        self.holds[reservation_id] = h
        for room, value in h.amounts.items():
            self._held[room] = self._held.get(room, ZERO) + value
        heapq.heappush(self._expiry, (expires_at, reservation_id))
        return h

    def settle(self, reservation_id: str) -> Hold | None:
        """Release a hold (its event was counted, or the caller released it); None when
        there is none (settled, expired, or held by another worker)."""
        h = self.holds.pop(reservation_id, None)
        if h is None:
            return None
        for room, value in h.amounts.items():
            left = self._held.get(room, ZERO) - value
            if left > ZERO:
                self._held[room] = left
            else:
                self._held.pop(room, None)
        return h

    def expire(self, now: datetime) -> list[Hold]:
        """Release every hold whose TTL ran out at ``now``."""
        out = []
        while self._expiry and self._expiry[0][0] <= now:
            at, rid = heapq.heappop(self._expiry)
            h = self.holds.get(rid)
            if h is not None and h.expires_at == at:
                self.settle(rid)
                out.append(h)
        if not self.holds:
            self._expiry.clear()  # only settled ids left in it
        return out

    def held(self, room: RoomId) -> Decimal:
        """What open holds reserve in a room."""
        return self._held.get(room, ZERO)


def ttl(requested: float | None, default_s: float, max_s: float) -> timedelta:
    """The hold's TTL: the default when none is asked for; ValidationFailed outside
    (0, max_s]."""
    if requested is None:
        return timedelta(seconds=default_s)
    if isinstance(requested, bool) or not isinstance(requested, int | float) or \
            not 0 < requested <= max_s:
        raise ValidationFailed("bad_request", f"ttl_s must be a number of seconds in "
                               f"(0, {max_s:g}], got {str(requested)[:40]!r}")
    return timedelta(seconds=requested)


def hold_amounts(d: Decision, req: Request,
                 policy: ValuePolicy | None = None) -> dict[RoomId, Decimal]:
    """What a decision holds per room: nothing for deny, the suggested model's estimate for
    downgrade, the requested model's otherwise (unchecked template rooms hold nothing:
    their key is unknown)."""
    if d.decision == "deny":
        return {}
    cost = d.suggested_cost if d.decision == "downgrade" and d.suggested_cost is not None \
        else d.estimated_cost
    return {r.ident: amount(r.metric, cost, req, policy) for r in d.rooms if r.checked}

