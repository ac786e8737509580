"""Budget-aware routing: a router's verdict combined with budgets, actions and value tiers (pure).

The caller routes the prompt in its own process (``pipeline.sdk.Router``) and sends only the
verdict: ``p_weak_ok``, the artifact's ``route_threshold``, ``router_version`` and the weak and
strong models. The policy:

1. Pressure: the remaining share ``s`` of the tightest checked room a strong call would spend
   from (``remaining / limit``, holds counted; a room with limit 0 has ``s = 0``; no room:
   ``s = 1``). An active forecast or anomaly action of a budget that covers the request caps
   ``s`` at :data:`ACTION_SHARE`.
2. Threshold: ``effective = route_threshold x min(1, s / LOW_SHARE)``: the router's own
   threshold while at least half is left, half of it at 25% left, 0 (every prompt weak) when
   the room is exhausted. Monotone: less room never sends more prompts to the strong model.
3. Tier: value tier ``critical`` keeps the strong model while the strong estimate fits every
   room it spends from (pools included); otherwise strong when ``p_weak_ok < effective``.
4. Admission, as before: the chosen model goes through :func:`decide`. A strong choice that
   does not fit is downgraded to the weak model when that fits (and is cheaper), else
   answered as ``decide`` answers it (the provider's cheapest that fits, deny, or soft allow).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pipeline.core.actions import ActiveAction, cheapest_alternative, matching
from pipeline.core.decision import Decision, Request, Room, decide, estimate, fits
from pipeline.core.events import MAX_ID_CHARS
from pipeline.errors import PricingError, ValidationFailed

if TYPE_CHECKING:
    from pipeline.core.catalog import Catalog
    from pipeline.core.scoring import ValuePolicy

LOW_SHARE = Decimal("0.5")  # pressure starts below half of the tightest room left
ACTION_SHARE = Decimal("0.25")  # an active forecast/anomaly action counts as 25% left
CRITICAL = "critical"
ROUTE_PARAMS = ("p_weak_ok", "route_threshold", "router_version", "weak_model", "strong_model")
ChosenBy = Literal["router", "critical"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the caller's router said about one prompt (never the prompt itself)."""

    p_weak_ok: float
    threshold: float  # the artifact's own threshold
    router_version: str
    weak_model: str
    strong_model: str


def _unit(params: Mapping[str, Any], name: str) -> float:
    raw = params.get(name)
    try:
        value = float(raw) if isinstance(raw, str | int | float) and not isinstance(
            raw, bool) else math.nan
    except (ValueError, OverflowError):  # 10**400 has no float
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValidationFailed("bad_request", f"{name} must be a number from 0 to 1, got "
                               f"{str(raw)[:40]!r}")
    return value + 0.0  # -0.0 recorded as 0


def verdict_from(params: Mapping[str, Any]) -> Verdict | None:
    """The router's verdict in decision parameters (None when the request names none)."""
    if not any(params.get(name) is not None for name in ROUTE_PARAMS):
        return None
    names: dict[str, str] = {}
    for name in ("router_version", "weak_model", "strong_model"):
        value = params.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
            raise ValidationFailed("bad_request", f"a routed request needs {name} (a string "
                                   f"of 1 to {MAX_ID_CHARS} characters); send all of "
                                   f"{', '.join(ROUTE_PARAMS)}")
        names[name] = value
    return Verdict(_unit(params, "p_weak_ok"), _unit(params, "route_threshold"),
                   names["router_version"], names["weak_model"], names["strong_model"])


@dataclass(frozen=True, slots=True)
class Pressure:
    """How low the budgets a strong call spends from are: the input of the threshold shift."""

    share: Decimal  # remaining share of the tightest checked room, after the action cap
    room: str  # which room was tightest ("" when none applies)
    actions: tuple[str, ...]  # active actions that capped the share (budget_id:label)


def room_name(r: Room) -> str:
    """How a reason names a room: ``budget/pool[key]``."""
    return f"{r.budget_id}{'/' + r.pool if r.pool else ''}{'[' + r.key + ']' if r.key else ''}"


def pressure(rooms: Iterable[Room], actions: Sequence[ActiveAction] = ()) -> Pressure:
    """The remaining share of the tightest checked room, capped by active actions."""
    share, name = Decimal(1), ""
    for r in rooms:
        if not r.checked:
            continue  # a template whose key is unknown: its spend is unknown too
        s = min(Decimal(1), r.remaining / r.limit) if r.limit > 0 else Decimal(0)
        if not name or s < share:
            share, name = s, room_name(r)
    labels = tuple(f"{a.budget_id}:{a.label()}" for a in actions)
    if labels:
        share = min(share, ACTION_SHARE)
    return Pressure(share, name, labels)


