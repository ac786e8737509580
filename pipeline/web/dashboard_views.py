"""The live dashboard: GET / (a static page) and the JSON it polls under /api/dashboard/.

The page, its script and Chart.js carry no tenant data, so they are served like /health; all
data comes from /api routes, which need the bearer token whenever one is configured.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from faust.web import Request, Response, View

from pipeline.core.budgets import Budget, Period, period_bounds
from pipeline.core.dashboard import (
    burn_down,
    cumulative,
    failed_view,
    key_views,
    near_limits,
    per_minute,
)
from pipeline.core.forecast import bucket_step
from pipeline.store import dashboard_reads as reads
from pipeline.store import ledger
from pipeline.web.auth import PAGE_PATHS

STATIC = Path(__file__).resolve().parent / "static"
CHART_JS = "vendor/chart.umd.min.js"
TYPES = {".html": "text/html", ".js": "text/javascript",
         ".css": "text/css"}


def _json(view: View, payload: Any) -> Response:
    return view.bytes(json.dumps(payload, default=str).encode(),
                      content_type="application/json")


def register_dashboard(app: Any, runtime: Any) -> None:
    """Attach the dashboard page, its static files and its JSON views."""
    processor = runtime.processor
    store = runtime.store

    def period_spent(b: Budget, start: datetime, end: datetime) -> Decimal:
        # the owning worker tracks it live; another worker reads the exact ledger
        ps = processor.tracker.get(b.budget_id, start)
        if ps is not None:
            return Decimal(ps.spent.get("", Decimal(0)))
        return Decimal(sum(ledger.period_spend(store, b, start, end).values(), Decimal(0)))

    def budget_views(budgets: list[Budget], now: datetime, series: bool,
                     tenant: str | None = None) -> list[dict[str, Any]]:
        # failed budgets (any worker's, this one's freshest) show their reason, not a chart
        stored = reads.budget_failures(store)
        failed = {k: reason for k, (_, reason) in stored.items()} | processor.failed_budgets
        out = [failed_view(b.budget_id, b.tenant_id, failed[b.budget_id], b)
               for b in budgets if b.budget_id in failed]
        out += [failed_view(k, t, reason) for k, (t, reason) in stored.items()
                if k not in processor.book.budgets and tenant in (None, t)]  # invalid ones
        budgets = [b for b in budgets if b.budget_id not in failed]
        periods = {b.budget_id: period_bounds(b.period, b.tz, now) for b in budgets}
        forecasts = reads.latest_forecasts(store, budgets,
                                           {k: v[0] for k, v in periods.items()})
        for b in budgets:
            start, end = periods[b.budget_id]
            if b.each is not None:
                out.append(template_view(b, start, end, now))
                continue
            spent = period_spent(b, start, end)
            actual: list[Any] = []
            if series:
                step = bucket_step(b)
                hourly = step == timedelta(hours=1)
                history = ledger.bucket_history(store, b, start, now, hourly=hourly)
                actual = cumulative([(ts, Decimal(a)) for ts, a in history], start, step, now)
            view = burn_down(b, start, end, spent, actual, forecasts.get(b.budget_id))
            if not series:
                view.pop("actual")
                if view["forecast"]:
                    view["forecast"].pop("points")
            out.append(view)
        return sorted(out, key=lambda v: str(v["budget_id"]))

    def keys_of(b: Budget, start: datetime, end: datetime, now: datetime,
                top: int = 20) -> list[dict[str, Any]]:
        # a run's keys: runs with an event within the idle timeout; a template's: the period's
        since = now - timedelta(seconds=b.idle_timeout_s) if b.period is Period.run else start
        return key_views(b, reads.active_keys(store, b, start, end, since, top), now)

    def template_view(b: Budget, start: datetime, end: datetime,
                      now: datetime) -> dict[str, Any]:
        # every key value has its own limit: the template stands as its most-spent key, and
        # lists its keys instead of one burn-down (a run's "period" is each run's lifetime)
        keys = keys_of(b, start, end, now, top=10)
        view = burn_down(b, start, end, Decimal(keys[0]["spent"]) if keys else Decimal(0), [],
                         None)
        view.pop("actual")
        view.update(each=b.each, keys=keys, top_key=keys[0]["key"] if keys else None)
        if b.period is Period.run:
            view.update(period_start=None, period_end=None)
        return view

    def runaway(now: datetime) -> dict[str, Any]:
        views: list[dict[str, Any]] = []
        for b in sorted_budgets():
            if b.each is None or b.budget_id in processor.failed_budgets:
                continue
            start, end = period_bounds(b.period, b.tz, now)
            views.extend(keys_of(b, start, end, now))
        return {"near_limits": near_limits(v for v in views if v["status"] != "closed"),
                "active_keys": sum(1 for v in views if v["status"] != "closed"),
                "anomalies": reads.breaches(store, None, 20, kind="anomaly")}

    def sorted_budgets(tenant: str | None = None) -> list[Budget]:
        return sorted((b for b in processor.book.budgets.values()
                       if tenant is None or b.tenant_id == tenant), key=lambda b: b.budget_id)

    @app.page("/")
    class Page(View):
        async def get(self, request: Request) -> Response:
            return self.bytes((STATIC / "index.html").read_bytes(), content_type=TYPES[".html"])

    @app.page("/static/{name:.+}")
    class Static(View):
        async def get(self, request: Request, name: str) -> Response:
            path = (STATIC / name).resolve()
            if f"/static/{name}" not in PAGE_PATHS or not path.is_file():
                if name == CHART_JS:
                    return self.text("Chart.js is not built: run `make assets` (npm ci)",
                                     status=503)
                return self.text("not found", status=404)
            return self.bytes(path.read_bytes(), content_type=TYPES[path.suffix],
                              headers={"Cache-Control": "max-age=300"})

    @app.page("/api/dashboard/overview")
    class Overview(View):
        async def get(self, request: Request) -> Response:
            now = runtime.clock()

            def read() -> dict[str, Any]:
                data = reads.overview(store, now)
                data["rate"] = [[int(ts.timestamp() * 1000), n, format(c, "f")]
                                for ts, n, c in per_minute(reads.minute_rows(store, now), now)]
                data["budgets"] = {"total": len(processor.book.budgets)}
                return data

            return _json(self, {"now": now.isoformat(), **await asyncio.to_thread(read)})

    @app.page("/api/dashboard/budgets")
    class BudgetList(View):
        async def get(self, request: Request) -> Response:
            now = runtime.clock()
            tenant = request.query.get("tenant_id")
            items = await asyncio.to_thread(budget_views, sorted_budgets(tenant), now, False,
                                            tenant)
            return _json(self, {"now": now.isoformat(), "budgets": items})

    @app.page("/api/dashboard/tenants/{tenant_id}")
    class Tenant(View):
        async def get(self, request: Request, tenant_id: str) -> Response:
            now = runtime.clock()
            budgets = sorted_budgets(tenant_id)

            def read() -> dict[str, Any]:
                return {"tenant_id": tenant_id, "now": now.isoformat(),
                        **reads.tenant_spend(store, tenant_id, now),
                        "budgets": budget_views(budgets, now, True, tenant_id),
                        "breaches": reads.breaches(store, tenant_id, 20)}

            return _json(self, await asyncio.to_thread(read))

    @app.page("/api/dashboard/runaway")
    class Runaway(View):
        async def get(self, request: Request) -> Response:
            now = runtime.clock()
            return _json(self, {"now": now.isoformat(),
                                **await asyncio.to_thread(runaway, now)})

    @app.page("/api/dashboard/breaches")
    class Feed(View):
        async def get(self, request: Request) -> Response:
            try:
                limit = max(1, min(int(request.query.get("limit", "50")), 500))
            except ValueError:
                return self.json({"error": "limit must be an integer"}, status=400)
            rows = await asyncio.to_thread(reads.breaches, store,
                                           request.query.get("tenant_id"), limit)
            return _json(self, {"breaches": rows})
