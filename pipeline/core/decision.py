"""Budget-aware admission: allow, downgrade to a cheaper model, or deny (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pipeline.core.budget_options import ATTRIBUTE_PREFIX, EACH_ATTRIBUTES, EACH_FIELDS
from pipeline.core.budgets import Budget, Metric, Mode
from pipeline.core.catalog import Catalog
from pipeline.core.events import MAX_ATTRIBUTE_CHARS, MAX_ATTRIBUTES, MAX_ID_CHARS, MAX_TOKENS
from pipeline.core.pricing import TokenCounts, cost_lines
from pipeline.core.scoring import ValuePolicy
from pipeline.errors import PricingError, ValidationFailed

if TYPE_CHECKING:  # route_policy builds on this module
    from pipeline.core.route_policy import RouteChoice

SERVICE_TIERS = ("standard", "batch", "flex", "priority")
CRITICALITIES = ("low", "normal", "high", "critical")
# the run/entity keys a caller may name (template budgets answer for their value)
KEY_FIELDS = ("user_id", "project_id", "feature", "trace_id", "session_id", "run_id")
NEED = "need tenant_id, model, estimated_input_tokens, estimated_output_tokens"


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
    # priced like the meter prices the event: tier, cache reads and (5-minute) writes, both
    # part of input_tokens as in OpenTelemetry
    service_tier: str = "standard"
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # the value weight (value_units budgets): task_type x criticality x user tier
    criticality: str = "normal"
    user_tier: str | None = None
    trace_id: str | None = None
    session_id: str | None = None
    run_id: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Room:
    """What is left in one budget (pool "" is the whole budget; key "" a plain budget)."""

    budget_id: str
    pool: str
    limit: Decimal
    spent: Decimal
    mode: Mode
    metric: Metric
    held: Decimal = Decimal(0)  # reserved by open holds (core/reservations.py)
    key: str = ""
    # False: a template whose key the caller did not name; shown, never denied on
    checked: bool = True
    each: str = ""

    @property
    def remaining(self) -> Decimal:
        """Limit minus spend and holds, never below zero."""
        return max(self.limit - self.spent - self.held, Decimal(0))

    @property
    def ident(self) -> tuple[str, str, str]:
        """(budget_id, pool, key): what a hold is held against."""
        return self.budget_id, self.pool, self.key


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
    # a routed request's tier, threshold and why (core/route_policy.py); None otherwise
    route: RouteChoice | None = None

    def as_json(self) -> dict[str, Any]:
        """JSON-safe rendering (money as decimal strings; ``route`` only when routed)."""
        out: dict[str, Any] = {
            "decision": self.decision,
            "model": self.model,
            "estimated_cost": format(self.estimated_cost, "f"),
            "suggested_model": self.suggested_model,
            "suggested_cost": None if self.suggested_cost is None
            else format(self.suggested_cost, "f"),
            "reason": self.reason,
            "remaining": [room_json(r) for r in self.rooms],
        }
        if self.route is not None:
            out["route"] = self.route.as_json(self)
        return out


def room_json(r: Room) -> dict[str, Any]:
    """One room as JSON (money as decimal strings)."""
    return {"budget_id": r.budget_id, "pool": r.pool, "limit": format(r.limit, "f"),
            "spent": format(r.spent, "f"), "held": format(r.held, "f"),
            "remaining": format(r.remaining, "f"), "metric": r.metric.value,
            "mode": r.mode.value, "each": r.each, "key": r.key, "checked": r.checked}


def applies(budget: Budget, req: Request, model_names: set[str]) -> bool:
    """True when the budget's scope covers this request."""
    return (budget.tenant_id == req.tenant_id
            and (budget.model is None or budget.model in model_names)
            and all(getattr(budget, f) is None or getattr(budget, f) == getattr(req, f)
                    for f in ("project_id", "user_id", "feature", "task_type")))


def request_key(each: str, req: Request) -> str | None:
    """The request's value of a template key (None when the caller did not name it)."""
    if each in EACH_FIELDS:
        value: str | None = getattr(req, each)
    elif each in EACH_ATTRIBUTES:
        value = getattr(req, each) or req.attributes.get(each)
    else:
        value = req.attributes.get(each.removeprefix(ATTRIBUTE_PREFIX))
    return value or None


def estimate(catalog: Catalog, model: str, req: Request, at: datetime) -> Decimal:
    """Estimated list cost of the request on ``model`` (service tier and cache reads and
    writes priced by the meter's pricing core)."""
    m, v = catalog.price_version(model, at)
    counts = TokenCounts(input_tokens=req.input_tokens, output_tokens=req.output_tokens,
                         cache_read_input_tokens=req.cache_read_tokens,
                         cache_creation_input_tokens=req.cache_write_tokens)
    return cost_lines(counts, m, v, currency=catalog.currency,
                      service_tier=req.service_tier).total_cost


