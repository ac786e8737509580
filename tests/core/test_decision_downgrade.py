"""A downgrade settles on a cheaper model within that model's own budgets (core/decision.py).

The case a review found: a forecast downgrade action on the tenant's budget turned a routed
gpt-4o answer into gpt-4o-mini, whose own hard budget (scoped to gpt-4o-mini) was spent, and
the reservation held nothing on it. The adapter (web/budgets_api._verified) walks
``downgrade_candidates`` with each model's rooms; these are its pure steps.
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
    Decision,
    Request,
    Room,
    cheaper_models,
    decide,
    downgrade_candidates,
    downgrade_within,
    estimate,
    no_downgrade,
)
from pipeline.core.reservations import hold_amounts

CAT = load_catalog()
AT = datetime(2025, 7, 1, tzinfo=timezone.utc)
REQ = Request("acme", "gpt-4o", "standard", 100_000, 0)
TENANT = Room("tenant", "", D(100), D(0), Mode.hard, Metric.cost)
ACTION = ActiveAction("tenant", "acme", "forecast", "downgrade", "", "",
                      AT - timedelta(hours=1), None, "br1")
VERDICT = rp.Verdict(0.1, 0.5, "r1", "gpt-4o-mini", "gpt-4o")  # the router says strong
MINI = replace(REQ, model="gpt-4o-mini")


def _acted() -> Decision:
    d = rp.decide_routed(REQ, VERDICT, [TENANT], [TENANT], CAT, AT, None, [ACTION])
    assert (d.decision, d.model) == ("allow", "gpt-4o")
    acted = apply_actions(d, [ACTION], value_tier="standard", now=AT,
                          cheaper=rp.downgrade_target(CAT, REQ, d, AT))
    assert (acted.decision, acted.suggested_model) == ("downgrade", "gpt-4o-mini")
    return acted


def test_candidates_start_with_the_suggestion_then_cheapest_first() -> None:
    got = downgrade_candidates(CAT, REQ, _acted(), AT)
    assert got[0] == ("gpt-4o-mini", estimate(CAT, "gpt-4o-mini", MINI, AT))
    rest = [(c, name) for name, c in got[1:]]
    assert rest == sorted(rest) and "gpt-4o-mini" not in [n for _, n in rest]
    assert rest == [x for x in cheaper_models(CAT, REQ, AT, estimate(CAT, "gpt-4o", REQ, AT))
                    if x[1] != "gpt-4o-mini"]
    assert downgrade_candidates(CAT, REQ, decide(REQ, [TENANT], CAT, AT), AT) == []


def test_a_target_whose_hard_budget_is_spent_does_not_fit() -> None:
    spent = Room("mini_cap", "", D("0.10"), D("0.10"), Mode.hard, Metric.cost)
    assert decide(MINI, [TENANT, spent], CAT, AT).decision == "deny"  # asked directly
    cost = estimate(CAT, "gpt-4o-mini", MINI, AT)
    assert downgrade_within(REQ, _acted(), "gpt-4o-mini", cost, [TENANT, spent]) is None


def test_a_target_with_room_holds_on_its_own_budgets() -> None:
    cap = Room("mini_cap", "", D("1"), D(0), Mode.hard, Metric.cost)
    cost = estimate(CAT, "gpt-4o-mini", MINI, AT)
    got = downgrade_within(REQ, _acted(), "gpt-4o-mini", cost, [TENANT, cap])
    assert got is not None and (got.decision, got.suggested_model, got.suggested_cost) == (
        "downgrade", "gpt-4o-mini", cost)
    assert hold_amounts(got, REQ) == {("tenant", "", ""): cost, ("mini_cap", "", ""): cost}


def test_without_a_fitting_model_an_action_denies_and_the_budgets_answer_as_without() -> None:
    acted = _acted()
    assert no_downgrade(REQ, acted, demanded=True).decision == "deny"
    # the budgets' own downgrade (not an action): a soft budget over is an alert only
    soft = Room("soft", "", D("0.20"), D(0), Mode.soft, Metric.cost)
    d = decide(REQ, [soft], CAT, AT)
    assert d.decision == "downgrade"
    allowed = no_downgrade(REQ, d, demanded=False)
    assert (allowed.decision, allowed.suggested_model) == ("allow", None)
    assert "soft" in allowed.reason
    hard = Room("hard", "", D("0.20"), D(0), Mode.hard, Metric.cost)
    d = decide(REQ, [hard], CAT, AT)
    assert no_downgrade(REQ, d, demanded=False).decision == "deny"
