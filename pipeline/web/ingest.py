"""POST /api/events: HTTP ingest (the I/O around pipeline/core/ingest.py).

Shared by the worker (a Faust view) and the standalone ``tokenmeter ingest`` process (plain
aiohttp): read the body within its bound, check the items, publish the accepted ones to
usage-events keyed by tenant, await the broker's acks, answer item by item.

Backpressure: at most ``Gate.max_requests`` requests (and ``Gate.max_bytes`` of bodies) are
in flight; beyond that 429 with Retry-After, before the body is read. When Kafka does not ack
within ``ack_timeout`` (unreachable, or too slow), 503 with Retry-After: some envelopes may
have been delivered, so the client resends the whole request, which is harmless (the stream
drops an event_id it has already metered on the tenant's partition).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from aiohttp import web

from pipeline.core.ingest import (
    MAX_REQUEST_BYTES,
    Gate,
    Refused,
    Verdict,
    answer,
    check_items,
    envelopes,
    parse_body,
)
from pipeline.core.meter import Meter

log = logging.getLogger(__name__)

PATH = "/api/events"
# send one message and get its delivery future (what Faust topics and aiokafka return)
Send = Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]
RETRY_FULL_S = 1  # a slot frees as soon as one request is answered
RETRY_BROKER_S = 5  # Kafka being away is rarely a matter of milliseconds
THREAD_ABOVE = 200  # items: check larger requests off the event loop (it keeps metering)
# a client trickling its body would hold an in-flight slot: the whole body within this
READ_TIMEOUT_S = 30.0


def _refused(r: Refused, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(r.as_json(), status=r.status, headers=headers)


async def _read(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds ``limit`` (reading stops there)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)




class Ingest:
    """The POST /api/events handler of one process."""

    def __init__(self, meter: Meter, clock: Callable[[], datetime], send: Send, *,
                 gate: Gate | None = None, ack_timeout: float = 10.0,
                 read_timeout: float = READ_TIMEOUT_S) -> None:
        self.meter = meter
        self.clock = clock
        self.send = send
        self.gate = gate or Gate()
        self.ack_timeout = ack_timeout
        self.read_timeout = read_timeout

    async def _publish(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        futures = [await self.send(key, value) for key, value in messages]
        await asyncio.gather(*futures)

    async def _check(self, items: list[Any]) -> list[Verdict]:
        now = self.clock()
        if len(items) > THREAD_ABOVE:
            return await asyncio.to_thread(check_items, items, self.meter, now=now)
        return check_items(items, self.meter, now=now)

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one ingest request (see the module docstring)."""
        declared = request.content_length
        if declared is not None and declared > MAX_REQUEST_BYTES:
            return _refused(Refused(413, "too_large", f"request body is {declared} bytes; "
                                    f"the limit is {MAX_REQUEST_BYTES}: split it"))
        size = declared if declared is not None else MAX_REQUEST_BYTES
        if not self.gate.admit(size):
            return _refused(Refused(429, "busy", f"{self.gate.requests} ingest requests in "
                                    "flight; retry after the Retry-After seconds"),
                            {"Retry-After": str(RETRY_FULL_S)})
        try:
            try:
                body = await asyncio.wait_for(_read(request, MAX_REQUEST_BYTES),
                                              self.read_timeout)
            except asyncio.TimeoutError:
                return _refused(Refused(408, "timeout", "the request body did not arrive "
                                        f"within {self.read_timeout:g} s"))
            except ConnectionError:
                # the client closed before sending its body: nobody hears an answer, and a
                # traceback per vanished client would flood the log
                return web.Response(status=400)
            if body is None:
                return _refused(Refused(413, "too_large", "request body exceeds "
                                        f"{MAX_REQUEST_BYTES} bytes: split it"))
            parsed = parse_body(body, request.content_type)
            if isinstance(parsed, Refused):
                return _refused(parsed)
            verdicts = await self._check(parsed)
            messages = envelopes(verdicts)
            if messages:
                try:
                    await asyncio.wait_for(self._publish(messages), self.ack_timeout)
                except Exception as exc:  # noqa: BLE001 - any failure: delivery unknown
                    log.warning("ingest: Kafka did not ack %d envelopes (%s: %s); answered "
                                "503", len(messages), type(exc).__name__, exc)
                    return _refused(Refused(
                        503, "unavailable", "Kafka did not acknowledge the events within "
                        f"{self.ack_timeout:g} s ({type(exc).__name__}); nothing is lost by "
                        "resending the whole request after Retry-After seconds"),
                        {"Retry-After": str(RETRY_BROKER_S)})
            status, out = answer(verdicts)
            return web.json_response(out, status=status)
        finally:
            self.gate.release(size)


def register_ingest_view(app: Any, runtime: Any) -> None:
    """POST /api/events on the worker, publishing through its Faust producer."""
    from faust.web import Request, Response, View

    async def send(key: bytes, value: bytes) -> Awaitable[Any]:
        fut: Awaitable[Any] = await runtime.events_topic.send(key=key, value=value)
        return fut

    ingest = Ingest(runtime.processor.meter, runtime.clock, send)

    @app.page(PATH)
    class Events(View):
        async def post(self, request: Request) -> Response:
            # Faust's aiohttp driver hands over aiohttp's own request and sends its responses
            response: Any = await ingest.handle(request)  # type: ignore[arg-type]
            return response  # type: ignore[no-any-return]
