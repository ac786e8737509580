"""The SDK's producers: AsyncUsageProducer (asyncio, batch envelopes per tenant), its blocking
twin UsageProducer, and ``anthropic_usage`` (Anthropic's usage object onto our fields).

Re-exported by ``pipeline.sdk`` (its docstring shows them in use).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timezone
from typing import Any

from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.outcomes import validate_outcome
from pipeline.core.validate import validate_event
from pipeline.errors import PricingError, ValidationFailed
from pipeline.sdk._call_usage import count_of, field_of
from pipeline.sdk._decisions import Reservation, _stamp_reservation, reserve
from pipeline.sdk.routing import stamp_route
from pipeline.stream.topics import PRODUCER_SIZES


def anthropic_usage(usage: Any) -> dict[str, int]:
    """``record`` keyword arguments from an Anthropic Messages ``usage`` (object or dict).

    Anthropic's ``input_tokens`` excludes cache reads and writes: ours is their sum. All
    writes are ``cache_creation_input_tokens`` (else the 5m + 1h split), the 1-hour part
    ``usage.cache_creation.ephemeral_1h_input_tokens``.
    """
    read = count_of(usage, "cache_read_input_tokens")
    split = field_of(usage, "cache_creation")
    one_hour = count_of(split, "ephemeral_1h_input_tokens")
    written = (count_of(usage, "cache_creation_input_tokens")
               if field_of(usage, "cache_creation_input_tokens") is not None
               else count_of(split, "ephemeral_5m_input_tokens") + one_hour)
    out = {"input_tokens": count_of(usage, "input_tokens") + read + written,
           "output_tokens": count_of(usage, "output_tokens")}
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
