"""HTTP views for budgets, breaches and admission decisions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from faust.web import Request, Response, View
from pydantic import ValidationError

from pipeline.core.actions import apply_actions
from pipeline.core.budgets import Budget
from pipeline.core.decision import (
    Decision,
    Room,
    applies,
    decide,
    downgrade_candidates,
    downgrade_within,
    no_downgrade,
    request_from,
    request_key,
)
from pipeline.core.decision import Request as DecisionRequest
from pipeline.core.reservations import HoldBook
from pipeline.core.route_policy import Verdict, decide_routed, downgrade_target, verdict_from
from pipeline.delivery.webhooks import public_budget, unmask_webhooks
from pipeline.errors import PricingError, ValidationFailed
from pipeline.store.dashboard_reads import breaches as recent_breaches
from pipeline.stream.action_book import action_book_of
from pipeline.stream.holds import hold_book_of


def validation_message(exc: ValidationError) -> str:
    """One readable line per problem: `field: what is wrong`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'budget'}: {e['msg']}" for e in exc.errors()
    )


# a downgrade settles on the first cheaper model within its own budgets: at most this many
# are tried (each costs a read of that model's rooms)
MAX_DOWNGRADE_TRIES = 8
ATTR_PARAM = "attr."  # GET /api/decision?attr.api_key=...: an attribute of the request


async def rooms_for(processor: Any, req: DecisionRequest, names: set[str], now: datetime,
                    holds: HoldBook | None) -> list[Room]:
    """The rooms of every budget that applies to ``req``, after holds (the caller holds
    processor.lock, so spend and holds are read in one step)."""
    rooms = []
    for b in processor.book.for_tenant(req.tenant_id):
        if not applies(b, req, names):
            continue
        pools = [""] + ([req.value_tier] if req.value_tier in b.pools else [])
        key = "" if b.each is None else request_key(b.each, req)
        if key is None:
            # a template whose key the caller did not name: shown, not checked (the reason
            # says so), never denied on
            for pool in pools:
                rooms.append(Room(b.budget_id, pool, b.pool_limit(pool), Decimal(0), b.mode,
                                  b.metric, checked=False, each=b.each or ""))
            continue
        spent = await processor.budgets.spend_for(b, key, now)
        for pool in pools:
            held = holds.held((b.budget_id, pool, key)) if holds is not None else Decimal(0)
            rooms.append(Room(b.budget_id, pool, b.pool_limit(pool),
                              spent.get(pool, Decimal(0)), b.mode, b.metric, held=held,
                              key=key, each=b.each or ""))
    return rooms


async def _verified(processor: Any, catalog: Any, req: DecisionRequest, decision: Decision,
                    now: datetime, holds: HoldBook | None, *, demanded: bool,
                    actives: list[Any]) -> Decision:
    """A downgrade settled on a cheaper model within that model's own budgets (holds land
    there), the actions on those budgets applied; or the answer without a downgrade."""
    policy = processor.meter.policy
    for name, cost in downgrade_candidates(catalog, req, decision, now)[:MAX_DOWNGRADE_TRIES]:
        model = catalog.resolve(name)
        names = {name} if model is None else {name, model.model}
        rooms = await rooms_for(processor, replace(req, model=name), names, now, holds)
        settled = downgrade_within(req, decision, name, cost, rooms, policy)
        if settled is not None:
            return apply_actions(settled, actives, value_tier=req.value_tier, now=now) \
                if actives else settled
    if decision.decision != "downgrade":
        return decision
    return no_downgrade(req, decision, policy, demanded=demanded)


async def decide_now(runtime: Any, req: DecisionRequest, now: datetime,
                     holds: HoldBook | None = None,
                     then: Callable[[Decision], None] | None = None,
                     route: Verdict | None = None) -> tuple[int, Any]:
    """(200, (decision, rooms)) or (status, error JSON): rooms and the decision computed
    under the Processor's lock, and ``then`` (the reservation's hold) run in the same step;
    ``route``: the caller's router verdict (core/route_policy.py picks the model)."""
    processor = runtime.processor
    catalog = runtime.catalog
    names = [req.model] if route is None else [route.strong_model, route.weak_model]
    models = {name: catalog.resolve(name) for name in names}
    for name, model in models.items():
        if model is None:
            return 404, {"error": f"model {name!r} is not in the price catalog"}
    holds = holds if holds is not None else hold_book_of(processor.watchers)
    async with processor.lock:
        if holds is not None:
            holds.expire(now)
        # actions budgets put in force (forecast or anomaly breaches) tighten the answer
        # before a reservation holds anything: block denies, throttle denies its pool,
        # downgrade points to a cheaper model (and a routed request leans to its weak model)
        book = action_book_of(runtime)
        actives = book.active(now, req.tenant_id) if book is not None else []
        rooms = {name: await rooms_for(processor, replace(req, model=name),
                                       {name, model.model}, now, holds)
                 for name, model in models.items() if model is not None}
        try:
            if route is None:
                decision = decide(req, rooms[req.model], catalog, now, processor.meter.policy)
            else:
                decision = decide_routed(req, route, rooms[route.strong_model],
                                         rooms[route.weak_model], catalog, now,
                                         processor.meter.policy, actives)
        except PricingError as exc:
            return 404, {"error": exc.detail}
        asked = decision.decision
        if actives:
            decision = apply_actions(decision, actives, value_tier=req.value_tier, now=now,
                                     cheaper=downgrade_target(catalog, req, decision, now))
        decision = await _verified(processor, catalog, req, decision, now, holds,
                                   demanded=asked != "downgrade", actives=actives)
        if then is not None:
            then(decision)
    return 200, (decision, decision.rooms)


