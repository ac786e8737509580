"""The routing policy (core/route_policy.py): the verdict's parameters, the budget pressure,
the monotone threshold shift, critical work, and admission of the chosen model."""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from pipeline.core import route_policy as rp
from pipeline.core.actions import ActiveAction, cheapest_alternative
from pipeline.core.budgets import Metric, Mode
from pipeline.core.catalog import load_catalog
from pipeline.core.decision import Decision, Request, Room, decide
from pipeline.errors import PricingError, ValidationFailed

CAT = load_catalog()
AT = datetime(2025, 7, 1, tzinfo=timezone.utc)
# 1M input tokens: gpt-4o $2.50, gpt-4o-mini $0.15
REQ = Request("acme", "gpt-4o", "standard", 1_000_000, 0)
WEAK, STRONG = "gpt-4o-mini", "gpt-4o"
PARAMS = {"p_weak_ok": "0.7", "route_threshold": "0.8", "router_version": "r1-test",
          "weak_model": WEAK, "strong_model": STRONG}


def verdict(p: float, threshold: float = 0.8, weak: str = WEAK,
            strong: str = STRONG) -> rp.Verdict:
    return rp.Verdict(p, threshold, "r1-test", weak, strong)


def room(limit: str, spent: str = "0", mode: Mode = Mode.hard, pool: str = "",
         budget: str = "b1", held: str = "0", checked: bool = True, key: str = "") -> Room:
    return Room(budget, pool, D(limit), D(spent), mode, Metric.cost, held=D(held), key=key,
                checked=checked)


def action(budget: str = "b1", kind: str = "forecast", name: str = "downgrade",
           pool: str = "", key: str = "") -> ActiveAction:
    return ActiveAction(budget, "acme", kind, name, pool, key, AT - timedelta(hours=1), None,
                        f"br-{budget}")


# --- the verdict's parameters -----------------------------------------------------------


def test_a_request_without_route_parameters_has_no_verdict() -> None:
    assert rp.verdict_from({"tenant_id": "acme", "model": "gpt-4o"}) is None


@pytest.mark.parametrize("value", ["0.7", 0.7, "0", 1, "1.0"])
def test_verdict_numbers_come_as_strings_or_numbers(value: object) -> None:
    v = rp.verdict_from({**PARAMS, "p_weak_ok": value})
    assert v is not None and v.p_weak_ok == float(str(value))
    assert (v.threshold, v.router_version, v.weak_model, v.strong_model) == (
        0.8, "r1-test", WEAK, STRONG)


def test_negative_zero_is_recorded_as_zero() -> None:
    v = rp.verdict_from({**PARAMS, "p_weak_ok": "-0"})
    assert v is not None and str(v.p_weak_ok) == "0.0"


@pytest.mark.parametrize("name, value", [
    ("p_weak_ok", None), ("p_weak_ok", "-0.1"), ("p_weak_ok", "1.01"), ("p_weak_ok", "nan"),
    ("p_weak_ok", "inf"), ("p_weak_ok", "high"), ("p_weak_ok", True), ("p_weak_ok", [0.5]),
    ("p_weak_ok", 10**400), ("route_threshold", 10**400),  # no float: once an OverflowError
    ("route_threshold", None), ("route_threshold", "2"), ("router_version", None),
    ("router_version", ""), ("router_version", "x" * 257), ("weak_model", None),
    ("strong_model", None), ("strong_model", 5),
])
def test_a_partial_or_bad_verdict_is_a_bad_request(name: str, value: object) -> None:
    params = {**PARAMS, name: value}
    with pytest.raises(ValidationFailed) as err:
        rp.verdict_from(params)
    assert err.value.reason_code == "bad_request" and name in err.value.detail


# --- pressure ----------------------------------------------------------------------------


