"""Automated actions (pure): which breach turns which action on, and what it does to a decision."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from pipeline.core.actions import (
    ANOMALY_EXPIRY,
    ActiveAction,
    apply_actions,
    cheapest_alternative,
    matching,
    on_breach,
)
from pipeline.core.budgets import BreachKind, Budget, BudgetBreach, Metric, Mode
from pipeline.core.catalog import load_catalog
from pipeline.core.decision import Decision, Request, Room
from tests.helpers import NOW

PERIOD_END = NOW + timedelta(days=3)


def budget(**kw: Any) -> Budget:
    base: dict[str, Any] = {"budget_id": "b1", "tenant_id": "acme", "limit": Decimal(10),
                            "pools": {"low": Decimal("0.5"), "high": Decimal("0.5")}}
    base.update(kw)
    return Budget.model_validate(base)


def breach(kind: BreachKind, key: str = "", at: Any = NOW, budget_id: str = "b1") -> BudgetBreach:
    return BudgetBreach(
        breach_id=f"br-{kind.value}-{key}", budget_id=budget_id, tenant_id="acme", kind=kind,
        threshold_pct=Decimal(100), spent=Decimal(5), limit=Decimal(10), percent=Decimal(50),
        metric=Metric.cost, period_start=NOW - timedelta(days=1), period_end=PERIOD_END,
        severity="critical", action="alert", emitted_at=at, key=key)


def active(action: str = "block", pool: str = "", key: str = "", budget_id: str = "b1",
           until: Any = PERIOD_END, kind: str = "forecast") -> ActiveAction:
    return ActiveAction(budget_id, "acme", kind, action, pool, key, NOW, until, "br-1")


def decision(kind: str = "allow", rooms: tuple[tuple[str, str], ...] = (("b1", ""),),
             suggested: str | None = None) -> Decision:
    return Decision(kind, "gpt-4o", Decimal("0.01"), "within every applicable budget",
                    suggested_model=suggested,
                    suggested_cost=None if suggested is None else Decimal("0.001"),
                    rooms=[Room(b, "", Decimal(10), Decimal(1), Mode.soft, Metric.cost, key=k)
                           for b, k in rooms])


@pytest.mark.parametrize(("actions", "kind", "expected"), [
    ({"forecast": "block"}, BreachKind.forecast, ("block", "", PERIOD_END)),
    ({"forecast": "throttle:low"}, BreachKind.forecast, ("throttle", "low", PERIOD_END)),
    ({"anomaly": "downgrade"}, BreachKind.anomaly, ("downgrade", "", NOW + ANOMALY_EXPIRY)),
    ({"anomaly": "alert"}, BreachKind.anomaly, None),  # alert turns nothing on
    ({"anomaly": "block"}, BreachKind.forecast, None),  # no action for this kind
    ({"forecast": "block"}, BreachKind.threshold, None),  # threshold breaches never
    ({}, BreachKind.anomaly, None),
])
def test_on_breach_turns_on_the_action_the_budget_names(
        actions: dict[str, str], kind: BreachKind, expected: tuple[str, str, Any] | None) -> None:
    got = on_breach(budget(actions=actions), breach(kind, key="run-7"), NOW)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.action, got.pool, got.until) == expected
        assert (got.kind, got.key, got.breach_id) == (kind.value, "run-7",
                                                      f"br-{kind.value}-run-7")


def test_a_replayed_old_breach_turns_nothing_on() -> None:
    b = budget(actions={"anomaly": "block", "forecast": "block"})
    assert on_breach(b, breach(BreachKind.anomaly, at=NOW - ANOMALY_EXPIRY), NOW) is None
    assert on_breach(b, breach(BreachKind.forecast), PERIOD_END) is None
    assert on_breach(b, breach(BreachKind.anomaly), NOW, anomaly_expiry=None) is not None


@pytest.mark.parametrize(("act", "value_tier", "before", "after"), [
    (active("block"), "high", "allow", "deny"),
    (active("block"), "high", "downgrade", "deny"),
    (active("throttle", "low"), "low", "allow", "deny"),
    (active("throttle", "low"), "high", "allow", "allow"),  # other tiers pass
    (active("downgrade"), "high", "allow", "downgrade"),  # to the cheaper model passed in
    (active("throttle"), "high", "allow", "downgrade"),  # throttle without a pool
    (active("downgrade"), "high", "deny", "deny"),  # never loosens a decision
    (active("block", budget_id="other"), "high", "allow", "allow"),  # another budget
    (active("block", key="run-7"), "high", "allow", "allow"),  # another run's action
    (active("block", until=NOW), "high", "allow", "allow"),  # expired
])
def test_apply_actions(act: ActiveAction, value_tier: str, before: str, after: str) -> None:
    d = decision(before, suggested="gpt-4o-mini" if before == "downgrade" else None)
    out = apply_actions(d, [act], value_tier=value_tier, now=NOW,
                        cheaper=("gpt-4o-mini", Decimal("0.001")))
    assert out.decision == after
    if after != before:
        assert f"action {act.label()} of budget b1" in out.reason
        assert "br-1" in out.reason and "budget reset b1" in out.reason
    if after == "downgrade":
        assert out.suggested_model == "gpt-4o-mini"
    if after == "deny":
        assert out.suggested_model is None


def test_downgrade_without_a_cheaper_model_denies_and_says_why() -> None:
    out = apply_actions(decision(), [active("downgrade")], value_tier="high", now=NOW)
    assert out.decision == "deny"
    assert "no cheaper model" in out.reason


def test_a_template_action_covers_only_its_key() -> None:
    act = active("block", key="run-7")
    mine = decision(rooms=(("b1", "run-7"),))
    assert apply_actions(mine, [act], value_tier="x", now=NOW).decision == "deny"
    assert apply_actions(decision(rooms=(("b1", "run-8"),)), [act], value_tier="x",
                         now=NOW).decision == "allow"
    assert matching([active("block")], [("b1", "run-8")], "x", NOW)  # a plain action: all keys


def test_apply_actions_on_decision_json() -> None:
    d = decision().as_json()
    out = apply_actions(d, [active("block"), active("downgrade", kind="anomaly")],
                        value_tier="high", now=NOW)
    assert out["decision"] == "deny"
    assert [a["action"] for a in out["actions"]] == ["downgrade", "block"]  # by kind
    assert d["decision"] == "allow"  # the input is not changed
    down = apply_actions(d, [active("downgrade")], value_tier="high", now=NOW,
                         cheaper=("gpt-4o-mini", Decimal("0.0015")))
    assert (down["decision"], down["suggested_model"], down["suggested_cost"]) == (
        "downgrade", "gpt-4o-mini", "0.0015")
    assert apply_actions(d, [], value_tier="high", now=NOW) is d


def test_cheapest_alternative_is_cheaper_and_same_provider() -> None:
    catalog = load_catalog()
    req = Request("acme", "gpt-4o", "high", 1000, 1000)
    found = cheapest_alternative(catalog, req, NOW)
    assert found is not None
    model, cost = found
    requested = catalog.resolve("gpt-4o")
    alt = catalog.resolve(model)
    assert requested is not None and alt is not None
    assert alt.provider == requested.provider
    from pipeline.core.decision import estimate
    assert cost < estimate(catalog, "gpt-4o", req, NOW)