def effective_threshold(base: float, p: Pressure) -> float:
    """The threshold after the budget shift: ``base x min(1, share / LOW_SHARE)``."""
    factor = min(Decimal(1), max(Decimal(0), p.share) / LOW_SHARE)
    return base * float(factor)


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """The routing part of a decision: the tier chosen, the threshold applied and why."""

    verdict: Verdict
    tier: Literal["weak", "strong"]
    model: str  # the chosen tier's model (catalog name)
    weak_model: str  # catalog names of the pair
    strong_model: str
    threshold: float  # effective
    chosen_by: ChosenBy
    pressure: Pressure
    reason: str

    def final_tier(self, decision: Decision) -> str | None:
        """The tier of the model the answer lets the caller call (None on deny)."""
        if decision.decision == "deny":
            return None
        model = decision.suggested_model if decision.decision == "downgrade" \
            else decision.model
        return {self.weak_model: "weak", self.strong_model: "strong"}.get(model or "", "other")

    def as_json(self, decision: Decision) -> dict[str, Any]:
        """JSON rendering inside the decision's answer (``route``)."""
        v = self.verdict
        return {"router_version": v.router_version, "p_weak_ok": v.p_weak_ok,
                "weak_model": self.weak_model, "strong_model": self.strong_model,
                "base_threshold": v.threshold, "threshold": self.threshold,
                "threshold_shift": v.threshold - self.threshold,
                # 4 places are plenty to read; the threshold used the exact share
                "remaining_share": format(
                    self.pressure.share.quantize(Decimal("0.0001")).normalize(), "f"),
                "tightest": self.pressure.room or None, "actions": list(self.pressure.actions),
                "tier": self.tier, "chosen_by": self.chosen_by,
                "final_tier": self.final_tier(decision), "reason": self.reason}


def choose(v: Verdict, value_tier: str, p: Pressure, strong_fits: bool,
           weak_model: str, strong_model: str) -> RouteChoice:
    """The tier for one verdict under this pressure (critical work first, then the score)."""
    t = effective_threshold(v.threshold, p)
    why = (f"threshold {t:.4f} (router {v.threshold:.4f}"
           + (f", lowered: {p.room or 'an action'} at {float(p.share):.0%} left"
              + (f", action {', '.join(p.actions)} active" if p.actions else "")
              if t < v.threshold else "") + ")")
    if value_tier == CRITICAL and strong_fits:
        return RouteChoice(v, "strong", strong_model, weak_model, strong_model, t, "critical",
                           p, "critical work keeps the strong model while its budgets have "
                           f"room ({why} not applied)")
    strong = v.p_weak_ok < t
    sign = "<" if strong else ">="
    return RouteChoice(v, "strong" if strong else "weak", strong_model if strong else weak_model,
                       weak_model, strong_model, t, "router",
                       p, f"p_weak_ok {v.p_weak_ok:.4f} {sign} {why}")


def _canonical(catalog: Catalog, name: str) -> str:
    m = catalog.resolve(name)
    if m is None:
        raise PricingError("unknown_model", f"model {name!r} is not in the price catalog")
    return m.model


def decide_routed(req: Request, v: Verdict, strong_rooms: list[Room], weak_rooms: list[Room],
                  catalog: Catalog, at: datetime, policy: ValuePolicy | None = None,
                  actives: Iterable[ActiveAction] = ()) -> Decision:
    """Admission of a routed request: the policy's tier, then :func:`decide` on its model
    (``strong_rooms``/``weak_rooms``: the rooms of the budgets that apply to each model;
    ``actives``: the tenant's active actions; those covering a strong call add pressure)."""
    weak, strong = _canonical(catalog, v.weak_model), _canonical(catalog, v.strong_model)
    strong_req, weak_req = replace(req, model=strong), replace(req, model=weak)
    strong_cost = estimate(catalog, strong, strong_req, at)
    weak_cost = estimate(catalog, weak, weak_req, at)
    strong_fits = fits(strong_rooms, strong_cost, req, policy)
    covering = matching(actives, [(r.budget_id, r.key) for r in strong_rooms], req.value_tier,
                        at)
    choice = choose(v, req.value_tier, pressure(strong_rooms, covering), strong_fits, weak,
                    strong)
    if choice.tier == "weak":
        d = decide(weak_req, weak_rooms, catalog, at, policy)
    elif not strong_fits and weak_cost < strong_cost and fits(weak_rooms, weak_cost, req,
                                                              policy):
        d = Decision("downgrade", strong, strong_cost,
                     f"{strong} would exceed the remaining budget; the weak model {weak} fits",
                     suggested_model=weak, suggested_cost=weak_cost, rooms=weak_rooms)
    else:
        d = decide(strong_req, strong_rooms, catalog, at, policy)
    return replace(d, reason=f"routed {choice.tier}: {choice.reason}; {d.reason}", route=choice)


def downgrade_target(catalog: Catalog, req: Request, d: Decision,
                     at: datetime) -> tuple[str, Decimal] | None:
    """What an active downgrade action points a routed answer to: the weak model when the
    answer is the strong one, else the cheapest cheaper model of the answer's provider."""
    route = d.route
    if route is not None and d.model == route.strong_model and route.weak_model != d.model:
        weak_req = replace(req, model=route.weak_model)
        cost = estimate(catalog, route.weak_model, weak_req, at)
        if cost < d.estimated_cost:
            return route.weak_model, cost
    return cheapest_alternative(catalog, replace(req, model=d.model), at)