@pytest.mark.parametrize("rooms, share, name", [
    ([], "1", ""),
    ([room("10")], "1", "b1"),
    ([room("10", "4")], "0.6", "b1"),
    ([room("10", "4", held="2")], "0.4", "b1"),  # holds count as spent
    ([room("10", "12")], "0", "b1"),  # overspent: nothing left, never negative
    ([room("0")], "0", "b1"),  # a zero limit has nothing to give
    ([room("10", "2"), room("4", "3", pool="standard")], "0.25", "b1/standard"),
    ([room("10", "9", budget="b2", key="u1"), room("10", "1")], "0.1", "b2[u1]"),
    ([room("10", "9", checked=False), room("10", "5")], "0.5", "b1"),  # unknown key: skipped
    ([room("10", "9", checked=False)], "1", ""),
])
def test_pressure_is_the_tightest_checked_rooms_share(rooms: list[Room], share: str,
                                                      name: str) -> None:
    p = rp.pressure(rooms)
    assert p.share == D(share) and p.room == name and p.actions == ()


@pytest.mark.parametrize("spent, share", [("0", "0.25"), ("8", "0.2"), ("10", "0")])
def test_an_active_action_caps_the_share_at_a_quarter(spent: str, share: str) -> None:
    p = rp.pressure([room("10", spent)], [action()])
    assert p.share == D(share) and p.actions == ("b1:downgrade",)


# --- the threshold shift -------------------------------------------------------------------


@pytest.mark.parametrize("share, threshold", [
    ("1", 0.8), ("0.75", 0.8), ("0.5", 0.8), ("0.375", 0.6), ("0.25", 0.4), ("0.1", 0.16),
    ("0", 0.0),
])
def test_the_threshold_is_the_routers_until_half_is_left_then_falls_to_zero(
        share: str, threshold: float) -> None:
    t = rp.effective_threshold(0.8, rp.Pressure(D(share), "b1", ()))
    assert t == pytest.approx(threshold)


SHARES = [D(k) / 20 for k in range(21)]
BASES = [0.0, 0.1, 0.5, 0.8, 1.0]
SCORES = [0.0, 0.05, 0.3, 0.5, 0.79, 0.8, 0.95, 1.0]


@pytest.mark.parametrize("base", BASES)
def test_less_room_never_raises_the_threshold_nor_sends_more_to_strong(base: float) -> None:
    for p in SCORES:
        thresholds = [rp.effective_threshold(base, rp.Pressure(s, "b1", ())) for s in SHARES]
        assert thresholds == sorted(thresholds)  # nondecreasing in the share left
        assert all(0.0 <= t <= base for t in thresholds)
        tiers = [rp.choose(verdict(p, base), "standard", rp.Pressure(s, "b1", ()), True,
                           WEAK, STRONG).tier for s in SHARES]
        # once weak at some share, weak at every smaller share
        first_strong = tiers.index("strong") if "strong" in tiers else len(tiers)
        assert all(t == "weak" for t in tiers[:first_strong])
        assert all(t == "strong" for t in tiers[first_strong:])


# --- the tier ----------------------------------------------------------------------------


@pytest.mark.parametrize("p, tier_, fits, share, tier, by", [
    (0.5, "standard", True, "1", "strong", "router"),
    (0.8, "standard", True, "1", "weak", "router"),  # p == threshold: weak (strong is p < t)
    (0.9, "standard", True, "1", "weak", "router"),
    (0.5, "standard", True, "0.25", "weak", "router"),  # 0.5 >= 0.4
    (0.3, "standard", True, "0.25", "strong", "router"),
    (0.5, "standard", True, "0", "weak", "router"),
    (0.0, "standard", True, "0", "weak", "router"),  # an exhausted room: everything weak
    (0.99, "critical", True, "1", "strong", "critical"),
    (0.99, "critical", True, "0.05", "strong", "critical"),  # room for it: still strong
    (0.99, "critical", False, "0.05", "weak", "router"),  # no room: the router decides
    (0.1, "critical", False, "0.5", "strong", "router"),
    (0.99, "low", True, "1", "weak", "router"),
])
def test_choose(p: float, tier_: str, fits: bool, share: str, tier: str, by: str) -> None:
    c = rp.choose(verdict(p), tier_, rp.Pressure(D(share), "b1", ()), fits, WEAK, STRONG)
    assert (c.tier, c.chosen_by) == (tier, by)
    assert c.model == (STRONG if tier == "strong" else WEAK)
    assert c.threshold == pytest.approx(0.8 * min(1.0, float(share) / 0.5))
    if c.threshold < 0.8:
        assert "lowered: b1 at" in c.reason


