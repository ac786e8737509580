"""A downgrade is checked against its target model's own budgets (decision.verify_downgrade).

The case a review found: a forecast downgrade action on the tenant's budget turned a routed
gpt-4o answer into gpt-4o-mini, whose own hard budget (scoped to gpt-4o-mini) was spent, and
the reservation held nothing on it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

from pipeline.core import route_policy as rp
from pipeline.core.actions import ActiveAction, apply_actions
from pipeline.core.budgets import Metric, Mode
from pipeline.core.catalog import load_catalog
from pipeline.core.decision import (
    Request,
    Room,
    cheaper_models,
    decide,
    estimate,
    verify_downgrade,
)
from pipeline.core.reservations import hold_amounts

CAT = load_catalog()
AT = datetime(2025, 7, 1, tzinfo=timezone.utc)
REQ = Request("acme", "gpt-4o", "standard", 100_000, 0)
TENANT = Room("tenant", "", D(100), D(0), Mode.hard, Metric.cost)
ACTION = ActiveAction("tenant", "acme", "forecast", "downgrade", "", "",
                      AT - timedelta(hours=1), None, "br1")
VERDICT = rp.Verdict(0.1, 0.5, "r1", "gpt-4o-mini", "gpt-4o")  # the router says strong


def _mini_cap(spent: str) -> Room:
    return Room("mini_cap", "", D("0.10"), D(spent), Mode.hard, Metric.cost)


def _acted(weak_rooms: list[Room]) -> rp.Decision:
    d = rp.decide_routed(REQ, VERDICT, [TENANT], weak_rooms, CAT, AT, None, [ACTION])
    assert (d.decision, d.model) == ("allow", "gpt-4o")
    acted = apply_actions(d, [ACTION], value_tier="standard", now=AT,
                          cheaper=rp.downgrade_target(CAT, REQ, d, AT))
    assert (acted.decision, acted.suggested_model) == ("downgrade", "gpt-4o-mini")
    return acted


def test_a_target_whose_hard_budget_is_spent_is_denied() -> None:
    weak_rooms = [TENANT, _mini_cap("0.10")]
    direct = decide(replace(REQ, model="gpt-4o-mini"), weak_rooms, CAT, AT)
    assert direct.decision == "deny"
    got = verify_downgrade(REQ, _acted([TENANT]), weak_rooms, CAT, AT)
    assert got.decision == "deny" and got.suggested_model is None
    assert "mini_cap" in got.reason and hold_amounts(got, REQ) == {}  # a deny holds nothing


def test_a_target_with_room_stands_and_holds_on_its_own_budgets() -> None:
    weak_rooms = [TENANT, _mini_cap("0")]
    got = verify_downgrade(REQ, _acted([TENANT]), weak_rooms, CAT, AT)
    mini = estimate(CAT, "gpt-4o-mini", replace(REQ, model="gpt-4o-mini"), AT)
    assert (got.decision, got.suggested_model, got.suggested_cost) == (
        "downgrade", "gpt-4o-mini", mini)
    assert hold_amounts(got, REQ) == {("tenant", "", ""): mini, ("mini_cap", "", ""): mini}


def test_a_target_over_its_budget_gets_that_models_own_answer() -> None:
    # room between the cheapest model's estimate and gpt-4o-mini's: its own answer is that
    # cheaper model (for the caller to verify in turn), holding on gpt-4o-mini's rooms
    mini_req = replace(REQ, model="gpt-4o-mini")
    mini = estimate(CAT, "gpt-4o-mini", mini_req, AT)
    cheapest = next(iter(cheaper_models(CAT, mini_req, AT, mini)))[0]
    tight = Room("mini_cap", "", (cheapest + mini) / 2, D(0), Mode.hard, Metric.cost)
    own = decide(mini_req, [TENANT, tight], CAT, AT)
    assert own.decision == "downgrade" and own.suggested_model != "gpt-4o-mini"
    got = verify_downgrade(REQ, _acted([TENANT]), [TENANT, tight], CAT, AT)
    assert (got.decision, got.suggested_model, got.suggested_cost) == (
        "downgrade", own.suggested_model, own.suggested_cost)
    assert [r.budget_id for r in got.rooms] == ["tenant", "mini_cap"]


def test_anything_but_a_downgrade_is_left_alone() -> None:
    d = decide(REQ, [TENANT], CAT, AT)
    assert verify_downgrade(REQ, d, [_mini_cap("0.10")], CAT, AT) is d