def amount(metric: Metric, cost: Decimal, req: Request,
           policy: ValuePolicy | None = None) -> Decimal:
    """The request's estimated amount in a budget's metric."""
    if metric is Metric.cost:
        return cost
    tokens = Decimal(req.input_tokens + req.output_tokens)
    if metric is Metric.value_units and policy is not None:
        # what the meter will count: total tokens x the value weight (core/scoring.score)
        return tokens * policy.weight(req.task_type, req.criticality, req.user_tier)
    # without a policy, tokens are the conservative stand-in for value units (documented)
    return tokens


def _over(r: Room, cost: Decimal, req: Request, policy: ValuePolicy | None) -> bool:
    # an exhausted room takes nothing more, whatever the estimate: a request that names no
    # tokens (estimate 0) must not pass a hard budget already at its limit
    return r.checked and (r.remaining <= 0 or amount(r.metric, cost, req, policy) > r.remaining)


def fits(rooms: list[Room], cost: Decimal, req: Request, policy: ValuePolicy | None) -> bool:
    """True when the estimate fits every checked room."""
    return not any(_over(r, cost, req, policy) for r in rooms)


def _unchecked(rooms: list[Room]) -> str:
    names = sorted({f"{r.budget_id} (each {r.each})" for r in rooms if not r.checked})
    if not names:
        return ""
    return (f"; template budget {', '.join(names)} could not be checked: name its key "
            "to have it checked")


def cheaper_models(catalog: Catalog, req: Request, at: datetime,
                   cost: Decimal) -> list[tuple[Decimal, str]]:
    """(estimate, model) of the requested model's provider's models that cost less than
    ``cost`` for this request, cheapest first (what a downgrade can point to)."""
    requested = catalog.resolve(req.model)
    out = []
    for m in catalog.models:
        if requested is None or m.provider != requested.provider or m.model == requested.model:
            continue
        try:
            c = estimate(catalog, m.model, req, at)
        except PricingError:
            continue
        if c < cost:
            out.append((c, m.model))
    return sorted(out)


def decide(req: Request, rooms: list[Room], catalog: Catalog, at: datetime,
           policy: ValuePolicy | None = None) -> Decision:
    """Admission decision for one request against the rooms of the budgets that apply
    (rooms not ``checked`` are reported in the reason, never denied on)."""
    cost = estimate(catalog, req.model, req, at)
    requested = catalog.resolve(req.model)
    assert requested is not None  # estimate() raised otherwise
    note = _unchecked(rooms)
    if fits(rooms, cost, req, policy):
        return Decision("allow", req.model, cost, "within every applicable budget" + note,
                        rooms=rooms)
    for c, name in cheaper_models(catalog, req, at, cost):
        if fits(rooms, c, req, policy):
            return Decision("downgrade", req.model, cost,
                            f"{req.model} would exceed the remaining budget; {name} fits"
                            + note, suggested_model=name, suggested_cost=c, rooms=rooms)
        break  # the cheapest does not fit, so none does
    return _without_cheaper(req, cost, rooms, policy, note)


def _without_cheaper(req: Request, cost: Decimal, rooms: list[Room],
                     policy: ValuePolicy | None, note: str = "") -> Decision:
    """The answer when no cheaper model fits: deny on a hard room without space, else allow
    (over a soft budget: alert only)."""
    over = [r for r in rooms if _over(r, cost, req, policy)]
    if any(r.mode is Mode.hard for r in over):
        names = ", ".join(f"{r.budget_id}{'/' + r.pool if r.pool else ''}"
                          f"{'[' + r.key + ']' if r.key else ''}" for r in over)
        return Decision("deny", req.model, cost, f"hard budget exhausted: {names}" + note,
                        rooms=rooms)
    return Decision("allow", req.model, cost,
                    "over a soft budget (alert only); no cheaper model fits" + note,
                    rooms=rooms)


def downgrade_candidates(catalog: Catalog, req: Request, d: Decision,
                         at: datetime) -> list[tuple[str, Decimal]]:
    """(model, estimate) a downgrade may settle on, in order: the one suggested, then the
    requested model's provider's other cheaper models, cheapest first."""
    if d.decision != "downgrade" or d.suggested_model is None or d.suggested_cost is None:
        return []
    first = (d.suggested_model, d.suggested_cost)
    others = cheaper_models(catalog, replace(req, model=d.model), at, d.estimated_cost)
    return [first, *((name, c) for c, name in others if name != d.suggested_model)]