# --- admission of the chosen model ---------------------------------------------------------


@pytest.mark.parametrize("p, tier_, rooms, decision, model, suggested, final", [
    # no budget: the score alone
    (0.9, "standard", [], "allow", WEAK, None, "weak"),
    (0.2, "standard", [], "allow", STRONG, None, "strong"),
    # 20% left lowers the threshold to 0.32: 0.5 goes weak, 0.2 still strong
    (0.5, "standard", [room("100", "80")], "allow", WEAK, None, "weak"),
    (0.2, "standard", [room("100", "80")], "allow", STRONG, None, "strong"),
    # strong does not fit ($1 left), the weak model does: downgraded to it
    (0.05, "standard", [room("10", "9")], "downgrade", STRONG, WEAK, "weak"),
    # critical keeps strong while it fits, however easy the prompt
    (0.99, "critical", [room("10", "7")], "allow", STRONG, None, "strong"),
    (0.99, "critical", [room("100", "0"), room("3", "0", pool="critical")], "allow", STRONG,
     None, "strong"),
    # its pool has no room for strong: the router at the shifted threshold (weak)
    (0.99, "critical", [room("100", "0"), room("1", "0.5", pool="critical")], "allow", WEAK,
     None, "weak"),
    # nothing of the pair fits; hard: deny; soft: the provider's cheapest that fits
    (0.05, "standard", [room("10", "9.95")], "deny", WEAK, None, None),
    (0.05, "standard", [room("10", "9.9", Mode.soft)], "downgrade", WEAK, "gpt-4.1-nano",
     "other"),
    # an exhausted hard room denies whatever the route
    (0.05, "critical", [room("10", "10")], "deny", WEAK, None, None),
])
def test_routed_decisions(p: float, tier_: str, rooms: list[Room], decision: str, model: str,
                          suggested: str | None, final: str | None) -> None:
    req = Request("acme", STRONG, tier_, 1_000_000, 0)
    d = rp.decide_routed(req, verdict(p), rooms, rooms, CAT, AT)
    assert (d.decision, d.model, d.suggested_model) == (decision, model, suggested), d.reason
    assert d.route is not None and d.route.final_tier(d) == final
    assert d.reason.startswith(f"routed {d.route.tier}: ")
    assert d.estimated_cost == (D("2.50") if model == STRONG else D("0.15"))
    body = d.as_json()
    assert body["route"]["final_tier"] == final
    assert body["route"]["router_version"] == "r1-test"
    assert set(body) == {"decision", "model", "estimated_cost", "suggested_model",
                         "suggested_cost", "reason", "remaining", "route"}


def test_the_weak_routes_answer_is_decides_answer_on_the_weak_model() -> None:
    # the existing semantics, on the routed model: same decision, cost, suggestion and rooms
    for rooms in ([], [room("1", "0.9")], [room("1", "0.95")], [room("1", "1", Mode.soft)]):
        routed = rp.decide_routed(REQ, verdict(0.99), rooms, rooms, CAT, AT)
        plain = decide(Request("acme", WEAK, "standard", 1_000_000, 0), rooms, CAT, AT)
        assert (routed.decision, routed.model, routed.estimated_cost, routed.suggested_model,
                routed.rooms) == (plain.decision, plain.model, plain.estimated_cost,
                                  plain.suggested_model, plain.rooms)
        assert routed.reason.endswith(plain.reason)


def test_a_plain_decision_has_no_route_in_its_answer() -> None:
    assert "route" not in decide(REQ, [], CAT, AT).as_json()


def test_pressure_comes_from_the_rooms_a_strong_call_spends_from() -> None:
    # a budget on the strong model only, nearly spent: pushes to weak; weak has no budget
    d = rp.decide_routed(REQ, verdict(0.5), [room("10", "9", budget="b-4o")], [], CAT, AT)
    assert d.route is not None and d.route.pressure.room == "b-4o"
    assert (d.decision, d.model, d.rooms) == ("allow", WEAK, [])
    assert d.as_json()["route"]["remaining_share"] == "0.1"
    # a budget on the weak model only does not shift anything
    d = rp.decide_routed(REQ, verdict(0.5), [], [room("10", "9.5", budget="b-mini")], CAT, AT)
    assert d.route is not None and d.route.threshold == 0.8 and d.model == STRONG


