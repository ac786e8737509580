"""The hold book (pure): holds count until settled or expired, per (budget, pool, key)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal as D

import pytest

from pipeline.core.budgets import Metric, Mode
from pipeline.core.catalog import load_catalog
from pipeline.core.decision import Request, Room, decide
from pipeline.core.events import PricedUsage
from pipeline.core.reservations import HEAP_SLACK, HoldBook, hold_amounts, hold_metrics, ttl
from pipeline.errors import ValidationFailed
from tests.helpers import NOW

WHOLE = ("b1", "", "")
POOL = ("b1", "critical", "")
RUN = ("runs", "", "run-7")


def test_holds_sum_per_room_and_settle_releases() -> None:
    book = HoldBook()
    book.hold("r1", "acme", {WHOLE: D("0.30"), POOL: D("0.30")}, NOW + timedelta(seconds=120))
    book.hold("r2", "acme", {WHOLE: D("0.25"), RUN: D("0.25")}, NOW + timedelta(seconds=60))
    assert book.held(WHOLE) == D("0.55") and book.held(POOL) == D("0.30")
    assert book.held(RUN) == D("0.25") and book.held(("b1", "", "run-8")) == 0
    released = book.settle("r1")
    assert released is not None and released.amounts[WHOLE] == D("0.30")
    assert book.held(WHOLE) == D("0.25") and book.held(POOL) == 0
    assert book.settle("r1") is None  # settled once; an event replayed is just counted
    assert book.settle("never-held") is None


def test_expire_at_ttl_only() -> None:
    book = HoldBook()
    book.hold("short", "acme", {WHOLE: D(1)}, NOW + timedelta(seconds=10))
    book.hold("long", "acme", {WHOLE: D(2)}, NOW + timedelta(seconds=120))
    assert book.expire(NOW + timedelta(seconds=9)) == []
    assert [h.reservation_id for h in book.expire(NOW + timedelta(seconds=10))] == ["short"]
    assert book.held(WHOLE) == D(2)
    book.settle("long")
    assert book.expire(NOW + timedelta(days=1)) == [] and book.held(WHOLE) == 0
    assert book.holds == {}


def test_a_replaced_hold_counts_once_and_expires_on_its_new_ttl() -> None:
    book = HoldBook()
    book.hold("r", "acme", {WHOLE: D(1)}, NOW + timedelta(seconds=10))
    book.hold("r", "acme", {WHOLE: D(3)}, NOW + timedelta(seconds=100))
    assert book.held(WHOLE) == D(3)
    assert book.expire(NOW + timedelta(seconds=50)) == []  # the old expiry is stale
    assert book.held(WHOLE) == D(3)


def test_open_holds_are_bounded() -> None:
    book = HoldBook(max_holds=2)
    book.hold("a", "t", {WHOLE: D(1)}, NOW)
    book.hold("b", "t", {WHOLE: D(1)}, NOW)
    with pytest.raises(ValidationFailed, match="2 reservations are open"):
        book.hold("c", "t", {WHOLE: D(1)}, NOW)


def test_the_expiry_heap_stays_bounded_by_the_open_holds() -> None:
    # #18 review 6: used or released holds stayed in the heap until their TTL (300,001
    # entries, 56.6 MiB for 300 reservations/s at ttl_s=3600 with one hold open)
    book = HoldBook()
    book.hold("pinned", "acme", {WHOLE: D("0.01")}, NOW + timedelta(seconds=3600))
    for i in range(20_000):
        now = NOW + timedelta(milliseconds=i * 3)
        book.hold(f"r{i}", "acme", {RUN: D("0.01")}, now + timedelta(seconds=3600))
        book.settle(f"r{i}")
        book.expire(now)
        assert len(book._expiry) <= 2 * 2 + HEAP_SLACK  # at most 2 holds open at once
    # rebuilt, the heap still expires each open hold at its own TTL
    book.hold("short", "acme", {WHOLE: D(1)}, NOW + timedelta(seconds=10))
    assert [h.reservation_id for h in book.expire(NOW + timedelta(seconds=11))] == ["short"]
    assert [h.reservation_id for h in book.expire(NOW + timedelta(seconds=3600))] == ["pinned"]
    assert book.holds == {} and book.held(WHOLE) == 0


def usage(rid: str, cost: str, tokens: int) -> PricedUsage:
    return PricedUsage(event_id=f"e-{rid}-{cost}", timestamp=NOW, tenant_id="acme",
                       provider="openai", model="gpt-4o", input_tokens=tokens,
                       output_tokens=0, reservation_id=rid, total_cost=D(cost))


TOKENS = ("tok", "", "")


def test_each_event_takes_its_actual_amount_out_of_its_hold() -> None:
    # #18 review 8c: a block of several calls stays held after its first call's event
    book = HoldBook()
    book.hold("r", "acme", {WHOLE: D("0.30"), TOKENS: D(3000)}, NOW + timedelta(seconds=60),
              {WHOLE: Metric.cost, TOKENS: Metric.tokens})
    after = book.spend(usage("r", "0.10", 1000))
    assert after is not None and after.events == 1 and "r" in book.holds
    assert (book.held(WHOLE), book.held(TOKENS)) == (D("0.20"), D(2000))
    assert book.spend(usage("r", "0.15", 1000)) is not None
    assert (book.held(WHOLE), book.held(TOKENS)) == (D("0.05"), D(1000))
    # the third call costs more than is left of the cost room: that room is used up, the
    # tokens room still holds its rest; the fourth uses up both and ends the hold
    book.spend(usage("r", "0.10", 500))
    assert book.holds["r"].amounts == {TOKENS: D(500)} and book.held(WHOLE) == 0
    ended = book.spend(usage("r", "0.01", 600))
    assert ended is not None and ended.events == 4 and ended.amounts == {}
    assert book.holds == {} and book.held(TOKENS) == 0
    assert book.spend(usage("r", "0.01", 1)) is None  # later events just count
    assert book.spend(usage("other", "0.01", 1)) is None


def test_another_tenants_event_never_spends_a_hold() -> None:
    book = HoldBook()
    book.hold("r", "acme", {WHOLE: D(5)}, NOW + timedelta(seconds=60))
    other = dataclasses.replace(usage("r", "5", 1), tenant_id="globex")
    assert book.spend(other) is None
    assert book.held(WHOLE) == D(5) and "r" in book.holds


def test_release_after_the_events_in_flight() -> None:
    book = HoldBook()
    book.hold("r", "acme", {WHOLE: D("0.30")}, NOW + timedelta(seconds=60))
    # the holder left its block after two calls, before either event was counted
    waiting = book.release("r", after_events=2)
    assert waiting is not None and waiting.release_after == 2 and book.held(WHOLE) == D("0.30")
    book.spend(usage("r", "0.10", 1))
    assert book.held(WHOLE) == D("0.20")  # the second call is still held
    ended = book.spend(usage("r", "0.05", 1))
    assert ended is not None and book.holds == {} and book.held(WHOLE) == 0
    # events counted before the release: it ends at once; no count: at once too
    book.hold("s", "acme", {WHOLE: D("0.30")}, NOW + timedelta(seconds=60))
    book.spend(usage("s", "0.10", 1))
    assert book.release("s", after_events=1) is not None and book.holds == {}
    book.hold("t", "acme", {WHOLE: D("0.30")}, NOW + timedelta(seconds=60))
    assert book.release("t") is not None and book.held(WHOLE) == 0
    assert book.release("t") is None
    # a waiting hold still ends at its TTL when an event never comes
    book.hold("u", "acme", {WHOLE: D("0.30")}, NOW + timedelta(seconds=60))
    book.release("u", after_events=1)
    assert [h.reservation_id for h in book.expire(NOW + timedelta(seconds=60))] == ["u"]


@pytest.mark.parametrize("asked, seconds", [(None, 120), (1, 1), (3600, 3600), (0.5, 0.5)])
def test_ttl_default_and_bounds(asked: float | None, seconds: float) -> None:
    assert ttl(asked, 120, 3600) == timedelta(seconds=seconds)


@pytest.mark.parametrize("asked", [0, -1, 3601, True, "60"])
def test_ttl_out_of_bounds_is_refused(asked: object) -> None:
    with pytest.raises(ValidationFailed, match=r"ttl_s must be a number of seconds in \(0, 3600\]"):
        ttl(asked, 120, 3600)  # type: ignore[arg-type]


CAT = load_catalog()
# gpt-4o 2024-10-02: $2.50 in, $10 out per 1M; 100k in + 10k out = $0.35
REQ = Request("acme", "gpt-4o", "standard", 100_000, 10_000)


def rooms(spent: str, held: str = "0") -> list[Room]:
    return [Room("b1", "", D(1), D(spent), Mode.hard, Metric.cost, held=D(held)),
            Room("tok", "", D(10**6), D(0), Mode.soft, Metric.tokens),
            Room("tpl", "", D(1), D(0), Mode.hard, Metric.cost, checked=False, each="user_id")]


def test_allow_holds_the_estimate_in_every_checked_room() -> None:
    d = decide(REQ, rooms("0.5"), CAT, NOW)
    assert d.decision == "allow" and d.estimated_cost == D("0.35")
    assert hold_amounts(d, REQ) == {("b1", "", ""): D("0.35"), ("tok", "", ""): D(110_000)}
    assert hold_metrics(d) == {("b1", "", ""): Metric.cost, ("tok", "", ""): Metric.tokens}


def test_holds_make_the_room_smaller() -> None:
    # spent 0.40 + held 0.30 leaves 0.30 < 0.35: gpt-4o no longer fits
    d = decide(REQ, rooms("0.40", "0.30"), CAT, NOW)
    assert d.decision == "downgrade"
    assert d.suggested_cost is not None and d.suggested_cost < D("0.30")
    # a downgrade holds the suggested model's estimate
    assert hold_amounts(d, REQ)[("b1", "", "")] == d.suggested_cost


def test_deny_holds_nothing() -> None:
    d = decide(REQ, rooms("1"), CAT, NOW)
    assert d.decision == "deny"
    assert hold_amounts(d, REQ) == {}
