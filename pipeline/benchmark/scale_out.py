"""Scale-out: aggregate throughput of two workers in one group against one worker.

Both runs use the same code path (the embedded store served over HTTP by `tokenmeter
clickhouse`, each worker a `tokenmeter worker` process) on the same pre-loaded messages, and
count only the time after every partition has an owner, so startup and the first rebalance
are not measured. On this 2-core machine the broker, the store server and the workers share
the cores, which bounds what a second worker can add.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from pipeline.benchmark.throughput import (
    _metrics,
    free_port,
    make_events,
    preload,
    single_messages,
)
from pipeline.embedded.broker import EmbeddedBroker
from pipeline.runtime.cluster import stop_all


def _serve(data: str, password: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "clickhouse", "--listen", f"127.0.0.1:{port}"],
        env={**env, "TOKENMETER_DATA_DIR": data, "TOKENMETER_CLICKHOUSE_PASSWORD": password},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dsn = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{dsn}/ping", timeout=2):  # noqa: S310 - loopback
                return proc, dsn
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("tokenmeter clickhouse did not start")


def group_rate(bootstrap: str, dsn: str, password: str, prefix: str, n: int, partitions: int,
               workers: int) -> float:
    """events/s of ``workers`` workers together, from full assignment to the n-th event."""
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    database = f"scale_{uuid.uuid4().hex[:6]}"
    procs, urls = [], []
    with tempfile.TemporaryDirectory(prefix="tm-bench-") as data:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
        for i in range(workers):
            port = free_port()
            env = {**base, "TOKENMETER_KAFKA_BOOTSTRAP": bootstrap,
                   "TOKENMETER_CLICKHOUSE_DSN": dsn, "TOKENMETER_CLICKHOUSE_PASSWORD": password,
                   "TOKENMETER_CLICKHOUSE_DATABASE": database,
                   "TOKENMETER_DATA_DIR": str(Path(data) / str(i)),
                   "TOKENMETER_WEB_PORT": str(port), "TOKENMETER_TOPIC_PREFIX": prefix,
                   "TOKENMETER_APP_ID": app_id, "TOKENMETER_PARTITIONS": str(partitions)}
            procs.append(subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"],
                                          env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        try:
            t0 = c0 = 0.0
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a worker died")
                try:
                    ms = [_metrics(u) for u in urls]
                except OSError:
                    time.sleep(0.05)
                    continue
                now = time.perf_counter()
                events = sum(m.get("tokenmeter_events_total", 0.0) for m in ms)
                owned = [m.get("tokenmeter_assigned_partitions", 0.0) for m in ms]
                if not t0 and sum(owned) == partitions and all(owned):
                    t0, c0 = now, events
                if t0 and events >= n:
                    if n - c0 < n / 2:
                        raise RuntimeError(f"only {n - c0:.0f} events after full assignment")
                    return (n - c0) / (now - t0)
                time.sleep(0.02)
            raise RuntimeError("workers did not finish in time")
        finally:
            stop_all(procs)


def run(n: int = 40_000, partitions: int = 4,
        progress: Callable[[str], None] = lambda s: None) -> dict[str, float]:
    """One worker vs two, same messages (one topic per run), same store server."""
    broker = EmbeddedBroker("127.0.0.1", free_port(),
                            log_path=Path(tempfile.gettempdir()) / "tm-bench-scale.log")
    broker.start()
    try:
        with tempfile.TemporaryDirectory(prefix="tm-bench-store-") as data:
            password = secrets.token_urlsafe(32)  # the served store admits its holders only
            server, dsn = _serve(data, password)
            try:
                progress("scale-out: pre-loading events")
                msgs = single_messages(make_events(n, seed=5))
                for prefix in ("s1-", "s2-"):
                    asyncio.run(preload(broker.bootstrap, f"{prefix}usage-events", msgs,
                                        partitions))
                progress("scale-out: one worker")
                one = group_rate(broker.bootstrap, dsn, password, "s1-", n, partitions, 1)
                progress("scale-out: two workers")
                two = group_rate(broker.bootstrap, dsn, password, "s2-", n, partitions, 2)
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(30)
    finally:
        broker.stop()
    return {"scale_out_one_worker_events_per_s": round(one, 1),
            "scale_out_two_workers_events_per_s": round(two, 1),
            "scale_out_ratio": round(two / one, 3)}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(progress=lambda s: print(s, file=sys.stderr))))
