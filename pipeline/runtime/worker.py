"""Run a worker (and, for `tokenmeter up`, the embedded broker and demo traffic)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from pipeline.core.catalog import load_catalog_with_overlays
from pipeline.core.scoring import load_policy
from pipeline.embedded.broker import EmbeddedBroker, port_free
from pipeline.errors import BrokerError, ConfigError, StoreError
from pipeline.settings import Settings
from pipeline.store.client import Store, open_store
from pipeline.store.migrations import migrate
from pipeline.stream.topics import ensure_topics

log = logging.getLogger(__name__)
WORKER_FILE = "worker.json"


def worker_file(settings: Settings) -> Path:
    """Where a running worker advertises its pid and API URL."""
    return settings.data_dir / WORKER_FILE


def running_worker(settings: Settings) -> dict[str, Any] | None:
    """The advertised worker holding this data dir, if its process is alive."""
    path = worker_file(settings)
    try:
        info: dict[str, Any] = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def worker_holding_store(settings: Settings) -> dict[str, Any] | None:
    """The running worker the CLI must go through: chDB opens a data dir in one process only.

    None for a ClickHouse server (every process may connect) or when no worker runs.
    """
    return running_worker(settings) if settings.embedded_store else None


def _prepare_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"data dir {settings.data_dir} is not writable ({exc.strerror}); "
            "set TOKENMETER_DATA_DIR or --data-dir"
        ) from None


def tune_gc(settings: Settings) -> None:
    """Keep the cyclic collector off the hot path: startup objects frozen, young gen larger.

    Everything built so far (modules, catalog, app) lives as long as the process: frozen,
    full collections never walk it again. The live state that grows later (dedup ids,
    windows) is still collected, just less often: a young collection per
    ``gc_young_threshold`` new containers instead of per 700 (older generations keep
    Python's ratios, so garbage cycles are still found).
    """
    if not settings.gc_young_threshold:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(settings.gc_young_threshold, older, oldest)


def run_worker(settings: Settings, *, embedded_broker: bool = False, demo: bool = False,
               demo_rate: float = 50.0, banner: str | None = None) -> int:
    """Run until SIGINT/SIGTERM; flushes pending rows and stops every child it started."""
    import faust

    from pipeline.web.auth import check_bind

    check_bind(settings)
    if not port_free(settings.web_host, settings.web_port):
        raise ConfigError(
            f"web port {settings.web_host}:{settings.web_port} is already in use; "
            "stop what uses it or set TOKENMETER_WEB_PORT / --web-port"
        )
    _prepare_data_dir(settings)
    broker: EmbeddedBroker | None = None
    store: Store | None = None
    started = time.monotonic()
    try:
        if embedded_broker:
            host, port = settings.broker_address()
            broker = EmbeddedBroker(host, port, log_path=settings.data_dir / "broker.log")
            broker.start()
        asyncio.run(ensure_topics(settings))
        store = open_store(settings)
        migrate(store)
        from pipeline.stream.app import build_app

        runtime = build_app(settings, store, load_catalog_with_overlays(settings.prices_dir),
                            load_policy())
        if demo:
            from pipeline.runtime.demo import add_demo_traffic

            add_demo_traffic(runtime, settings, demo_rate)
        if banner:
            print(banner, file=sys.stderr, flush=True)
        info = {"pid": os.getpid(), "url": settings.web_url, "started_at": time.time()}
        worker_file(settings).write_text(json.dumps(info))
        log.info("worker prepared in %.2f s", time.monotonic() - started)
        worker = faust.Worker(runtime.app, loglevel=settings.log_level, quiet=True,
                              redirect_stdouts=False)
        tune_gc(settings)
        with suppress(SystemExit):
            worker.execute_from_commandline()
        return 0
    finally:
        with suppress(OSError):
            info_now = json.loads(worker_file(settings).read_text())
            if info_now.get("pid") == os.getpid():
                worker_file(settings).unlink()
        if store is not None:
            store.close()
        if broker is not None:
            broker.stop()


__all__ = ["run_worker", "running_worker", "BrokerError", "StoreError"]
