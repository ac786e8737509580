"""HTTP ingest throughput next to the Kafka path, one worker, one run.

events/s from the first send until the worker has metered the last event (its
``tokenmeter_events_total``), for: an aiokafka producer sending envelopes of 100 (the SDK's
shape), POST /api/events with the same per-tenant arrays of 100, POST /api/events with
arrays of 100 events of mixed tenants (each becomes one envelope per tenant in Kafka, so
about one event per message with 200 tenants), and POST /api/events with one event each.
Each phase has its own event ids (no duplicates); HTTP phases use ``CONCURRENCY`` clients.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from pipeline.benchmark.throughput import _metrics, envelope_messages, free_port, make_events
from pipeline.embedded.broker import EmbeddedBroker

CONCURRENCY = 8


def _events(n: int, phase: str, seed: int) -> list[dict[str, Any]]:
    events = make_events(n, seed=seed)
    for i, e in enumerate(events):
        e["event_id"] = f"{phase}-{i}"
    return events


async def _wait_metered(url: str, total: int, timeout: float = 600) -> float:
    """Seconds (perf_counter) when the worker has metered ``total`` events."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = await asyncio.to_thread(_metrics, url)
        if metrics.get("tokenmeter_events_total", 0.0) >= total:
            return time.perf_counter()
        await asyncio.sleep(0.02)
    raise RuntimeError(f"the worker did not meter {total} events in time")


async def _kafka(bootstrap: str, topic: str, events: list[dict[str, Any]], url: str,
                 total: int) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_batch_size=1024 * 1024, max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        messages = envelope_messages(events, 100)
        t0 = time.perf_counter()
        futures = [await producer.send(topic, v, key=k) for k, v in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(events) / (await _wait_metered(url, total) - t0)


async def _http(url: str, bodies: list[bytes], n: int, total: int) -> float:
    import aiohttp

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            while True:
                async with session.post(f"{url}/api/events", data=body, headers={
                        "Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status == 200:
                        break
                    if r.status not in (429, 503):
                        raise RuntimeError(f"ingest answered {r.status}")
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))

    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
    return n / (await _wait_metered(url, total) - t0)


def run(n_kafka: int = 20_000, n_batched: int = 20_000, n_single: int = 3_000,
        n_mixed: int = 5_000, progress: Callable[[str], None] = lambda s: None) -> dict[str, float]:
    """Kafka-path, HTTP-batched and HTTP-single events/s into the ledger, one worker."""
    from pipeline.benchmark.suite import _http as get_json
    from pipeline.benchmark.suite import _worker

    broker = EmbeddedBroker("127.0.0.1", free_port())
    broker.start()
    port = free_port()
    prefix = "hi-"
    url = f"http://127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory(prefix="tm-bench-") as data:
            proc = _worker(broker.bootstrap, data, port, prefix)
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if get_json(f"{url}/health")["status"] == "ready":
                            break
                    except OSError:
                        pass
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("benchmark worker did not become ready")
                    time.sleep(0.2)
                progress(f"http ingest: Kafka path, {n_kafka} events in envelopes of 100")
                kafka = asyncio.run(_kafka(broker.bootstrap, f"{prefix}usage-events",
                                           _events(n_kafka, "k", 11), url, n_kafka))
                total = n_kafka
                progress(f"http ingest: POST per-tenant arrays of 100, {n_batched} events")
                bodies = [v for _, v in envelope_messages(_events(n_batched, "b", 12), 100)]
                total += n_batched
                http_batched = asyncio.run(_http(url, bodies, n_batched, total))
                progress(f"http ingest: POST mixed-tenant arrays of 100, {n_mixed} events")
                mixed = _events(n_mixed, "m", 14)
                bodies = [json.dumps(mixed[i:i + 100]).encode() for i in range(0, n_mixed, 100)]
                total += n_mixed
                http_mixed = asyncio.run(_http(url, bodies, n_mixed, total))
                progress(f"http ingest: POST single events, {n_single} events")
                single = [json.dumps(e).encode() for e in _events(n_single, "s", 13)]
                total += n_single
                http_single = asyncio.run(_http(url, single, n_single, total))
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except Exception:  # noqa: BLE001 - a stuck worker must not hide the result
                    proc.kill()
    finally:
        broker.stop()
    return {
        "ingest_kafka_envelopes_events_per_s": round(kafka, 1),
        "ingest_http_batched_events_per_s": round(http_batched, 1),
        "ingest_http_mixed_tenants_events_per_s": round(http_mixed, 1),
        "ingest_http_single_events_per_s": round(http_single, 1),
        "ingest_http_batched_ratio_vs_kafka": round(http_batched / kafka, 3),
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(progress=lambda s: print(s, file=sys.stderr))))
