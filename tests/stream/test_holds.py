"""Reservation holds are spent in the Processor's locked stage, on the in-memory doubles.

An event carrying reservation_id takes its actual amount out of its hold in the same step
that counts its spend: a room read under the lock before the batch sees the hold, after it
the spend, never both or neither. The hold stays for the block's next calls until it is
used up, released (after the events its holder recorded), or expired. The decision helper of the web layer (decide_now) reads rooms and holds and
places the hold under that lock; template budgets answer for the key the caller names.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.core.budgets import Budget
from pipeline.core.catalog import load_catalog
from pipeline.core.decision import Decision, Request
from pipeline.core.reservations import HoldBook, hold_amounts, hold_metrics
from pipeline.stream.holds import HoldWatcher, hold_book_of
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from pipeline.testing import InMemoryLedger, ListPublisher, SettableClock
from pipeline.web.budgets_api import decide_now
from tests.helpers import METER, NOW

pytestmark = pytest.mark.clock  # day budgets at the pinned instant


def rig() -> tuple[Processor, HoldBook, Any]:
    ledger = InMemoryLedger()
    live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=10_000)
    live.get(0)
    holds = HoldBook()
    proc = Processor(METER, ledger, ledger, live, ListPublisher(), clock=SettableClock(NOW),
                     publish_breach=ListPublisher(), watchers=[HoldWatcher(holds)])
    runtime = SimpleNamespace(processor=proc, catalog=load_catalog(), clock=lambda: NOW)
    return proc, holds, runtime


def event(i: int, tokens: int, **kw: Any) -> RawMessage:
    e = {"event_id": f"e{i}", "timestamp": NOW.isoformat(), "tenant_id": "acme",
         "provider": "openai", "model": "gpt-4o", "input_tokens": tokens, "output_tokens": 0,
         **kw}
    return RawMessage(json.dumps(e).encode(), "usage-events", 0, i)


def budget(budget_id: str, **kw: Any) -> Budget:
    return Budget.model_validate({"budget_id": budget_id, "tenant_id": "acme", "limit": "1",
                                  "period": "day", "mode": "hard", **kw})


def reserve(runtime: Any, holds: HoldBook, req: Request, rid: str) -> Decision:
    async def go() -> Decision:
        def hold(d: Decision) -> None:
            if d.decision != "deny":
                holds.hold(rid, req.tenant_id, hold_amounts(d, req), NOW + timedelta(minutes=2),
                           hold_metrics(d))
        status, (decision, _) = await decide_now(runtime, req, NOW, holds, then=hold)
        assert status == 200
        return decision
    return asyncio.run(go())


REQ = Request("acme", "gpt-4o", "standard", 100_000, 0)  # $0.25


def reserve_room(runtime: Any, holds: HoldBook) -> tuple[Decimal, Decimal]:
    """(spent, held) of b1's room, read by a zero-token reservation (it holds nothing)."""
    d = reserve(runtime, holds, Request("acme", "gpt-4o", "standard", 0, 0), "probe")
    holds.settle("probe")
    return d.rooms[0].spent, d.rooms[0].held


def test_an_event_spends_its_hold_in_the_step_that_counts_it() -> None:
    proc, holds, runtime = rig()
    assert hold_book_of(proc.watchers) is holds
    asyncio.run(proc.budget_changed("b1", budget("b1")))
    first = reserve(runtime, holds, REQ, "r1")
    assert first.decision == "allow"
    second = reserve(runtime, holds, REQ, "r2")
    assert (second.rooms[0].spent, second.rooms[0].held) == (0, Decimal("0.25"))
    # r1's event: its spend (a little under the estimate) in, as much of its hold out, in
    # one stage; the rest stays held for the block's next call
    asyncio.run(proc.process([event(1, 80_000, reservation_id="r1")]))
    assert holds.holds["r1"].amounts == {("b1", "", ""): Decimal("0.05")}
    assert holds.held(("b1", "", "")) == Decimal("0.30")
    # the block ends after that one call: the rest is released
    assert holds.release("r1", after_events=1) is not None and set(holds.holds) == {"r2"}
    third = reserve(runtime, holds, REQ, "r3")
    room = third.rooms[0]
    assert (room.spent, room.held) == (Decimal("0.20"), Decimal("0.25"))
    # an event whose hold is gone (expired, another worker's) just counts
    asyncio.run(proc.process([event(2, 40_000, reservation_id="unknown")]))
    assert set(holds.holds) == {"r2", "r3"}
    # 0.30 spent + 0.50 held leaves 0.20: gpt-4o's $0.25 no longer fits; a downgrade holds
    # the suggested model's estimate
    fourth = reserve(runtime, holds, REQ, "r4")
    assert fourth.decision == "downgrade" and fourth.rooms[0].remaining == Decimal("0.20")
    assert holds.holds["r4"].amounts == {("b1", "", ""): fourth.suggested_cost}
    # deepseek-chat has no cheaper sibling: denied, and nothing is held
    big = Request("acme", "deepseek-chat", "standard", 10_000_000, 0)
    fifth = reserve(runtime, holds, big, "r5")
    assert fifth.decision == "deny" and "r5" not in holds.holds


