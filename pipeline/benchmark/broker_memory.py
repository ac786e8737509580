"""Embedded broker memory under a long `tokenmeter up`: RSS of the Tansu child per million
events that a worker consumed and stored, with and without producer compression.

    .venv/bin/python -m pipeline.benchmark.broker_memory --events 5000000 --compression zstd

Starts `tokenmeter up` on free ports and a fresh data dir, publishes batch envelopes of 100
distinct events (as the SDK does), keeps at most ~200k events ahead of the worker, and prints
broker and worker RSS at every million. Nothing is deleted from the broker: Tansu 0.6.0's
memory engine panics on DeleteRecords ("not yet implemented") and applies no retention.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from pipeline.core.simulate import Simulator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_pid(parent: int, name: str) -> int:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and name in cmd:
                return int(d.name)
    raise SystemExit(f"no {name} child of {parent}")


def events_done(url: str) -> int:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as r:  # noqa: S310 - loopback
        body = json.loads(r.read())
    return int(body.get("events", 0))


async def publish(kafka: str, topic: str, n: int, compression: str, url: str,
                  report: list[tuple[int, float, float]], broker: int, worker: int) -> None:
    from aiokafka import AIOKafkaProducer

    options = {} if compression == "none" else {"compression_type": compression}
    # the SDK's producer settings: 1 MiB record batches, compressed as configured
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=20,
                                max_request_size=2 * 1024 * 1024, max_batch_size=1024 * 1024,
                                **options)
    await producer.start()
    sim = Simulator(tenants=1000, seed=3, text_share=0)
    now = datetime.now(timezone.utc)
    template = [sim.event(now) for _ in range(5000)]
    sent = 0
    next_mark = 1_000_000
    started = time.monotonic()
    try:
        while sent < n:
            batch = []
            for i in range(100):
                e = dict(template[(sent + i) % len(template)])
                e["event_id"] = f"bm-{sent + i}"
                batch.append(e)
            await producer.send(f"{topic}", json.dumps(batch).encode(),
                                key=batch[0]["tenant_id"].encode())
            sent += 100
            if sent % 50_000 == 0:
                await producer.flush()
                while sent - events_done(url) > 200_000:  # don't run away from the worker
                    await asyncio.sleep(0.5)
            if sent >= next_mark:
                while events_done(url) < sent:
                    await asyncio.sleep(0.5)
                report.append((sent, rss_mb(broker), rss_mb(worker)))
                print(f"{sent:>10,} events stored  broker RSS {report[-1][1]:7.1f} MB  "
                      f"worker RSS {report[-1][2]:7.1f} MB  "
                      f"({sent / (time.monotonic() - started):,.0f} ev/s)", flush=True)
                next_mark += 1_000_000
    finally:
        await producer.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--compression", choices=["none", "gzip", "lz4", "zstd"], default="zstd")
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="tm-brokermem-"))
    kafka = f"127.0.0.1:{free_port()}"
    web = free_port()
    env = {**os.environ, "TOKENMETER_DATA_DIR": str(data), "TOKENMETER_KAFKA_BOOTSTRAP": kafka,
           "TOKENMETER_WEB_PORT": str(web), "TOKENMETER_PRODUCER_COMPRESSION": args.compression}
    log = open(data / "worker.log", "wb")  # noqa: SIM115 - closed with the process
    up = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "up", "--log-level", "INFO"],
                          env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"data dir {data}", flush=True)
    url = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                events_done(url)
                break
            except OSError:
                if time.monotonic() > deadline or up.poll() is not None:
                    raise SystemExit("tokenmeter up did not become ready") from None
                time.sleep(0.5)
        broker = child_pid(up.pid, "tansu")
        idle = rss_mb(broker)
        print(f"compression={args.compression}: broker RSS idle {idle:.1f} MB, "
              f"worker RSS idle {rss_mb(up.pid):.1f} MB", flush=True)
        report: list[tuple[int, float, float]] = []
        asyncio.run(publish(kafka, "usage-events", args.events, args.compression, url, report,
                            broker, up.pid))
        n, last, _ = report[-1]
        print(f"broker RSS per million events: {(last - idle) / (n / 1e6):.1f} MB "
              f"({args.compression}); after {n:,} events: {last:.1f} MB")
    finally:
        up.terminate()
        up.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
