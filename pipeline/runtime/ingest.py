"""`tokenmeter ingest`: POST /api/events without a worker (for deployments keeping workers
private). Plain aiohttp, the worker's handler and its Host/content-type/token rules; it holds
no store and meters nothing: it validates, prices to refuse what the stream would refuse,
and publishes to usage-events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from pipeline.cli.ingest import DEFAULT_LISTEN
from pipeline.clock import clock_for
from pipeline.core.catalog import load_catalog_with_overlays
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.errors import ConfigError
from pipeline.settings import TOPIC_EVENTS, Settings
from pipeline.stream.topics import start_producer
from pipeline.web import auth
from pipeline.web.ingest import PATH, Ingest

log = logging.getLogger(__name__)


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (``[::1]:6067`` for IPv6) -> (host, port)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {listen!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]") or "127.0.0.1", int(port)


def ingest_settings(settings: Settings, listen: str) -> Settings:
    """``settings`` serving at ``listen`` (its Host allow-list and bind check follow it)."""
    host, port = parse_listen(listen)
    return settings.model_copy(update={"web_host": host, "web_port": port})


async def serve(settings: Settings, *, ack_timeout: float = 10.0,
                stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (SIGINT/SIGTERM set it when run from the CLI)."""
    from aiohttp import web

    stop = stop or asyncio.Event()
    producer = await start_producer(settings, "publish ingested usage events")
    topic = settings.topic(TOPIC_EVENTS)

    async def send(key: bytes, value: bytes) -> Any:
        return await producer.send(topic, value, key=key)

    meter = Meter(load_catalog_with_overlays(settings.prices_dir), load_policy())
    ingest = Ingest(meter, clock_for(settings.clock_start), send, ack_timeout=ack_timeout)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready", "in_flight": ingest.gate.requests})

    app = web.Application(middlewares=auth.middlewares(settings))
    app.router.add_post(PATH, ingest.handle)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.web_host, settings.web_port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {settings.web_host}:{settings.web_port} "
                              f"({exc.strerror}); pick another --listen") from None
        print(f"tokenmeter ingest: POST http://{settings.web_host}:{settings.web_port}{PATH} "
              f"-> {topic} at {settings.kafka_bootstrap}; Ctrl-C stops", file=sys.stderr,
              flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()  # answers in flight finish first (aiohttp's shutdown timeout)
        await producer.stop()


def run_ingest(settings: Settings, *, ack_timeout: float = 10.0) -> int:
    """Run in the foreground until SIGINT/SIGTERM."""
    auth.check_bind(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(settings, ack_timeout=ack_timeout, stop=stop)

    asyncio.run(main())
    return 0
