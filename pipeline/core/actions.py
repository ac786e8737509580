"""Automated actions: what a budget's forecast or anomaly breach turns on, and how an active
action changes an admission decision (pure, time passed in).

A budget names actions per breach kind (``Budget.actions``: ``{"anomaly": "block",
"forecast": "throttle:low"}``). A breach of that kind turns its action on
(:func:`on_breach`); the decision API then applies every live action of the budgets that
cover a request (:func:`apply_actions`):

- ``block``: deny.
- ``downgrade`` (and ``throttle`` without a pool): answer downgrade to a cheaper model of
  the same provider: the decision's own suggestion when it has one, else the ``cheaper``
  model the caller passes (:func:`cheapest_alternative`); with neither, deny (the action
  exists to stop the spend, so "no cheaper model" does not let the request through).
- ``throttle:POOL``: deny requests whose value tier is POOL; other tiers pass.
- ``alert``: nothing beyond the breach (no action is turned on).

A stricter outcome always wins (deny over downgrade over allow). A forecast action lasts
until the breach's period ends; an anomaly action until the velocity watch clears it, with a
safety expiry :data:`ANOMALY_EXPIRY` after its (last) breach so an action whose clear was
lost cannot block forever. ``tokenmeter budget reset ID`` lifts either at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from pipeline.core.budget_options import ACTION_KINDS, Action
from pipeline.core.budgets import Budget, BudgetBreach
from pipeline.core.catalog import Catalog
from pipeline.core.decision import Decision, Request, cheaper_models, estimate

# an anomaly action whose clear never came ends this long after its last breach
ANOMALY_EXPIRY = timedelta(hours=1)

_RANK = {"allow": 0, "downgrade": 1, "deny": 2}


@dataclass(frozen=True, slots=True)
class ActiveAction:
    """One action turned on by a breach: which budget (and template key) it covers."""

    budget_id: str
    tenant_id: str
    kind: str  # the breach kind that turned it on: forecast | anomaly
    action: str  # downgrade | block | throttle
    pool: str  # throttle:POOL's pool ("" otherwise)
    key: str  # the template key value the breach was for ("" for a plain budget)
    since: datetime
    until: datetime | None  # None: until cleared or reset
    breach_id: str

    @property
    def ident(self) -> tuple[str, str, str]:
        """(budget_id, kind, key): one action per budget, breach kind and key."""
        return self.budget_id, self.kind, self.key

    def live(self, now: datetime) -> bool:
        """True while the action still applies at ``now``."""
        return self.until is None or now < self.until

    def label(self) -> str:
        """How a reason names the action: ``throttle:low``, ``block``."""
        return f"{self.action}:{self.pool}" if self.pool else self.action


def on_breach(budget: Budget, breach: BudgetBreach, now: datetime,
              anomaly_expiry: timedelta | None = ANOMALY_EXPIRY) -> ActiveAction | None:
    """The action a breach turns on (None: the budget names none for the breach's kind, the
    action is alert, or the breach is already over at ``now``)."""
    kind = breach.kind.value
    spec = budget.actions.get(kind)
    if kind not in ACTION_KINDS or spec is None or breach.budget_id != budget.budget_id:
        return None
    name, _, pool = spec.partition(":")
    if name == Action.alert:
        return None
    if kind == "forecast":
        until: datetime | None = breach.period_end
    else:
        # from the breach's own time, so a replayed old breach does not turn anything on
        until = None if anomaly_expiry is None else breach.emitted_at + anomaly_expiry
    action = ActiveAction(budget_id=budget.budget_id, tenant_id=budget.tenant_id, kind=kind,
                          action=name, pool=pool, key=breach.key, since=breach.emitted_at,
                          until=until, breach_id=breach.breach_id)
    return action if action.live(now) else None


def cheapest_alternative(catalog: Catalog, req: Request,
                         at: datetime) -> tuple[str, Decimal] | None:
    """The cheapest model of the requested one's provider that costs less for ``req``
    (None when there is none): what a downgrade action answers with when the decision has
    no suggestion of its own."""
    requested = catalog.resolve(req.model)
    if requested is None:
        return None
    cheaper = cheaper_models(catalog, req, at, estimate(catalog, requested.model, req, at))
    return None if not cheaper else (cheaper[0][1], cheaper[0][0])


def _covered(action: ActiveAction, rooms: Iterable[tuple[str, str]]) -> bool:
    # a template action covers only requests that name its key (an unnamed key: room key "")
    return any(b == action.budget_id and (not action.key or k == action.key)
               for b, k in rooms)


def matching(actives: Iterable[ActiveAction], rooms: Iterable[tuple[str, str]],
             value_tier: str, now: datetime) -> list[ActiveAction]:
    """The live actions that apply to a request whose decision has these rooms
    ((budget_id, key) pairs) and value tier, sorted by budget, kind and key."""
    pairs = list(rooms)
    out = [a for a in actives if a.live(now) and _covered(a, pairs)
           and not (a.action == Action.throttle and a.pool and a.pool != value_tier)]
    return sorted(out, key=lambda a: a.ident)


def _why(a: ActiveAction) -> str:
    until = "until reset" if a.until is None else f"until {a.until.isoformat()}"
    key = f"[{a.key}]" if a.key else ""
    return (f"action {a.label()} of budget {a.budget_id}{key} is active ({a.kind} breach "
            f"{a.breach_id}, {until}; `tokenmeter budget reset {a.budget_id}` lifts it)")


def _outcome(a: ActiveAction) -> str:
    if a.action == Action.block or (a.action == Action.throttle and a.pool):
        return "deny"
    return "downgrade"


D = TypeVar("D", Decision, dict[str, Any])


def apply_actions(decision: D, actives: Iterable[ActiveAction], *, value_tier: str,
                  now: datetime, cheaper: tuple[str, Decimal] | None = None) -> D:
    """The decision after the active actions that apply to it (a Decision or its
    ``as_json()`` rendering; returns the same type, unchanged when no action applies)."""
    if isinstance(decision, Decision):
        rooms = [(r.budget_id, r.key) for r in decision.rooms]
        current, suggested = decision.decision, decision.suggested_model
        suggested_cost = decision.suggested_cost
    else:
        rooms = [(str(r["budget_id"]), str(r.get("key", ""))) for r in
                 decision.get("remaining", [])]
        current, suggested = str(decision["decision"]), decision.get("suggested_model")
        raw_cost = decision.get("suggested_cost")
        suggested_cost = None if raw_cost is None else Decimal(str(raw_cost))
    applied = matching(actives, rooms, value_tier, now)
    if not applied:
        return decision
    outcome = max((_outcome(a) for a in applied), key=_RANK.__getitem__)
    reasons = [_why(a) for a in applied]
    if outcome == "downgrade" and current == "allow":
        if cheaper is not None:
            suggested, suggested_cost = cheaper
        else:
            outcome = "deny"
            reasons.append("no cheaper model of the same provider to downgrade to")
    if _RANK[outcome] < _RANK[current]:
        outcome = current  # the budgets already answered something stricter
    if outcome == "deny":
        suggested, suggested_cost = None, None
    original = decision.reason if isinstance(decision, Decision) else decision.get("reason")
    reason = "; ".join(reasons) + (f" (budgets: {original})" if original else "")
    if isinstance(decision, Decision):
        result: Any = replace(decision, decision=outcome, reason=reason,
                              suggested_model=suggested, suggested_cost=suggested_cost)
        return result  # type: ignore[no-any-return]
    out = dict(decision)
    out.update(decision=outcome, reason=reason, suggested_model=suggested,
               suggested_cost=None if suggested_cost is None else format(suggested_cost, "f"),
               actions=[action_json(a) for a in applied])
    return out


def action_json(a: ActiveAction) -> dict[str, Any]:
    """One active action as JSON."""
    return {"budget_id": a.budget_id, "tenant_id": a.tenant_id, "kind": a.kind,
            "action": a.label(), "key": a.key, "since": a.since.isoformat(),
            "until": None if a.until is None else a.until.isoformat(),
            "breach_id": a.breach_id}
