"""HTTP views for automated actions: reset a budget's actions, list the active ones.

``POST /api/budgets/{budget_id}/reset`` (JSON body required: ``{"budget_id": ID}``, what
`tokenmeter budget reset ID` sends; ``{}`` also works) lifts every active action of the
budget on every worker (written to budget_actions; other workers see it within
actions_refresh_s). ``GET /api/actions?tenant_id=`` lists the active actions.
"""

from __future__ import annotations

import json
from typing import Any

from faust.web import Request, Response, View

from pipeline.core.actions import action_json
from pipeline.stream.action_book import ActionBook


def reset_problem(raw: bytes, budget_id: str) -> str | None:
    """What is wrong with a reset request's body (None: nothing)."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f'send a JSON object, e.g. {{"budget_id": "{budget_id}"}}'
    named = body.get("budget_id", budget_id)
    if named != budget_id:
        return (f"the body names budget {str(named)[:80]!r} but the URL names "
                f"{budget_id!r}: they must agree")
    return None


def register_action_views(app: Any, runtime: Any, actions: ActionBook) -> None:
    """Attach POST /api/budgets/{budget_id}/reset and GET /api/actions."""

    @app.page("/api/budgets/{budget_id}/reset")
    class Reset(View):
        async def post(self, request: Request, budget_id: str) -> Response:
            problem = reset_problem(await request.read(), budget_id)
            if problem is not None:
                return self.json({"error": problem}, status=400)
            now = runtime.clock()
            try:
                lifted = await actions.reset(budget_id, now)
            except Exception as exc:
                return self.json({"error": f"cannot write budget_actions ({type(exc).__name__})"
                                  "; check ClickHouse and retry the reset"}, status=503)
            if not lifted and budget_id not in runtime.processor.book.budgets:
                return self.json({"error": f"no budget {budget_id!r}"}, status=404)
            return self.json({"budget_id": budget_id, "at": now.isoformat(),
                              "reset": [action_json(a) for a in lifted]})

    @app.page("/api/actions")
    class Actions(View):
        async def get(self, request: Request) -> Response:
            now = runtime.clock()
            found = actions.active(now, tenant_id=request.query.get("tenant_id"),
                                   budget_id=request.query.get("budget_id"))
            return self.json({"actions": [action_json(a) for a in found]})
