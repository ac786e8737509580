from datetime import datetime, timezone
from decimal import Decimal as D

import pytest

from pipeline.core.budgets import Budget, Metric, Mode
from pipeline.core.catalog import load_catalog
from pipeline.core.decision import Request, Room, applies, decide, estimate

CAT = load_catalog()
AT = datetime(2025, 7, 1, tzinfo=timezone.utc)
REQ = Request("acme", "gpt-4o", "standard", 1_000_000, 0)  # gpt-4o: $2.50


def room(limit: str, spent: str, mode: Mode = Mode.soft, pool: str = "",
         metric: Metric = Metric.cost) -> Room:
    return Room("b1", pool, D(limit), D(spent), mode, metric)


@pytest.mark.parametrize(
    "rooms, decision, suggested",
    [
        ([], "allow", None),
        ([room("10", "0")], "allow", None),
        ([room("10", "7.50")], "allow", None),  # exactly fits
        # over: the cheapest OpenAI model priced on 2025-07-01 (gpt-4.1-nano; gpt-5 came later)
        ([room("10", "9")], "downgrade", "gpt-4.1-nano"),
        ([room("10", "9", Mode.hard)], "downgrade", "gpt-4.1-nano"),
        # nothing fits: hard denies, soft allows (alert only)
        ([room("10", "10", Mode.hard)], "deny", None),
        ([room("10", "10")], "allow", None),
        # a pool can be the one that is full
        ([room("100", "0"), room("1", "1", Mode.hard, pool="standard")], "deny", None),
        # token budgets do not change with the model: no downgrade helps
        ([room("500000", "0", Mode.hard, metric=Metric.tokens)], "deny", None),
    ],
)
def test_decisions(rooms: list[Room], decision: str, suggested: str | None) -> None:
    d = decide(REQ, rooms, CAT, AT)
    assert d.decision == decision
    assert d.suggested_model == suggested
    assert d.estimated_cost == D("2.50")
    if suggested:
        assert d.suggested_cost is not None and d.suggested_cost < d.estimated_cost
    body = d.as_json()
    assert body["estimated_cost"] == "2.50"
    assert all(isinstance(r["remaining"], str) for r in body["remaining"])


def test_remaining_never_negative() -> None:
    assert room("10", "15").remaining == 0


def test_estimate_uses_catalog() -> None:
    assert estimate(CAT, "claude-3-haiku", Request("t", "claude-3-haiku", "low", 1000, 1000), AT) == D("0.0015")


@pytest.mark.parametrize(
    "kw, ok",
    [({}, True), ({"model": "gpt-4o"}, True), ({"model": "claude-3-haiku"}, False),
     ({"feature": "chat"}, False), ({"tenant_id": "other"}, False)],
)
def test_applies(kw: dict, ok: bool) -> None:
    b = Budget.model_validate({"budget_id": "b", "tenant_id": "acme", "limit": "1", **kw})
    assert applies(b, REQ, {"gpt-4o"}) is ok


@pytest.mark.parametrize("tokens", [(0, 0), (1, 0)])
def test_an_exhausted_hard_room_denies_whatever_the_estimate(tokens: tuple[int, int]) -> None:
    # #18 review 7: a request naming no tokens (estimate $0) passed a hard budget at its
    # limit (0 <= remaining 0)
    req = Request("acme", "gpt-4o", "standard", *tokens)
    for spent in ("10", "12.5"):
        d = decide(req, [room("10", spent, Mode.hard)], CAT, AT)
        assert d.decision == "deny" and "hard budget exhausted: b1" in d.reason
    full = Room("b1", "", D(10), D(6), Mode.hard, Metric.cost, held=D(4))  # by holds
    assert decide(req, [full], CAT, AT).decision == "deny"
    # room left: a zero estimate fits; an exhausted soft room alerts only
    assert decide(req, [room("10", "9.99", Mode.hard)], CAT, AT).decision == "allow"
    soft = decide(req, [room("10", "10")], CAT, AT)
    assert soft.decision == "allow" and "over a soft budget" in soft.reason
