"""Backpressure: a burst of pre-loaded events must not grow worker memory without bound.

Usage: python -m pipeline.benchmark.backpressure [EVENTS] [ENVELOPE]
Prints worker RSS samples (MiB) while it works through the burst, and the growth after the
first 10% of the events.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from pipeline.benchmark.throughput import (
    _metrics,
    envelope_messages,
    free_port,
    make_events,
    preload,
)
from pipeline.embedded.broker import EmbeddedBroker


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(n: int = 500_000, envelope: int = 100) -> dict[str, float]:
    """Pre-load ``n`` events, start a worker, sample its RSS until it has stored them all."""
    broker = EmbeddedBroker("127.0.0.1", free_port())
    broker.start()
    try:
        events = make_events(n, tenants=2000)
        asyncio.run(preload(broker.bootstrap, "bp-usage-events",
                            envelope_messages(events, envelope), 4))
        del events
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="tm-bp-") as data:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
            env.update(TOKENMETER_KAFKA_BOOTSTRAP=broker.bootstrap, TOKENMETER_DATA_DIR=data,
                       TOKENMETER_WEB_PORT=str(port), TOKENMETER_TOPIC_PREFIX="bp-",
                       TOKENMETER_APP_ID=f"bp-{uuid.uuid4().hex[:6]}", TOKENMETER_PARTITIONS="4")
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            samples: list[tuple[float, float]] = []
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < 900:
                    try:
                        done = _metrics(f"http://127.0.0.1:{port}").get(
                            "tokenmeter_events_total", 0.0)
                    except OSError:
                        done = 0.0
                    samples.append((done, rss_mb(proc.pid)))
                    if done >= n:
                        break
                    time.sleep(1.0)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    finally:
        broker.stop()
    after_warmup = [r for d, r in samples if d >= n * 0.1]
    return {"events": n, "seconds": round(time.monotonic() - t0, 1),
            "rss_at_10pct_mb": round(after_warmup[0], 1) if after_warmup else float("nan"),
            "rss_max_mb": round(max(r for _, r in samples), 1),
            "rss_end_mb": round(samples[-1][1], 1),
            "growth_after_10pct_mb": round(max(after_warmup) - after_warmup[0], 1)
            if after_warmup else float("nan")}


if __name__ == "__main__":  # pragma: no cover
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(run(*args)))
