"""Python SDK for producers: record usage events without writing JSON by hand.

    from pipeline.sdk import UsageProducer

    with UsageProducer(bootstrap_servers="127.0.0.1:9092") as meter:
        meter.record(tenant_id="acme", provider="openai", model="gpt-4o",
                     input_tokens=1200, output_tokens=300, feature="search")

Anthropic reports ``input_tokens`` without the cache reads and writes (ours include them) and
splits writes by lifetime; ``anthropic_usage`` maps its usage object onto our fields::

    meter.record(tenant_id="acme", provider="anthropic", model=resp.model,
                 **anthropic_usage(resp.usage))

Reservations hold an estimate against the tenant's budgets before a call (the worker's
``POST /api/reservations``); events recorded inside the block carry its ``reservation_id``
and each takes its actual cost out of the hold; leaving the block releases the rest once
those events are counted (at once when there were none). Inside ``meter_run`` the
reservation names the run (``trace_id`` and ``attributes.run_id``, as the run's events do)::

    with UsageProducer("127.0.0.1:9092", api_url="http://127.0.0.1:6066") as meter:
        with meter.reserve(tenant_id="acme", model="gpt-4o", estimated_input_tokens=2000,
                           estimated_output_tokens=500) as r:
            if r.decision != "deny":
                meter.record(tenant_id="acme", provider="openai", model=r.model, ...)

Events get an ``event_id`` (UUID) and a UTC timestamp, are validated before sending (a bad
event raises ``ValidationFailed`` at the call site, not in the pipeline), and go out as batch
envelopes of up to ``batch_size`` events per tenant or after ``linger_ms``.

Outcomes report how a metered call went (``success``, a ``score`` in [0, 1], an end user's
``feedback``), by the ``event_id`` ``record`` returned; they go to the ``usage-outcomes``
topic (docs/routing.md, "Outcomes")::

    event_id = meter.record(tenant_id="acme", provider="openai", model=route.model, ...)
    meter.outcome(event_id=event_id, tenant_id="acme", success=tests_passed)
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timezone
from typing import Any

from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.outcomes import validate_outcome
from pipeline.core.validate import validate_event
from pipeline.errors import PricingError, ValidationFailed
from pipeline.stream.topics import PRODUCER_SIZES

log = logging.getLogger(__name__)


def _field(obj: Any, name: str) -> Any:
    """Attribute or key: the anthropic SDK hands out pydantic objects, raw JSON is dicts."""
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _tokens(obj: Any, name: str) -> int:
    value = _field(obj, name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def anthropic_usage(usage: Any) -> dict[str, int]:
    """``record`` keyword arguments from an Anthropic Messages ``usage`` (object or dict).

    Anthropic's ``input_tokens`` excludes cache reads and writes: ours is their sum. All
    writes are ``cache_creation_input_tokens`` (else the 5m + 1h split), the 1-hour part
    ``usage.cache_creation.ephemeral_1h_input_tokens``.
    """
    read = _tokens(usage, "cache_read_input_tokens")
    split = _field(usage, "cache_creation")
    one_hour = _tokens(split, "ephemeral_1h_input_tokens")
    written = (_tokens(usage, "cache_creation_input_tokens")
               if _field(usage, "cache_creation_input_tokens") is not None
               else _tokens(split, "ephemeral_5m_input_tokens") + one_hour)
    out = {"input_tokens": _tokens(usage, "input_tokens") + read + written,
           "output_tokens": _tokens(usage, "output_tokens")}
    if read:
        out["cache_read_input_tokens"] = read
    if written:
        out["cache_creation_input_tokens"] = written
    if one_hour:
        out["cache_creation_1h_input_tokens"] = one_hour
    return out


class AsyncUsageProducer:
    """asyncio producer of usage events (batch envelopes per tenant)."""

    def __init__(self, bootstrap_servers: str, *, topic: str = "usage-events",
                 batch_size: int = 100, linger_ms: float = 50, catalog: Catalog | None = None,
                 clock: Callable[[], datetime] | None = None, api_url: str | None = None,
                 api_token: str | None = None, outcomes_topic: str | None = None,
                 **kafka_options: Any) -> None:
        if not 1 <= batch_size <= 1000:
            raise ValueError("batch_size must be between 1 and 1000 (the envelope limit)")
        self.topic = topic
        # by default the events topic's name with usage-events -> usage-outcomes, so a
        # TOKENMETER_TOPIC_PREFIX carries over
        self.outcomes_topic = outcomes_topic or (
            topic[: -len("usage-events")] + "usage-outcomes"
            if topic.endswith("usage-events") else "usage-outcomes")
        self.batch_size = batch_size
        # the worker's HTTP API (reservations) and its bearer token, when set
        self.api_url = api_url
        self.api_token = api_token
        self.linger_s = linger_ms / 1000
        self.catalog = catalog or load_catalog()
        # what stamps events without a timestamp (and checks them): the wall clock by default
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        # zstd by default: JSON envelopes shrink ~7x on the wire and in the broker
        self._options = {"bootstrap_servers": bootstrap_servers, "linger_ms": 5,
                         **PRODUCER_SIZES, "compression_type": "zstd", **kafka_options}
        self._producer: Any = None
        self._buffers: dict[str, list[dict[str, Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        """Connect to Kafka."""
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(**self._options)
        await self._producer.start()

    async def __aenter__(self) -> AsyncUsageProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def build(self, tenant_id: str, provider: str, model: str, input_tokens: int | None,
              output_tokens: int | None, fields: dict[str, Any]) -> dict[str, Any]:
        """The event dict, validated (raises ValidationFailed with a reason code)."""
        now = self.clock()
        stamp_route(fields)  # record(route=...): the router's verdict as attributes
        event: dict[str, Any] = {"event_id": fields.pop("event_id", None) or str(uuid.uuid4()),
                                 "timestamp": fields.pop("timestamp", None) or now.isoformat(),
                                 "tenant_id": tenant_id, "provider": provider, "model": model}
        if input_tokens is not None:
            event["input_tokens"] = input_tokens
        if output_tokens is not None:
            event["output_tokens"] = output_tokens
        event.update(fields)
        if isinstance(event["timestamp"], datetime):
            event["timestamp"] = event["timestamp"].isoformat()
        validate_event(event, now=now)
        if self.catalog.resolve(model, provider) is None:
            raise PricingError("unknown_model", f"model {model!r} at provider {provider!r} is "
                               "not in the price catalog")
        return event

    async def record(self, *, tenant_id: str, provider: str, model: str,
                     input_tokens: int | None = None, output_tokens: int | None = None,
                     **fields: Any) -> str:
        """Queue one usage event; returns its event_id (inside ``reserve``: it carries the
        reservation's id)."""
        held = _stamp_reservation(fields)
        event = self.build(tenant_id, provider, model, input_tokens, output_tokens, fields)
        if held is not None:
            held.events += 1  # valid, so it will be sent and counted against the hold
        buf = self._buffers.setdefault(tenant_id, [])
        buf.append(event)
        if len(buf) >= self.batch_size:
            await self._send(tenant_id)
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.linger_s,
                                          lambda: asyncio.ensure_future(self._send_all()))
        return str(event["event_id"])

    async def outcome(self, *, event_id: str, tenant_id: str, success: bool | None = None,
                      score: float | None = None, feedback: str | None = None,
                      source: str | None = None, timestamp: datetime | None = None) -> None:
        """Send the outcome of a recorded call (at least one of success, score, feedback);
        raises ValidationFailed with the reason code the pipeline would give it."""
        now = self.clock()
        body: dict[str, Any] = {"event_id": event_id, "tenant_id": tenant_id,
                                "timestamp": (timestamp or now).isoformat()}
        for name, value in (("success", success), ("score", score), ("feedback", feedback),
                            ("source", source)):
            if value is not None:
                body[name] = value
        validate_outcome(body, now=now)
        fut = await self._producer.send(self.outcomes_topic, json.dumps(body).encode(),
                                        key=tenant_id.encode())
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)

    async def _send(self, tenant: str) -> None:
        events = self._buffers.pop(tenant, [])
        if not events:
            return
        value = events[0] if len(events) == 1 else events
        fut = await self._producer.send(self.topic, json.dumps(value).encode(),
                                        key=tenant.encode())
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)

    async def _send_all(self) -> None:
        self._timer = None
        for tenant in list(self._buffers):
            await self._send(tenant)

    async def flush(self) -> None:
        """Send everything queued and wait until the broker has it."""
        if self._timer is not None:
            self._timer.cancel()
        await self._send_all()
        if self._pending:
            await asyncio.gather(*list(self._pending))

    async def close(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            await self.flush()
            await self._producer.stop()
            self._producer = None


class UsageProducer:
    """Blocking twin of AsyncUsageProducer (runs its own event loop in a thread)."""

    def __init__(self, bootstrap_servers: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="tokenmeter-sdk")
        self._thread.start()
        self._async = AsyncUsageProducer(bootstrap_servers, **options)
        self._call(self._async.start())

    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result()

    def record(self, *, tenant_id: str, provider: str, model: str,
               input_tokens: int | None = None, output_tokens: int | None = None,
               **fields: Any) -> str:
        """Queue one usage event; returns its event_id (raises ValidationFailed if invalid)."""
        held = _stamp_reservation(fields)  # here: the loop thread does not see the context
        event_id = str(self._call(self._async.record(tenant_id=tenant_id, provider=provider,
                                                     model=model, input_tokens=input_tokens,
                                                     output_tokens=output_tokens, **fields)))
        if held is not None:
            held.events += 1
        return event_id

    def outcome(self, *, event_id: str, tenant_id: str, success: bool | None = None,
                score: float | None = None, feedback: str | None = None,
                source: str | None = None, timestamp: datetime | None = None) -> None:
        """Send the outcome of a recorded call (raises ValidationFailed if invalid)."""
        self._call(self._async.outcome(event_id=event_id, tenant_id=tenant_id,
                                       success=success, score=score, feedback=feedback,
                                       source=source, timestamp=timestamp))

    def reserve(self, *, tenant_id: str, model: str, estimated_input_tokens: int,
                estimated_output_tokens: int, **params: Any) -> Reservation:
        """Hold an estimate against the tenant's budgets (use as ``with``)."""
        if self._async.api_url is None:
            raise ValidationFailed("bad_request", "reserve needs the worker's HTTP API: "
                                   "pass api_url='http://HOST:6066' to UsageProducer")
        return reserve(self._async.api_url, tenant_id=tenant_id, model=model,
                       estimated_input_tokens=estimated_input_tokens,
                       estimated_output_tokens=estimated_output_tokens,
                       api_token=self._async.api_token, **params)

    def flush(self) -> None:
        """Send everything queued and wait for the broker."""
        self._call(self._async.flush())

    def close(self) -> None:
        """Flush, disconnect and stop the loop thread."""
        try:
            self._call(self._async.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> UsageProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


# at the end: the wrappers import anthropic_usage from this module
from pipeline.sdk.instrument import CallMeter, current_run, instrument, meter_run  # noqa: E402
from pipeline.sdk.routing import Route, Router, route_prompt, stamp_route  # noqa: E402

__all__ = ["AsyncUsageProducer", "CallMeter", "Reservation", "Route", "Router",
           "UsageProducer", "anthropic_usage", "decide", "instrument", "meter_run", "reserve",
           "route_prompt"]
