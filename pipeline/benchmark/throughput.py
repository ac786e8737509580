"""Throughput workloads: our worker against Faust baselines and a bare consumer, one run.

Every figure is measured on the same pre-loaded messages on one embedded broker, in the same
run, so the ratios hold even though absolute speed drifts on shared machines.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pipeline.core.simulate import Simulator
from pipeline.embedded.broker import EmbeddedBroker


def free_port() -> int:
    """An unused local TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_events(n: int, tenants: int = 200, seed: int = 1) -> list[dict[str, Any]]:
    """Synthetic events with counts (no text), spread over the last 30 minutes."""
    sim = Simulator(tenants=tenants, seed=seed, text_share=0.0)
    now = datetime.now(timezone.utc)
    return [sim.event(now - timedelta(seconds=(i * 7) % 1800)) for i in range(n)]


async def preload(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]],
                  partitions: int) -> None:
    """Create ``topic`` and write ``messages`` to it."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_batch_size=1024 * 1024, max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def single_messages(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """One message per event, keyed by tenant."""
    return [(e["tenant_id"].encode(), json.dumps(e).encode()) for e in events]


def envelope_messages(events: list[dict[str, Any]], size: int) -> list[tuple[bytes, bytes]]:
    """Batch envelopes of up to ``size`` events of one tenant each."""
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_tenant.setdefault(e["tenant_id"], []).append(e)
    out = []
    for tenant, items in by_tenant.items():
        for i in range(0, len(items), size):
            out.append((tenant.encode(), json.dumps(items[i:i + size]).encode()))
    return out


async def ceiling(bootstrap: str, topic: str, n: int, partitions: int) -> float:
    """msg/s of a bare consumer loop that only reads and json-parses."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, max_partition_fetch_bytes=4 << 20,
                                fetch_max_bytes=16 << 20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        count = 0
        t0 = 0.0
        loads = json.loads
        while count < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10000)
            if batch and not t0:
                t0 = time.perf_counter()
            for msgs in batch.values():
                for m in msgs:
                    loads(m.value)
                count += len(msgs)
        return n / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


def faust_baseline(kind: str, bootstrap: str, topic: str, n: int, partitions: int) -> float:
    """events/s of a Faust baseline agent (floor or naive), in its own process."""
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.benchmark.faust_baselines", kind, bootstrap, topic,
         str(n), str(partitions)], capture_output=True, text=True, timeout=600)
    for line in out.stdout.splitlines():
        if '{"events_per_s"' in line:  # mode's worker may prefix terminal control codes
            return float(json.loads(line[line.index("{"):])["events_per_s"])
    raise RuntimeError(f"faust {kind} baseline failed: {out.stderr[-2000:]}")


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def worker_rate(bootstrap: str, prefix: str, n: int, partitions: int,
                extra_env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    """events/s of a real `tokenmeter worker` from its first to its n-th stored event.

    ``cwd``: run the worker of another checkout (``python -m`` imports from the directory it
    runs in), for before/after rows measured in one run (pipeline/benchmark/ab.py).
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tm-bench-") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
        env.update(TOKENMETER_KAFKA_BOOTSTRAP=bootstrap, TOKENMETER_DATA_DIR=data,
                   TOKENMETER_WEB_PORT=str(port), TOKENMETER_TOPIC_PREFIX=prefix,
                   TOKENMETER_APP_ID=f"bench-{uuid.uuid4().hex[:6]}",
                   TOKENMETER_PARTITIONS=str(partitions), **(extra_env or {}))
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                cwd=cwd)
        url = f"http://127.0.0.1:{port}"
        try:
            t0 = c0 = 0.0
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    err = proc.stderr.read() if proc.stderr else ""
                    raise RuntimeError(f"worker died: {err[-2000:]}")
                try:
                    events = _metrics(url).get("tokenmeter_events_total", 0.0)
                except OSError:
                    time.sleep(0.05)
                    continue
                now = time.perf_counter()
                if events > 0 and not t0:
                    t0, c0 = now, events
                if events >= n:
                    return (n - c0) / (now - t0) if now > t0 else float("nan")
                time.sleep(0.02)
            raise RuntimeError("worker did not finish in time")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(n_single: int = 20_000, n_batched: int = 100_000, partitions: int = 4,
        progress: Callable[[str], None] = lambda s: None) -> dict[str, float]:
    """All throughput figures of one run."""
    broker = EmbeddedBroker("127.0.0.1", free_port(),
                            log_path=Path(tempfile.gettempdir()) / "tm-bench-broker.log")
    broker.start()
    try:
        bootstrap = broker.bootstrap
        progress("pre-loading events")
        single = make_events(n_single)
        batched = make_events(n_batched, seed=2)
        asyncio.run(preload(bootstrap, "bs-usage-events", single_messages(single), partitions))
        asyncio.run(preload(bootstrap, "bb-usage-events", envelope_messages(batched, 100),
                            partitions))
        progress("ceiling: bare consumer + json")
        ceil = asyncio.run(ceiling(bootstrap, "bs-usage-events", n_single, partitions))
        progress("faust floor: stream.take() count")
        floor = faust_baseline("floor", bootstrap, "bs-usage-events", n_single, partitions)
        progress("naive faust: Record + windowed table")
        naive = faust_baseline("naive", bootstrap, "bs-usage-events", n_single, partitions)
        progress("tokenmeter worker: single-event messages")
        ours = worker_rate(bootstrap, "bs-", n_single, partitions)
        progress("tokenmeter worker: envelopes of 100")
        ours_batched = worker_rate(bootstrap, "bb-", n_batched, partitions)
    finally:
        broker.stop()
    return {
        "throughput_events_per_s": round(ours, 1),
        "batched_throughput_events_per_s": round(ours_batched, 1),
        "faust_floor_events_per_s": round(floor, 1),
        "naive_faust_events_per_s": round(naive, 1),
        "ceiling_events_per_s": round(ceil, 1),
        "ratio_vs_floor": round(ours / floor, 3),
        "ratio_vs_naive": round(ours / naive, 3),
        "batched_ratio_vs_ceiling": round(ours_batched / ceil, 3),
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(progress=lambda s: print(s, file=sys.stderr))))