@pytest.mark.parametrize("actives, threshold", [
    ([], 0.8),
    ([action()], 0.4),  # covers b1: counted as 25% left
    ([action(kind="anomaly", name="block")], 0.4),
    ([action(budget="other")], 0.8),  # not a budget of this request
    ([action(name="throttle", pool="low")], 0.8),  # throttles another tier only
    ([action(name="throttle", pool="standard")], 0.4),
    ([action(key="u1")], 0.8),  # a template action for another key
])
def test_active_actions_that_cover_the_request_shift_the_threshold(
        actives: list[ActiveAction], threshold: float) -> None:
    d = rp.decide_routed(REQ, verdict(0.5), [room("100")], [room("100")], CAT, AT,
                         actives=actives)
    assert d.route is not None and d.route.threshold == pytest.approx(threshold)
    assert d.model == (STRONG if 0.5 < threshold else WEAK)


def test_aliases_answer_catalog_names_and_unknown_models_are_refused() -> None:
    d = rp.decide_routed(REQ, verdict(0.1, strong="gpt-4o-2024-08-06"), [], [], CAT, AT)
    assert d.model == "gpt-4o-2024-08-06" and d.route is not None
    with pytest.raises(PricingError):
        rp.decide_routed(REQ, verdict(0.1, weak="no-such-model"), [], [], CAT, AT)


def test_a_weak_model_dearer_than_the_strong_one_is_never_a_downgrade() -> None:
    # a misconfigured pair (weak gpt-4.1 $2.00 vs strong gpt-4o-mini $0.15): the strong
    # choice that does not fit is answered as decide answers it
    rooms = [room("10", "9.95")]
    d = rp.decide_routed(REQ, verdict(0.05, weak="gpt-4.1", strong=WEAK), rooms, rooms, CAT,
                         AT)
    plain = decide(Request("acme", WEAK, "standard", 1_000_000, 0), rooms, CAT, AT)
    assert (d.decision, d.suggested_model) == (plain.decision, plain.suggested_model)


@pytest.mark.parametrize("p, target", [(0.1, WEAK), (0.99, None)])
def test_a_downgrade_action_points_a_strong_route_to_its_weak_model(
        p: float, target: str | None) -> None:
    d = rp.decide_routed(REQ, verdict(p), [], [], CAT, AT)
    got = rp.downgrade_target(CAT, REQ, d, AT)
    if target is None:  # already weak: the cheapest cheaper model of its provider
        assert got == cheapest_alternative(CAT, Request("acme", WEAK, "standard", 1_000_000,
                                                        0), AT)
    else:
        assert got == (WEAK, D("0.15"))
    plain = Decision("allow", STRONG, D("2.50"), "within every applicable budget")
    assert rp.downgrade_target(CAT, REQ, plain, AT) == cheapest_alternative(CAT, REQ, AT)


def test_every_verdict_and_share_gives_a_consistent_answer() -> None:
    # exhaustive over a grid: the answer's model is always one the rooms can explain
    grid = itertools.product([0.0, 0.3, 0.79, 0.81, 1.0], ["standard", "critical"],
                             ["0", "5", "8", "9", "9.9", "10"], [Mode.hard, Mode.soft])
    for p, tier_, spent, mode in grid:
        rooms = [room("10", spent, mode)]
        req = Request("acme", STRONG, tier_, 1_000_000, 0)
        d = rp.decide_routed(req, verdict(p), rooms, rooms, CAT, AT)
        assert d.route is not None
        final = d.route.final_tier(d)
        if d.decision == "deny":
            assert mode is Mode.hard and final is None
        elif d.decision == "allow" and final == "strong":
            assert D(spent) + D("2.50") <= 10 or mode is Mode.soft
        assert not math.isnan(d.route.threshold) and 0 <= d.route.threshold <= 0.8