def test_holds_expire_at_their_ttl_in_the_watcher() -> None:
    proc, holds, runtime = rig()
    asyncio.run(proc.budget_changed("b1", budget("b1")))
    reserve(runtime, holds, REQ, "r1")
    proc.clock.advance(180)  # type: ignore[attr-defined]
    asyncio.run(proc.process([event(1, 10)]))
    assert holds.holds == {}


def test_a_template_answers_for_the_key_the_caller_names() -> None:
    proc, holds, runtime = rig()
    asyncio.run(proc.budget_changed("per-user", budget("per-user", each="user_id")))
    named = reserve(runtime, holds, Request("acme", "gpt-4o", "standard", 100_000, 0,
                                            user_id="u1"), "r1")
    assert [(r.key, r.checked) for r in named.rooms] == [("u1", True)]
    assert holds.held(("per-user", "", "u1")) == Decimal("0.25")
    # the caller names no user_id: the template is shown unchecked, held nothing, not denied
    unnamed = reserve(runtime, holds, Request("acme", "gpt-4o", "standard", 10_000_000, 0),
                      "r2")
    assert unnamed.decision == "allow" and "could not be checked" in unnamed.reason
    assert holds.holds["r2"].amounts == {}


def test_a_block_of_calls_stays_held_until_its_last_event() -> None:
    # #18 review 8c: every event of a reserve block carries its reservation_id; the first
    # one released the whole hold, so the block's later calls ran unheld
    proc, holds, runtime = rig()
    asyncio.run(proc.budget_changed("b1", budget("b1")))
    assert reserve(runtime, holds, REQ, "r1").decision == "allow"  # holds 0.25
    room = ("b1", "", "")
    asyncio.run(proc.process([event(1, 40_000, reservation_id="r1")]))  # 0.10
    assert holds.held(room) == Decimal("0.15")  # the rest, for the block's next call
    assert reserve_room(runtime, holds) == (Decimal("0.10"), Decimal("0.15"))
    # the block left after two calls, before the second one's event was counted
    assert holds.release("r1", after_events=2) is not None and "r1" in holds.holds
    asyncio.run(proc.process([event(2, 40_000, reservation_id="r1")]))
    assert holds.holds == {} and reserve_room(runtime, holds) == (Decimal("0.20"), 0)


def test_an_event_over_its_estimate_uses_up_the_hold() -> None:
    proc, holds, runtime = rig()
    asyncio.run(proc.budget_changed("b1", budget("b1")))
    reserve(runtime, holds, REQ, "r1")
    asyncio.run(proc.process([event(1, 120_000, reservation_id="r1")]))  # 0.30 > 0.25
    assert holds.holds == {} and reserve_room(runtime, holds) == (Decimal("0.30"), 0)


def test_a_downgrade_is_checked_against_the_cheaper_models_own_budget() -> None:
    proc, holds, runtime = rig()
    # the tenant's $0.20 has no room for gpt-4o's $0.25; the cheapest sibling, gpt-5-nano,
    # fits there, but a budget of its own (scoped to gpt-5-nano) is spent: the downgrade
    # settles on the next cheapest model that fits its own budgets
    asyncio.run(proc.budget_changed("b1", budget("b1", limit="0.20")))
    asyncio.run(proc.budget_changed("nano", budget("nano", limit="0.001", model="gpt-5-nano")))
    asyncio.run(proc.process([event(1, 40_000, model="gpt-5-nano")]))  # $0.002
    first = reserve(runtime, holds, REQ, "r1")
    assert first.decision == "downgrade", first.reason
    assert first.suggested_model not in (None, "gpt-5-nano", "gpt-4o")
    assert "nano" in first.reason and set(holds.holds["r1"].amounts) == {("b1", "", "")}
    # with room in gpt-5-nano's budget, the downgrade goes there and holds on both budgets
    asyncio.run(proc.budget_changed("nano", budget("nano", limit="1", model="gpt-5-nano")))
    second = reserve(runtime, holds, REQ, "r2")
    assert (second.decision, second.suggested_model) == ("downgrade", "gpt-5-nano")
    assert set(holds.holds["r2"].amounts) == {("b1", "", ""), ("nano", "", "")}
