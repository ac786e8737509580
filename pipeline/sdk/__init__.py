"""Python SDK for producers: record usage events without writing JSON by hand.

    from pipeline.sdk import UsageProducer

    with UsageProducer(bootstrap_servers="127.0.0.1:9092") as meter:
        meter.record(tenant_id="acme", provider="openai", model="gpt-4o",
                     input_tokens=1200, output_tokens=300, feature="search")

Anthropic reports ``input_tokens`` without the cache reads and writes (ours include them) and
splits writes by lifetime; ``anthropic_usage`` maps its usage object onto our fields::

    meter.record(tenant_id="acme", provider="anthropic", model=resp.model,
                 **anthropic_usage(resp.usage))

Events get an ``event_id`` (UUID) and a UTC timestamp, are validated before sending (a bad
event raises ``ValidationFailed`` at the call site, not in the pipeline), and go out as batch
envelopes of up to ``batch_size`` events per tenant or after ``linger_ms``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timezone
from typing import Any

from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.validate import validate_event
from pipeline.errors import PricingError
from pipeline.stream.topics import PRODUCER_SIZES


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
                 clock: Callable[[], datetime] | None = None, **kafka_options: Any) -> None:
        if not 1 <= batch_size <= 1000:
            raise ValueError("batch_size must be between 1 and 1000 (the envelope limit)")
        self.topic = topic
        self.batch_size = batch_size
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
        """Queue one usage event; returns its event_id."""
        event = self.build(tenant_id, provider, model, input_tokens, output_tokens, fields)
        buf = self._buffers.setdefault(tenant_id, [])
        buf.append(event)
        if len(buf) >= self.batch_size:
            await self._send(tenant_id)
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.linger_s,
                                          lambda: asyncio.ensure_future(self._send_all()))
        return str(event["event_id"])

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
        return str(self._call(self._async.record(tenant_id=tenant_id, provider=provider,
                                                 model=model, input_tokens=input_tokens,
                                                 output_tokens=output_tokens, **fields)))

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
           api_token: str | None = None, timeout: float = 2.0, **scope: str) -> dict[str, Any]:
    """Ask a worker for an admission decision (allow / downgrade / deny)."""
    query = urllib.parse.urlencode({
        "tenant_id": tenant_id, "model": model, "value_tier": value_tier,
        "estimated_input_tokens": estimated_input_tokens,
        "estimated_output_tokens": estimated_output_tokens, **scope})
    headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
    req = urllib.request.Request(f"{base_url.rstrip('/')}/api/decision?{query}",  # noqa: S310
                                 headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - caller's URL
        result: dict[str, Any] = json.loads(resp.read())
        return result


# at the end: the wrappers import anthropic_usage from this module
from pipeline.sdk.instrument import CallMeter, instrument, meter_run  # noqa: E402

__all__ = ["AsyncUsageProducer", "CallMeter", "UsageProducer", "anthropic_usage", "decide",
           "instrument", "meter_run"]
