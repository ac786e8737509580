"""HTTP views for budgets, breaches and admission decisions."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from faust.web import Request, Response, View
from pydantic import ValidationError

from pipeline.core.budgets import Budget
from pipeline.core.decision import Request as DecisionRequest
from pipeline.core.decision import Room, applies, decide
from pipeline.errors import PricingError
from pipeline.store.dashboard_reads import breaches as recent_breaches


def validation_message(exc: ValidationError) -> str:
    """One readable line per problem: `field: what is wrong`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'budget'}: {e['msg']}" for e in exc.errors()
    )


def register_budget_views(app: Any, runtime: Any) -> None:
    """Attach /api/budgets, /api/breaches and /api/decision."""
    processor = runtime.processor

    def _budget_json(b: Budget) -> dict[str, Any]:
        return b.model_dump(mode="json")

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
            try:
                req = DecisionRequest(
                    tenant_id=q["tenant_id"], model=q["model"],
                    value_tier=q.get("value_tier", "standard"),
                    input_tokens=int(q.get("estimated_input_tokens", "0")),
                    output_tokens=int(q.get("estimated_output_tokens", "0")),
                    project_id=q.get("project_id"), user_id=q.get("user_id"),
                    feature=q.get("feature"), task_type=q.get("task_type"))
            except (KeyError, ValueError) as exc:
                return self.json({"error": f"bad or missing parameter: {exc}; need tenant_id, "
                                  "model, estimated_input_tokens, estimated_output_tokens"},
                                 status=400)
            if req.input_tokens < 0 or req.output_tokens < 0:
                return self.json({"error": "token estimates must not be negative"}, status=400)
            now = runtime.clock()
            catalog = runtime.catalog
            model = catalog.resolve(req.model)
            if model is None:
                return self.json({"error": f"model {req.model!r} is not in the price catalog"},
                                 status=404)
            rooms = await _rooms(req, {req.model, model.model}, now)
            try:
                decision = decide(req, rooms, catalog, now)
            except PricingError as exc:
                return self.json({"error": exc.detail}, status=404)
            return self.json({"tenant_id": req.tenant_id, **decision.as_json()})

    async def _rooms(req: DecisionRequest, names: set[str], now: datetime) -> list[Room]:
        rooms = []
        for b in processor.book.for_tenant(req.tenant_id):
            if not applies(b, req, names):
                continue
            async with processor.lock:
                spent = await processor.budgets.spend_for(b, "", now)
            pools = [""] + ([req.value_tier] if req.value_tier in b.pools else [])
            for pool in pools:
                rooms.append(Room(b.budget_id, pool, b.pool_limit(pool),
                                  spent.get(pool, Decimal(0)), b.mode, b.metric))
        return rooms


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
