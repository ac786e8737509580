"""HTTP views for reservations: hold an estimate against every applicable budget room.

``POST /api/reservations`` (JSON body: the decision API's parameters, both token estimates
required, ``attributes`` as an object, optional ``ttl_s``) decides and holds in one step
under the Processor's lock, so N concurrent reservations cannot all see the same room.
``DELETE /api/reservations/{id}`` releases a hold: at once, or with ``?after_events=N`` once
the N events recorded with its id are counted. Holds live in the worker that owns the
tenant's partition (the one that counts its events and so settles them): a request that
reaches another worker is forwarded there with its body (``?tenant_id=`` in the URL, which
the SDK always sends, lets a DELETE be forwarded too). Only the owner ever answers: when
it is not known, not reachable, or a forwarded request lands on a non-owner again, the
answer is 503 (retry), never a local hold that the owner would not see.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import ClientError, ClientTimeout
from faust.web import Request, Response, View

from pipeline.core.decision import Decision, request_from, room_json
from pipeline.core.reservations import HoldBook, hold_amounts, hold_metrics, ttl
from pipeline.core.route_policy import verdict_from
from pipeline.errors import ValidationFailed
from pipeline.web.budgets_api import decide_now

# set on a forwarded request: a worker that gets it and does not own the tenant answers 503
# (it is never forwarded again, and never answered locally, whoever set it)
FORWARDED = "X-Tokenmeter-Forwarded"
FORWARD_TIMEOUT = ClientTimeout(total=10)  # a hung owner: 503, not a hung client


def register_reservation_views(app: Any, runtime: Any, holds: HoldBook) -> None:
    """Attach POST /api/reservations and DELETE /api/reservations/{reservation_id}."""
    processor = runtime.processor
    settings = runtime.settings

    async def forwarded(view: View, request: Request, tenant: str | None,
                        body: bytes) -> Response | None:
        """The owner's answer when another worker owns the tenant (503 when it is unknown
        or unreachable); None: this worker owns it, answer here."""
        if not tenant or processor.budgets.owns(tenant):
            return None
        unavailable = view.json(
            {"error": f"this worker does not own tenant {tenant[:80]!r} and its owner is "
             "unknown or unreachable (partitions moving?); retry"}, status=503,
            headers={"Retry-After": "1"})
        if request.headers.get(FORWARDED):
            return unavailable  # sent here by a worker that took us for the owner
        try:
            dest = app.router.external_topic_key_store(runtime.events_topic, tenant)
        except (KeyError, AttributeError):
            return unavailable  # assignment not known yet
        if not dest.host:
            return unavailable
        url = request.url.with_host(dest.host).with_port(int(dest.port or 80))
        if (url.host, url.port) == (request.url.host, request.url.port):
            return unavailable  # the router names this worker, which does not own it
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        headers[FORWARDED] = "1"
        try:
            async with app.http_client.request(method=request.method, url=url,
                                               headers=headers, data=body,
                                               timeout=FORWARD_TIMEOUT) as resp:
                answer: Response = view.bytes(await resp.read(), status=resp.status,
                                              content_type=resp.content_type)
                return answer
        except (ClientError, OSError, asyncio.TimeoutError):
            return unavailable

    @app.page("/api/reservations")
    class Reservations(View):
        async def post(self, request: Request) -> Response:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return self.json({"error": "send a JSON object with the decision API's "
                                  "parameters (tenant_id, model, estimated_input_tokens, "
                                  "estimated_output_tokens, ...)"}, status=400)
            tenant = body.get("tenant_id")
            in_url = request.query.get("tenant_id")
            if in_url is not None and in_url != tenant:
                return self.json({"error": f"?tenant_id={in_url[:80]!r} names another tenant "
                                  "than the body's tenant_id"}, status=400)
            answer = await forwarded(self, request, tenant if isinstance(tenant, str) else None,
                                     raw)
            if answer is not None:
                return answer
            attributes = body.get("attributes") or {}
            if not isinstance(attributes, dict):
                return self.json({"error": "attributes must be a JSON object of strings"},
                                 status=400)
            try:
                route = verdict_from(body)
                if route is not None:  # a routed request needs no model: the route picks one
                    body["model"] = body.get("model") or route.strong_model
                req = request_from(body, attributes, estimates_required=True)
                life = ttl(body.get("ttl_s"), settings.reservation_ttl_s,
                           settings.reservation_max_ttl_s)
            except ValidationFailed as exc:
                return self.json({"error": exc.detail}, status=400)
            now = runtime.clock()
            expires_at = now + life
            reservation_id = str(uuid.uuid4())
            held: dict[str, Any] = {}

            def hold(d: Decision) -> None:
                # inside the lock, right after the decision: nobody sees the room in between
                amounts = hold_amounts(d, req, processor.meter.policy)
                if d.decision != "deny":
                    held["hold"] = holds.hold(reservation_id, req.tenant_id, amounts,
                                              expires_at, hold_metrics(d))

            try:
                status, result = await decide_now(runtime, req, now, holds, then=hold,
                                                  route=route)
            except ValidationFailed as exc:  # too many open holds
                return self.json({"error": exc.detail}, status=429)
            if status != 200:
                return self.json(result, status=status)
            decision, _ = result
            amounts = held["hold"].amounts if "hold" in held else {}
            after = [room_json(r) | {
                "held": format(r.held + amounts.get(r.ident, 0), "f"),
                "remaining": format(max(r.remaining - amounts.get(r.ident, 0), 0), "f"),
                "hold": format(amounts.get(r.ident, 0), "f")} for r in decision.rooms]
            out = decision.as_json() | {
                "tenant_id": req.tenant_id,
                "reservation_id": reservation_id if "hold" in held else None,
                "expires_at": expires_at.isoformat() if "hold" in held else None,
                "remaining": after,
            }
            return self.json(out)

    @app.page("/api/reservations/{reservation_id}")
    class OneReservation(View):
        async def delete(self, request: Request, reservation_id: str) -> Response:
            after = request.query.get("after_events")
            if after is not None and not (after.isascii() and after.isdigit()
                                          and len(after) <= 9):
                return self.json({"error": "after_events must be a whole number (the events "
                                  f"recorded with the reservation's id), got {after[:40]!r}"},
                                 status=400)
            answer = await forwarded(self, request, request.query.get("tenant_id"), b"")
            if answer is not None:
                return answer
            async with processor.lock:
                released = holds.release(reservation_id,
                                         None if after is None else int(after))
                waiting = reservation_id in holds.holds  # events still in flight
            if released is None:
                return self.json({"error": f"no open reservation {reservation_id[:80]!r} "
                                  "here (used up or settled by its events, expired, or "
                                  "released)"}, status=404)
            if waiting:
                return self.json({"releasing": reservation_id,
                                  "events_counted": released.events,
                                  "after_events": released.release_after}, status=202)
            return self.json({"released": reservation_id})