def register_budget_views(app: Any, runtime: Any) -> None:
    """Attach /api/budgets, /api/breaches and /api/decision."""
    processor = runtime.processor

    def _budget_json(b: Budget) -> dict[str, Any]:
        return public_budget(b)  # webhook URLs masked: a Slack URL's path is its secret

    @app.page("/api/budgets")
    class Budgets(View):
        async def get(self, request: Request) -> Response:
            tenant = request.query.get("tenant_id")
            items = [_budget_json(b) for b in sorted(processor.book.budgets.values(),
                                                      key=lambda b: b.budget_id)
                     if tenant is None or b.tenant_id == tenant]
            return self.json({"budgets": items})

    @app.page("/api/budgets/{budget_id}")
    class OneBudget(View):
        async def get(self, request: Request, budget_id: str) -> Response:
            b = processor.book.budgets.get(budget_id)
            if b is None:
                return self.json({"error": f"no budget {budget_id!r}"}, status=404)
            return self.json(_budget_json(b))

        async def put(self, request: Request, budget_id: str) -> Response:
            try:
                body = await request.json()
            except ValueError:
                return self.json({"error": "send a JSON budget"}, status=400)
            if not isinstance(body, dict):
                return self.json({"error": "send a JSON object"}, status=400)
            body["budget_id"] = budget_id
            # a budget read here and written back carries masked URLs: they keep the real ones
            unmask_webhooks(body, processor.book.budgets.get(budget_id))
            try:
                budget = Budget.model_validate(body)
            except ValidationError as exc:
                return self.json({"error": validation_message(exc)}, status=422)
            await runtime.publish_budget(budget_id, budget.model_dump_json().encode())
            await processor.budget_changed(budget_id, budget)
            return self.json(_budget_json(budget))

        async def delete(self, request: Request, budget_id: str) -> Response:
            if budget_id not in processor.book.budgets:
                return self.json({"error": f"no budget {budget_id!r}"}, status=404)
            await runtime.publish_budget(budget_id, None)
            await processor.budget_changed(budget_id, None)
            return self.json({"deleted": budget_id})

    @app.page("/api/breaches")
    class Breaches(View):
        async def get(self, request: Request) -> Response:
            try:
                limit = min(int(request.query.get("limit", "100")), 1000)
            except ValueError:
                return self.json({"error": "limit must be an integer"}, status=400)
            rows = await asyncio.to_thread(recent_breaches, runtime.store,
                                           request.query.get("tenant_id"), limit)
            return self.bytes(json.dumps({"breaches": rows}).encode(),
                              content_type="application/json")

    @app.page("/api/decision")
    class Decide(View):
        async def get(self, request: Request) -> Response:
            # Faust's routing reads tenant_id before any handler code: without it, a 500
            if not request.query.get("tenant_id"):
                return self.json({"error": "missing parameter tenant_id; need tenant_id, "
                                  "model, estimated_input_tokens, estimated_output_tokens"},
                                 status=400)
            response: Response = await self.routed(request)
            return response

        @app.topic_route(runtime.events_topic, query_param="tenant_id")  # type: ignore[untyped-decorator]
        async def routed(self, request: Request) -> Response:
            q = request.query
            attributes = {k[len(ATTR_PARAM):]: v for k, v in q.items()
                          if k.startswith(ATTR_PARAM)}
            try:
                route = verdict_from(q)
                # a routed request needs no model: the route picks one of its pair
                params = q if route is None else {
                    **q, "model": q.get("model") or route.strong_model}
                req = request_from(params, attributes)
            except ValidationFailed as exc:
                return self.json({"error": exc.detail}, status=400)
            now = runtime.clock()
            status, answer = await decide_now(runtime, req, now, route=route)
            if status != 200:
                return self.json(answer, status=status)
            decision, _ = answer
            return self.json({"tenant_id": req.tenant_id, **decision.as_json()})


def register_forecast_view(app: Any, runtime: Any) -> None:
    """POST /api/forecast {"budget_id": optional}: run the forecast job now."""
    from pipeline.runtime.forecast_job import summary

    @app.page("/api/forecast")
    class RunForecast(View):
        async def post(self, request: Request) -> Response:
            try:
                body = await request.json() if await request.read() else {}
            except ValueError:
                return self.json({"error": 'send JSON {"budget_id": "..."} or nothing'},
                                 status=400)
            budget_id = body.get("budget_id") if isinstance(body, dict) else None
            if budget_id is not None and budget_id not in runtime.processor.book.budgets:
                return self.json({"error": f"no budget {budget_id!r}"}, status=404)
            forecasts, breaches = await runtime.forecast(budget_id)
            return self.bytes(json.dumps({
                "forecasts": [summary(f) for f in forecasts],
                "breaches": [b.model_dump(mode="json") for b in breaches],
            }).encode(), content_type="application/json")
