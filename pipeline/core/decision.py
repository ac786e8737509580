"""Budget-aware admission: allow, downgrade to a cheaper model, or deny (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.core.budgets import Budget, Metric, Mode
from pipeline.core.catalog import Catalog
from pipeline.core.pricing import TokenCounts, cost_lines
from pipeline.errors import PricingError


@dataclass(frozen=True, slots=True)
class Request:
    """What a caller is about to do."""

    tenant_id: str
    model: str
    value_tier: str
    input_tokens: int
    output_tokens: int
    project_id: str | None = None
    user_id: str | None = None
    feature: str | None = None
    task_type: str | None = None


@dataclass(frozen=True, slots=True)
class Room:
    """What is left in one budget (pool "" is the whole budget)."""

    budget_id: str
    pool: str
    limit: Decimal
    spent: Decimal
    mode: Mode
    metric: Metric

    @property
    def remaining(self) -> Decimal:
        """Limit minus spend, never below zero."""
        return max(self.limit - self.spent, Decimal(0))


@dataclass
class Decision:
    """The answer: allow | downgrade | deny, with the numbers behind it."""

    decision: str
    model: str
    estimated_cost: Decimal
    reason: str
    suggested_model: str | None = None
    suggested_cost: Decimal | None = None
    rooms: list[Room] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """JSON-safe rendering (money as decimal strings)."""
        return {
            "decision": self.decision,
            "model": self.model,
            "estimated_cost": format(self.estimated_cost, "f"),
            "suggested_model": self.suggested_model,
            "suggested_cost": None if self.suggested_cost is None
            else format(self.suggested_cost, "f"),
            "reason": self.reason,
            "remaining": [
                {"budget_id": r.budget_id, "pool": r.pool, "limit": format(r.limit, "f"),
                 "spent": format(r.spent, "f"), "remaining": format(r.remaining, "f"),
                 "metric": r.metric.value, "mode": r.mode.value}
                for r in self.rooms
            ],
        }


def applies(budget: Budget, req: Request, model_names: set[str]) -> bool:
    """True when the budget's scope covers this request."""
    return (budget.tenant_id == req.tenant_id
            and (budget.model is None or budget.model in model_names)
            and all(getattr(budget, f) is None or getattr(budget, f) == getattr(req, f)
                    for f in ("project_id", "user_id", "feature", "task_type")))


def estimate(catalog: Catalog, model: str, req: Request, at: datetime) -> Decimal:
    """Estimated list cost of the request on ``model``."""
    m, v = catalog.price_version(model, at)
    counts = TokenCounts(input_tokens=req.input_tokens, output_tokens=req.output_tokens)
    return cost_lines(counts, m, v, currency=catalog.currency).total_cost


def _amount(metric: Metric, cost: Decimal, req: Request) -> Decimal:
    if metric is Metric.cost:
        return cost
    # value units need the task weight; tokens are the conservative stand-in (documented)
    return Decimal(req.input_tokens + req.output_tokens)


def _fits(rooms: list[Room], cost: Decimal, req: Request) -> bool:
    return all(_amount(r.metric, cost, req) <= r.remaining for r in rooms)


def decide(req: Request, rooms: list[Room], catalog: Catalog, at: datetime) -> Decision:
    """Admission decision for one request against the rooms of the budgets that apply."""
    cost = estimate(catalog, req.model, req, at)
    requested = catalog.resolve(req.model)
    assert requested is not None  # estimate() raised otherwise
    if _fits(rooms, cost, req):
        return Decision("allow", req.model, cost, "within every applicable budget", rooms=rooms)
    candidates = []
    for m in catalog.models:
        if m.provider != requested.provider or m.model == requested.model:
            continue
        try:
            c = estimate(catalog, m.model, req, at)
        except PricingError:
            continue
        if c < cost:
            candidates.append((c, m.model))
    for c, name in sorted(candidates):
        if _fits(rooms, c, req):
            return Decision("downgrade", req.model, cost,
                            f"{req.model} would exceed the remaining budget; {name} fits",
                            suggested_model=name, suggested_cost=c, rooms=rooms)
        break  # the cheapest does not fit, so none does
    over = [r for r in rooms if _amount(r.metric, cost, req) > r.remaining]
    if any(r.mode is Mode.hard for r in over):
        names = ", ".join(f"{r.budget_id}{'/' + r.pool if r.pool else ''}" for r in over)
        return Decision("deny", req.model, cost, f"hard budget exhausted: {names}", rooms=rooms)
    return Decision("allow", req.model, cost,
                    "over a soft budget (alert only); no cheaper model fits", rooms=rooms)
