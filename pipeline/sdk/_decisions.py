"""Asking a worker before a call: ``decide`` (GET /api/decision) and ``reserve`` /
``Reservation`` (POST /api/reservations, a hold the block's events take their cost out of).

Re-exported by ``pipeline.sdk``; the producers stamp events with the open reservation
(``_stamp_reservation``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from pipeline.errors import ValidationFailed
from pipeline.sdk._records import current_run

if TYPE_CHECKING:
    from pipeline.sdk.routing import Route

# the package's name, as when this code lived in pipeline/sdk/__init__.py
log = logging.getLogger("pipeline.sdk")


def decide(base_url: str, *, tenant_id: str, model: str, estimated_input_tokens: int,
           estimated_output_tokens: int, value_tier: str = "standard",
           api_token: str | None = None, timeout: float = 2.0, route: Route | None = None,
           **scope: str) -> dict[str, Any]:
    """Ask a worker for an admission decision (allow / downgrade / deny); inside
    ``meter_run`` it names the run; ``route``: a local Route's verdict goes with it (the
    answer's ``route`` then says which tier the budgets allow)."""
    named: dict[str, Any] = dict(scope)
    if route is not None:
        named.update(route.decision_params())
    run = current_run()
    if run:
        named["trace_id"] = named.get("trace_id") or run
        named.setdefault("attr.run_id", run)
    query = urllib.parse.urlencode({
        "tenant_id": tenant_id, "model": model, "value_tier": value_tier,
        "estimated_input_tokens": estimated_input_tokens,
        "estimated_output_tokens": estimated_output_tokens, **named})
    headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
    req = urllib.request.Request(f"{base_url.rstrip('/')}/api/decision?{query}",  # noqa: S310
                                 headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - caller's URL
        result: dict[str, Any] = json.loads(resp.read())
        return result


_current: contextvars.ContextVar[Reservation | None] = contextvars.ContextVar(
    "tokenmeter_reservation", default=None)


def _stamp_reservation(fields: dict[str, Any]) -> Reservation | None:
    """Inside ``with reserve(...)``: the event carries the reservation's id; the
    reservation, to count the event once it is queued (None outside a block)."""
    r = _current.get()
    if r is not None and r.reservation_id and "reservation_id" not in fields:
        fields["reservation_id"] = r.reservation_id
        if r.route is not None:
            fields.setdefault("route", r.route)
        return r
    return None


def _call_api(method: str, url: str, body: dict[str, Any] | None, api_token: str | None,
              timeout: float) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}  # the API refuses mutations without it
    if api_token:
        headers["Authorization"] = f"Bearer {api_token}"
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - caller's URL
            answer: dict[str, Any] = json.loads(resp.read())
            return answer
    except urllib.error.HTTPError as exc:
        if exc.code in (400, 404, 422, 429):
            try:
                detail = str(json.loads(exc.read()).get("error"))
            except ValueError:
                detail = exc.reason
            raise ValidationFailed("bad_request", f"{method} {url}: {exc.code} {detail}") \
                from None
        raise


class Reservation:
    """An answer of POST /api/reservations; a context manager whose events take their
    actual cost out of the hold, and whose exit releases the rest once they are counted."""

    def __init__(self, answer: dict[str, Any], base_url: str, api_token: str | None,
                 timeout: float, route: Route | None = None) -> None:
        self.answer = answer
        # reserve(route=...): the route the answer allows; the block's events carry it
        self.route = route.settle(answer) if route is not None else None
        self.decision: str = answer["decision"]
        self.reservation_id: str | None = answer.get("reservation_id")
        # the model to call: the suggested one when the answer is downgrade
        self.model: str = (answer.get("suggested_model") or answer["model"]
                           if self.decision == "downgrade" else answer["model"])
        self.events = 0  # events queued inside the block with this reservation's id
        self._url = base_url.rstrip("/")
        self._token = api_token
        self._timeout = timeout
        self._tenant = answer.get("tenant_id", "")
        self._reset: contextvars.Token[Reservation | None] | None = None

    def release(self, after_events: int | None = None) -> bool:
        """Release the hold now, or once ``after_events`` events with its id are counted
        (the worker keeps it for calls in flight); False when none was open (used up,
        expired, released)."""
        if not self.reservation_id:
            return False
        params: dict[str, Any] = {"tenant_id": self._tenant}
        if after_events:
            params["after_events"] = after_events
        query = urllib.parse.urlencode(params)
        rid = urllib.parse.quote(self.reservation_id, safe="")
        try:
            _call_api("DELETE", f"{self._url}/api/reservations/{rid}?{query}", None,
                      self._token, self._timeout)
        except ValidationFailed:
            return False
        except OSError as exc:  # HTTPError, URLError, timeouts: the call was already paid for
            # never raise out of the caller's block over this: the hold ends at its TTL
            log.warning("could not release reservation %s (%s); it expires at its TTL",
                        self.reservation_id, exc)
            return False
        return True

    def __enter__(self) -> Reservation:
        self._reset = _current.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._reset is not None:
            _current.reset(self._reset)
            self._reset = None
        # the events queued inside reach the worker after this call, maybe: it ends the
        # hold when it has counted them, so a call still reporting stays held
        self.release(after_events=self.events)


def reserve(base_url: str, *, tenant_id: str, model: str, estimated_input_tokens: int,
            estimated_output_tokens: int, api_token: str | None = None, timeout: float = 5.0,
            route: Route | None = None, **params: Any) -> Reservation:
    """POST /api/reservations: hold an estimate (other decision parameters, ``attributes``
    and ``ttl_s`` as keywords); inside ``meter_run`` it names the run as its events do
    (``trace_id`` and ``attributes.run_id``, unless given), so run budgets apply; ``route``:
    a local Route's verdict goes with it, and the block's events carry the settled route."""
    run = current_run()
    if run:
        params["trace_id"] = params.get("trace_id") or run
        params["attributes"] = {"run_id": run, **(params.get("attributes") or {})}
    body = {"tenant_id": tenant_id, "model": model,
            "estimated_input_tokens": estimated_input_tokens,
            "estimated_output_tokens": estimated_output_tokens, **params,
            **(route.decision_params() if route is not None else {})}
    query = urllib.parse.urlencode({"tenant_id": tenant_id})  # routes to the owning worker
    url = f"{base_url.rstrip('/')}/api/reservations?{query}"
    for attempt in range(RESERVE_ATTEMPTS):
        try:
            answer = _call_api("POST", url, body, api_token, timeout)
            break
        except urllib.error.HTTPError as exc:
            # 503: the tenant's owner is not known yet or moving (a rebalance, a worker
            # starting): worth the short wait it asks for; anything else is the caller's
            if exc.code != 503 or attempt == RESERVE_ATTEMPTS - 1:
                raise
            time.sleep(_retry_after(exc))
    return Reservation(answer, base_url, api_token, timeout, route)


RESERVE_ATTEMPTS = 4  # a 503 answer is retried up to 3 times, after its Retry-After


def _retry_after(exc: urllib.error.HTTPError) -> float:
    """The wait a 503 asks for, in seconds (1 when it names none; at most 5)."""
    try:
        return min(5.0, max(0.0, float(exc.headers.get("Retry-After", "1"))))
    except (TypeError, ValueError):
        return 1.0
