"""Reservations: amounts held against budget rooms until used, released or expired (pure).

A room is (budget_id, pool, key): the whole budget or one pool of it, for one template key
value ("" for a plain budget). A room's remaining is limit - spent - held. Each counted usage
event carrying a hold's reservation_id takes its actual amount out of the hold (``spend``),
so a block of several calls stays held until its last call: the hold ends when its estimate
is used up, when the holder releases it (at once, or once the events it says it recorded
are counted), or when its TTL runs out, so over-reserving never pins a budget. Time is
passed in.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

from pipeline.core.budgets import Metric, measure
from pipeline.core.decision import Decision, Request, amount
from pipeline.core.events import PricedUsage
from pipeline.core.scoring import ValuePolicy
from pipeline.errors import ValidationFailed

RoomId = tuple[str, str, str]  # (budget_id, pool, key)
ZERO = Decimal(0)
# open holds per worker: beyond this a reservation is refused (memory stays bounded)
MAX_HOLDS = 100_000
# the expiry heap keeps stale entries (used or released holds) until their TTL; past
# 2 x open holds + this many it is rebuilt from the open holds (amortised O(1) per hold)
HEAP_SLACK = 1024


@dataclass(frozen=True, slots=True)
class Hold:
    """One reservation's remaining amounts per room, until ``expires_at``."""

    reservation_id: str
    tenant_id: str
    amounts: Mapping[RoomId, Decimal]
    expires_at: datetime
    # each room's metric: what part of an event's usage a room's amount is measured in
    metrics: Mapping[RoomId, Metric] = field(default_factory=dict)
    events: int = 0  # usage events counted against it so far
    # the holder released it after this many events: it ends when they are counted
    release_after: int | None = None


class HoldBook:
    """Open holds by reservation and their sums by room."""

    def __init__(self, max_holds: int = MAX_HOLDS) -> None:
        self.max_holds = max_holds
        self.holds: dict[str, Hold] = {}
        self._held: dict[RoomId, Decimal] = {}
        self._expiry: list[tuple[datetime, str]] = []  # a heap; stale entries are skipped

    def hold(self, reservation_id: str, tenant_id: str, amounts: Mapping[RoomId, Decimal],
             expires_at: datetime, metrics: Mapping[RoomId, Metric] | None = None) -> Hold:
        """Hold ``amounts`` (in ``metrics``, cost where none is given) until ``expires_at``
        (an id held already is replaced)."""
        self.settle(reservation_id)
        if len(self.holds) >= self.max_holds:
            raise ValidationFailed("too_many_holds", f"{len(self.holds)} reservations are "
                                   "open on this worker; settle or release some (DELETE "
                                   "/api/reservations/ID) or wait for their TTL")
        h = Hold(reservation_id, tenant_id, dict(amounts), expires_at, dict(metrics or {}))
        self.holds[reservation_id] = h
        for room, value in h.amounts.items():
            self._held[room] = self._held.get(room, ZERO) + value
        heapq.heappush(self._expiry, (expires_at, reservation_id))
        if len(self._expiry) > 2 * len(self.holds) + HEAP_SLACK:
            self._expiry = [(o.expires_at, rid) for rid, o in self.holds.items()]
            heapq.heapify(self._expiry)
        return h

    def _take(self, room: RoomId, value: Decimal) -> None:
        left = self._held.get(room, ZERO) - value
        if left > ZERO:
            self._held[room] = left
        else:
            self._held.pop(room, None)

    def settle(self, reservation_id: str) -> Hold | None:
        """Release a hold whole, now; None when there is none (used up, released, expired,
        or held by another worker)."""
        h = self.holds.pop(reservation_id, None)
        if h is None:
            return None
        for room, value in h.amounts.items():
            self._take(room, value)
        return h

    def spend(self, event: PricedUsage) -> Hold | None:
        """Take a counted event's actual amount out of its hold, room by room. The hold
        ends when no room has any of it left, or with the last event its holder said it
        recorded; else it stays for the block's next calls. The hold after the event (its
        ``events`` counted; not in ``holds`` when it ended), or None when there is none."""
        rid = event.reservation_id
        h = self.holds.get(rid) if rid else None
        if h is None or h.tenant_id != event.tenant_id:
            # another tenant's event naming this id (a typo, a shared SDK block) is counted
            # as that tenant's spend; it must not free this tenant's room
            return None
        left: dict[RoomId, Decimal] = {}
        for room, value in h.amounts.items():
            rest = value - measure(h.metrics.get(room, Metric.cost), event)
            self._take(room, value - max(rest, ZERO))
            if rest > ZERO:
                left[room] = rest
        after = replace(h, amounts=left, events=h.events + 1)
        self.holds[h.reservation_id] = after
        if not left or (after.release_after is not None and after.events >= after.release_after):
            self.settle(h.reservation_id)
        return after

    def release(self, reservation_id: str, after_events: int | None = None) -> Hold | None:
        """The holder is done: release now, or (``after_events``: the events it recorded
        with this id) once that many are counted, so a call in flight stays held until
        its event counts. The hold (still in ``holds`` when it waits), or None."""
        h = self.holds.get(reservation_id)
        if h is None:
            return None
        if after_events is None or h.events >= after_events:
            return self.settle(reservation_id)
        h = replace(h, release_after=after_events)
        self.holds[reservation_id] = h
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
            self._expiry.clear()  # only stale entries left in it
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


def hold_metrics(d: Decision) -> dict[RoomId, Metric]:
    """Each checked room's metric (what an event's usage is taken out of a hold in)."""
    return {r.ident: r.metric for r in d.rooms if r.checked}
