"""Worker HTTP API: health, metrics, read-only query (thin adapters over the core)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from faust.web import Request, Response, View

from pipeline.errors import QueryRefused, StoreError
from pipeline.store.queries import run_read_only
from pipeline.web import auth


def _failure_kind(failure: str) -> str:
    """The failure's first words (what failed), without values from data."""
    return failure.split(":", 1)[0] + ": details from an allowed Host (see the worker log)"


def register_views(app: Any, runtime: Any) -> None:
    """Attach the API views to the Faust web server of ``app``."""

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            # a crashed agent, or an insert ClickHouse refused for good (the sink does not
            # retry it): either way nothing more is metered, so say so at once
            failure = runtime.failure or runtime.processor.sink.failure
            failed = dict(runtime.processor.failed_budgets)
            # probes reach /health by any Host (pod IPs), so a page using DNS rebinding could
            # too: budget ids and error texts only for an allowed Host (and the token, if set)
            private = auth.may_see_details(request.headers, runtime.settings)
            failed_budgets: Any = failed if private else len(failed)
            if failure:
                return self.json({"status": "failed",
                                  "error": failure if private else _failure_kind(failure),
                                  "failed_budgets": failed_budgets}, status=503)
            if not runtime.ready:
                return self.json({"status": "starting"}, status=503)
            m = runtime.processor.metrics
            return self.json({
                "status": "ready",
                "messages": m.messages,
                "events": m.events,
                "dead_letters": sum(m.dead.values()),
                "sink_healthy": runtime.processor.sink.healthy,
                # budgets skipped (invalid, or their evaluation raised) while metering goes on
                "failed_budgets": failed_budgets,
            })

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            m = runtime.processor.metrics
            lines = [
                "# TYPE tokenmeter_messages_total counter",
                f"tokenmeter_messages_total {m.messages}",
                "# TYPE tokenmeter_events_total counter",
                f"tokenmeter_events_total {m.events}",
                "# TYPE tokenmeter_duplicate_events_total counter",
                f"tokenmeter_duplicate_events_total {m.duplicates}",
                "# TYPE tokenmeter_moved_events_total counter",
                f"tokenmeter_moved_events_total {m.moved}",
                "# TYPE tokenmeter_late_events_total counter",
                f"tokenmeter_late_events_total {m.late}",
                "# TYPE tokenmeter_sink_rows_total counter",
                f"tokenmeter_sink_rows_total {runtime.processor.sink.rows_written}",
                "# TYPE tokenmeter_sink_failures_total counter",
                f"tokenmeter_sink_failures_total {runtime.processor.sink.failures}",
                "# TYPE tokenmeter_assigned_partitions gauge",
                f"tokenmeter_assigned_partitions {len(runtime.processor.live.partitions)}",
                "# TYPE tokenmeter_dead_letters_total counter",
            ]
            lines += [
                f'tokenmeter_dead_letters_total{{reason_code="{r}"}} {n}'
                for r, n in sorted(m.dead.items())
            ]
            return self.text("\n".join(lines) + "\n",
                             content_type="text/plain; version=0.0.4")

    @app.page("/api/query")
    class Query(View):
        async def post(self, request: Request) -> Response:
            try:
                body = await request.json()
                sql = body["sql"]
                if not isinstance(sql, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                return self.json({"error": 'send JSON {"sql": "SELECT ..."}'}, status=400)
            try:
                result = await asyncio.to_thread(run_read_only, runtime.store, sql)
            except QueryRefused as exc:
                return self.json({"error": str(exc)}, status=400)
            except StoreError as exc:
                return self.json({"error": str(exc)}, status=422)
            return self.bytes(
                json.dumps({"columns": result.columns, "rows": result.rows}).encode(),
                content_type="application/json",
            )


def register_spend_view(app: Any, runtime: Any) -> None:
    """GET /api/tenants/{tenant_id}/spend, routed to the worker owning the tenant's partition."""
    from datetime import datetime

    from pipeline.core.spend import WINDOWS, SpendTotals, window_bounds

    @app.page("/api/tenants/{tenant_id}/spend")
    class Spend(View):
        @app.topic_route(runtime.events_topic, match_info="tenant_id")  # type: ignore[untyped-decorator]
        async def get(self, request: Request, tenant_id: str) -> Response:
            kind = request.query.get("window", "hour")
            if kind not in WINDOWS:
                return self.json({"error": "window must be hour or day"}, status=400)
            at_text = request.query.get("at")
            try:
                at = (datetime.fromisoformat(at_text.replace("Z", "+00:00")) if at_text
                      else runtime.clock())
            except ValueError:
                return self.json({"error": "at must be an RFC 3339 time"}, status=400)
            if at.tzinfo is None:
                return self.json({"error": "at needs a UTC offset"}, status=400)
            start, end = window_bounds(kind, at)
            totals = runtime.processor.live.window(tenant_id, kind, at) or SpendTotals()
            return self.json({
                "tenant_id": tenant_id, "window": kind,
                "window_start": start.isoformat(), "window_end": end.isoformat(),
                **totals.as_json(),
            })


def register_ops_view(app: Any, runtime: Any) -> None:
    """POST /api/ops/{name}: store operations the CLI runs through a worker holding chDB."""

    from pipeline.errors import TokenmeterError
    from pipeline.runtime.ops import OPS, OpContext, export_focus_bytes
    async def publish(key: str, value: bytes) -> None:
        # the agent's own events topic (declared once, in stream.app)
        fut = await runtime.events_topic.send(key=key.encode(), value=value)
        await fut

    async def refresh_live_state() -> None:
        # re-priced rows changed the ledger under the live windows and budget trackers of
        # this worker's partitions: reload them from the ledger (other workers reload theirs
        # at their next rebalance)
        processor = runtime.processor
        await processor.rebuild(set(processor.live.partitions))

    exports_dir = runtime.settings.data_dir / "exports"

    @app.page("/api/ops/{name}")
    class Ops(View):
        async def post(self, request: Request, name: str) -> Response:
            op = OPS.get(name)
            if op is None:
                return self.json({"error": f"no operation {name!r}"}, status=404)
            try:
                body = await request.json() if await request.read() else {}
            except ValueError:
                return self.json({"error": "send a JSON object"}, status=400)
            body = body if isinstance(body, dict) else {}
            # an HTTP caller may be anyone who reaches the port: files stay in exports/
            ctx = OpContext(runtime.settings, runtime.store, publish, runtime.clock(),
                            exports_dir=exports_dir, after_reprice=refresh_live_state)
            try:
                if name == "export_focus" and not body.get("file"):
                    data, content_type, summary = await export_focus_bytes(ctx, body)
                    return self.bytes(data, content_type=content_type, headers={
                        "X-Tokenmeter-Rows": str(summary["rows"]),
                        "X-Tokenmeter-Billed-Cost": summary["billed_cost"]})
                result = await op(ctx, body)
            except TokenmeterError as exc:
                return self.json({"error": str(exc)}, status=400)
            return self.bytes(json.dumps(result, default=str).encode(),
                              content_type="application/json")