def downgrade_within(req: Request, d: Decision, model: str, cost: Decimal, rooms: list[Room],
                     policy: ValuePolicy | None = None) -> Decision | None:
    """The downgrade to ``model`` when it fits ``rooms``, the budgets that apply to that model
    (a budget scoped to it is only there): holds land on them. None when it does not fit."""
    if not fits(rooms, cost, replace(req, model=model), policy):
        return None
    reason = d.reason if model == d.suggested_model else \
        f"{d.reason}; {d.suggested_model} is over a budget of its own, {model} fits"
    return replace(d, suggested_model=model, suggested_cost=cost, rooms=rooms, reason=reason)


def no_downgrade(req: Request, d: Decision, policy: ValuePolicy | None = None, *,
                 demanded: bool) -> Decision:
    """The answer when no cheaper model fits its own budgets.

    ``demanded``: an active budget action asked for the downgrade, which exists to stop the
    spend: deny. Otherwise the requested model's own answer without one: deny when a hard
    budget of it has no room, else allow (over a soft budget: alert only).
    """
    why = "no cheaper model fits its own budgets"
    if demanded:
        return replace(d, decision="deny", suggested_model=None, suggested_cost=None,
                       reason=f"{d.reason}; {why}")
    plain = _without_cheaper(replace(req, model=d.model), d.estimated_cost, d.rooms, policy)
    return replace(d, decision=plain.decision, suggested_model=None, suggested_cost=None,
                   reason=f"{plain.reason} ({why})")


def _text(params: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = params.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        raise ValidationFailed("bad_request", f"{name} must be a string of at most "
                               f"{MAX_ID_CHARS} characters")
    return value or None


def _count(params: Mapping[str, Any], name: str, required: bool = False) -> int:
    value = params.get(name)
    if value is None:
        if required:
            raise ValidationFailed("bad_request", f"missing parameter {name}; {NEED}")
        return 0
    try:
        n = int(value) if isinstance(value, str) or (isinstance(value, int)
                                                    and not isinstance(value, bool)) else -1
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_TOKENS:
        raise ValidationFailed("bad_request", f"{name} must be a whole number from 0 to "
                               f"{MAX_TOKENS}, got {str(value)[:40]!r}")
    return n


def _choice(params: Mapping[str, Any], name: str, choices: tuple[str, ...],
            default: str) -> str:
    value = params.get(name) or default
    if value not in choices:
        raise ValidationFailed("bad_request", f"{name} {str(value)[:40]!r} must be one of "
                               f"{', '.join(choices)}")
    return str(value)


def request_from(params: Mapping[str, Any], attributes: Mapping[str, Any] | None = None,
                 *, estimates_required: bool = False) -> Request:
    """A decision Request from query parameters or a JSON body (ValidationFailed with
    reason bad_request saying which parameter is wrong; ``estimates_required``: the two
    token estimates must be given, 0 included)."""
    attrs = dict(attributes or {})
    if len(attrs) > MAX_ATTRIBUTES or any(
            not isinstance(k, str) or not isinstance(v, str) or len(v) > MAX_ATTRIBUTE_CHARS
            for k, v in attrs.items()):
        raise ValidationFailed("bad_request", f"attributes must map names to strings (at "
                               f"most {MAX_ATTRIBUTES}, values up to {MAX_ATTRIBUTE_CHARS} "
                               "characters)")
    tenant, model = _text(params, "tenant_id"), _text(params, "model")
    if tenant is None or model is None:
        raise ValidationFailed("bad_request", f"missing parameter "
                               f"{'tenant_id' if tenant is None else 'model'}; {NEED}")
    req = Request(
        tenant_id=tenant, model=model,
        value_tier=_text(params, "value_tier") or "standard",
        input_tokens=_count(params, "estimated_input_tokens", estimates_required),
        output_tokens=_count(params, "estimated_output_tokens", estimates_required),
        project_id=_text(params, "project_id"), user_id=_text(params, "user_id"),
        feature=_text(params, "feature"), task_type=_text(params, "task_type"),
        service_tier=_choice(params, "service_tier", SERVICE_TIERS, "standard"),
        cache_read_tokens=_count(params, "estimated_cache_read_tokens"),
        cache_write_tokens=_count(params, "estimated_cache_write_tokens"),
        criticality=_choice(params, "criticality", CRITICALITIES, "normal"),
        user_tier=_text(params, "user_tier"), trace_id=_text(params, "trace_id"),
        session_id=_text(params, "session_id"), run_id=_text(params, "run_id"),
        attributes=attrs)
    if req.cache_read_tokens + req.cache_write_tokens > req.input_tokens:
        raise ValidationFailed("bad_request", "estimated cache reads + writes exceed "
                               "estimated_input_tokens (input counts them, as in "
                               "OpenTelemetry); raise estimated_input_tokens")
    return req
