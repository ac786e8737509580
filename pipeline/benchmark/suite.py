"""`tokenmeter bench`: every figure of the performance issue, measured in one run."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pipeline.benchmark.anomaly import run as anomaly_week
from pipeline.benchmark.http_ingest import run as http_ingest
from pipeline.benchmark.scale_out import run as scale_out
from pipeline.benchmark.throughput import free_port, make_events
from pipeline.benchmark.throughput import run as throughput
from pipeline.core.numbers import MAX_THRESHOLDS
from pipeline.embedded.broker import EmbeddedBroker

Progress = Callable[[str], None]


def rss_mb() -> float:
    """Resident memory of this process in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def micro_core(n: int = 20_000, rounds: int = 5) -> dict[str, float]:
    """Validate + price + score of one pre-parsed event, in microseconds (median of rounds)."""
    from pipeline.core.catalog import load_catalog
    from pipeline.core.meter import Meter
    from pipeline.core.scoring import load_policy

    meter = Meter(load_catalog(), load_policy())
    events = make_events(2000)
    now = datetime.now(timezone.utc)
    for e in events[:200]:
        meter.meter_object(e, now=now)
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(n):
            meter.meter_object(events[i % len(events)], now=now)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    # wall time is what the goal names; the thread's CPU time is what other processes on a
    # shared machine inflate least (they still do, through the caches)
    return {"core_us_per_event": round(statistics.median(wall) / n * 1e6, 2),
            "core_cpu_us_per_event": round(statistics.median(cpu) / n * 1e6, 2)}


def tiktoken_speed(mb: float = 4.0) -> dict[str, float]:
    """MB/s of offline token counting (cl100k_base, the shipped encoding)."""
    from pipeline.core.tokens import TokenCounter

    words = "the quick brown fox jumps over the lazy dog; invoices, reports, 1234".split()
    rng = random.Random(0)
    text = " ".join(rng.choice(words) for _ in range(int(mb * 1024 * 1024 / 6)))
    counter = TokenCounter()
    counter.count("gpt-4", "warm up")
    t0 = time.perf_counter()
    counter.count("gpt-4", text)
    return {"tiktoken_mb_per_s": round(len(text.encode()) / 1e6 / (time.perf_counter() - t0), 2)}


def sink_and_state(tenants: int = 100_000) -> dict[str, float]:
    """Sink rows/s vs raw client inserts, its encoding cost, and live-state memory growth."""
    from pipeline.core.catalog import load_catalog
    from pipeline.core.meter import Meter
    from pipeline.core.scoring import load_policy
    from pipeline.settings import load_settings
    from pipeline.store.client import open_store
    from pipeline.store.columnar import USAGE_TYPES, encode
    from pipeline.store.migrations import migrate
    from pipeline.store.sink import USAGE_COLUMNS, Sink, usage_row
    from pipeline.stream.live import LiveState

    with tempfile.TemporaryDirectory(prefix="tm-bench-") as d:
        store = open_store(load_settings(data_dir=d))
        migrate(store)
        meter = Meter(load_catalog(), load_policy())
        now = datetime.now(timezone.utc)
        priced = [meter.meter_object(e, now=now) for e in make_events(120_100, tenants=500)]
        rows = [usage_row(p, late=False, partition=0, offset=i, ingested_at=now)
                for i, p in enumerate(priced)]
        sink = Sink(store)

        def row_path(batch: list[list[Any]], token: bool) -> float:
            """Store.insert of the rows: what Sink.write did before the columnar sink."""
            settings = {"insert_deduplication_token": uuid.uuid4().hex,
                        "deduplicate_blocks_in_dependent_materialized_views": 1}
            started = time.perf_counter()
            store.insert("usage_events", batch, USAGE_COLUMNS, settings=settings if token
                         else None)
            return time.perf_counter() - started

        def columnar(batch: list[list[Any]]) -> tuple[float, float, float]:
            """(wall time of Sink.write, of which encoding, its CPU time)."""
            encoded, cpu = sink.encode_seconds, sink.encode_cpu_seconds
            started = time.perf_counter()
            asyncio.run(sink.write(batch, [], token=uuid.uuid4().hex))
            return (time.perf_counter() - started, sink.encode_seconds - encoded,
                    sink.encode_cpu_seconds - cpu)

        # once per process: pyarrow imports pandas at its first timezone-aware datetime
        columnar(rows[-100:])
        # the paths take turns, batch by batch: chDB's background merges of the parts
        # before slow down whichever runs next (2 cores), so neither gets a quiet store
        raw: list[float] = []
        ours: list[float] = []
        for n, i in enumerate(range(0, 20_000, 4000)):
            first, second = rows[i:i + 2000], rows[i + 2000:i + 4000]
            if n % 2:
                ours.append(columnar(first)[0])
                raw.append(row_path(second, token=False))
            else:
                raw.append(row_path(first, token=False))
                ours.append(columnar(second)[0])
        wall: list[float] = []
        encoding: list[float] = []
        encoding_cpu: list[float] = []
        before: list[float] = []
        for n, i in enumerate(range(20_000, 120_000, 20_000)):
            old, new = rows[i:i + 10_000], rows[i + 10_000:i + 20_000]
            if n % 2:
                before.append(row_path(old, token=True) / len(old))
            took, encoded, cpu = columnar(new)
            wall.append(took / len(new))
            encoding.append(encoded / len(new))
            encoding_cpu.append(cpu / len(new))
            if not n % 2:
                before.append(row_path(old, token=True) / len(old))
        money = [c for c in USAGE_COLUMNS if "decimal" in str(USAGE_TYPES[c])]
        picks = [USAGE_COLUMNS.index(c) for c in money]
        decimals: list[float] = []
        for i in range(20_000, 120_000, 20_000):
            only = [[r[j] for j in picks] for r in rows[i:i + 10_000]]
            started = time.perf_counter()
            encode(only, money, USAGE_TYPES)
            decimals.append((time.perf_counter() - started) / len(only))
        us = 1e6
        figures = {
            "sink_rows_per_s": round(10_000 / sum(ours), 1),
            "raw_insert_rows_per_s": round(10_000 / sum(raw), 1),
            "sink_ratio": round(sum(raw) / sum(ours), 3),
            # medians over five 10,000-row batches each. insert: the whole Sink.write (encode,
            # chDB insert, both rollups); row_path: the same-sized batches by Store.insert of
            # the rows with the same settings (Sink.write before the columnar sink); encode:
            # building the Arrow stream in Sink.write (Python, GIL held), as wall time and as
            # the thread's CPU time (which other processes on a shared machine inflate less);
            # decimal: the 9 Decimal columns alone (Decimal -> decimal128 in pyarrow's C++)
            "sink_insert_us_per_row": round(statistics.median(wall) * us, 2),
            "sink_row_path_us_per_row": round(statistics.median(before) * us, 2),
            "sink_encode_us_per_row": round(statistics.median(encoding) * us, 2),
            "sink_encode_cpu_us_per_row": round(statistics.median(encoding_cpu) * us, 2),
            "sink_decimal_us_per_row": round(statistics.median(decimals) * us, 2),
        }

        idle = rss_mb()
        live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=2_000_000)
        hour = now.replace(minute=0, second=0, microsecond=0)
        template = priced[0]
        for i in range(tenants * 2):  # two events per tenant, in two hour windows
            st = live.get(i % 8)
            ts = hour - timedelta(minutes=30 * (i % 2))
            st.dedup.add(f"{i:032x}", ts)
            st.add(f"tenant-{i % tenants:06d}", ts, template.total_cost, template.saved_cost,
                   (100, 0, 0, 20, 0), template.value_units)
        grown = rss_mb() - idle
        store.close()
    return {**figures, "state_rss_mb_100k_tenants": round(grown, 1), "live_windows": sum(
        len(p.windows) for p in live.partitions.values())}


def _passthrough() -> dict[str, str]:
    """TOKENMETER_BENCH_WORKER_* variables, passed to the worker without the prefix."""
    head = "TOKENMETER_BENCH_WORKER_"
    return {"TOKENMETER_" + k[len(head):]: v for k, v in os.environ.items()
            if k.startswith(head)}


def _worker(bootstrap: str, data: str, port: int, prefix: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    env.update(TOKENMETER_KAFKA_BOOTSTRAP=bootstrap, TOKENMETER_DATA_DIR=data,
               TOKENMETER_WEB_PORT=str(port), TOKENMETER_TOPIC_PREFIX=prefix,
               TOKENMETER_APP_ID=f"bench-{uuid.uuid4().hex[:6]}", TOKENMETER_PARTITIONS="4",
               TOKENMETER_TAKE_WITHIN_S="0.05")
    env.update(_passthrough())  # may override the above
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _http(url: str, method: str = "GET", body: Any = None) -> Any:
    req = urllib.request.Request(url, method=method,  # noqa: S310 - loopback only
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
        return json.loads(r.read())


def latency_and_decisions(rate: float = 1000.0, seconds: float = 20.0,
                          progress: Progress = lambda s: None,
                          envelopes: bool = False) -> dict[str, float]:
    """Produce-to-breach latency at a steady rate, and decision API latency."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    broker = EmbeddedBroker("127.0.0.1", free_port())
    broker.start()
    port = free_port()
    prefix = "lat-"
    try:
        with tempfile.TemporaryDirectory(prefix="tm-bench-") as data:
            proc = _worker(broker.bootstrap, data, port, prefix)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if _http(f"{url}/health")["status"] == "ready":
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            tenants = [f"tenant-{i:05d}" for i in range(50)]
            # a threshold every 1% up to the API's maximum count (MAX_THRESHOLDS, 1-20%);
            # each tenant's traffic reaches ~20% of its limit: ~20 crossings each, a breach
            # every ~20 events per tenant
            thresholds = [str(t) for t in range(1, MAX_THRESHOLDS + 1)]
            limit = str(int(rate * seconds / len(tenants) * 100 * 5))
            for t in tenants:
                _http(f"{url}/api/budgets/lat-{t}", "PUT",
                      {"tenant_id": t, "limit": limit, "metric": "tokens", "period": "day",
                       "thresholds": thresholds})
            progress(f"latency: {rate:.0f} events/s for {seconds:.0f} s")
            sent: dict[str, float] = {}
            latencies: list[float] = []

            async def run() -> None:
                producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=1)
                consumer = AIOKafkaConsumer(f"{prefix}budget-breaches",
                                            bootstrap_servers=broker.bootstrap,
                                            auto_offset_reset="latest", group_id=None,
                                            fetch_max_wait_ms=10)
                await producer.start()
                await consumer.start()
                await asyncio.sleep(1.0)

                async def consume() -> None:
                    async for m in consumer:
                        b = json.loads(m.value)
                        t = sent.get(b.get("triggering_event_id") or "")
                        if t is not None:
                            latencies.append((time.perf_counter() - t) * 1000)

                task = asyncio.create_task(consume())
                rng = random.Random(1)
                t0 = time.perf_counter()
                n = 0
                pending: dict[str, list[dict[str, Any]]] = {}
                last_flush = t0
                while time.perf_counter() - t0 < seconds:
                    due = int((time.perf_counter() - t0) * rate)
                    while n < due:
                        tenant = rng.choice(tenants)
                        eid = f"lat-{n}"
                        e = {"event_id": eid, "timestamp": datetime.now(timezone.utc).isoformat(),
                             "tenant_id": tenant, "provider": "openai", "model": "gpt-4o-mini",
                             "input_tokens": 100, "output_tokens": 0}
                        sent[eid] = time.perf_counter()
                        n += 1
                        if envelopes:  # what the SDK does: per tenant, up to 100 or 50 ms
                            pending.setdefault(tenant, []).append(e)
                        else:
                            await producer.send(f"{prefix}usage-events",
                                                json.dumps(e).encode(), key=tenant.encode())
                    now_t = time.perf_counter()
                    if envelopes and (now_t - last_flush >= 0.05
                                      or any(len(v) >= 100 for v in pending.values())):
                        for tenant, group in pending.items():
                            await producer.send(f"{prefix}usage-events",
                                                json.dumps(group).encode(), key=tenant.encode())
                        pending.clear()
                        last_flush = now_t
                    await asyncio.sleep(0.002)
                await asyncio.sleep(3.0)
                task.cancel()
                await producer.stop()
                await consumer.stop()

            asyncio.run(run())
            progress("decision API")
            decisions = []
            for i in range(500):
                started = time.perf_counter()
                _http(f"{url}/api/decision?tenant_id={tenants[i % 50]}&model=gpt-4o&"
                      "value_tier=standard&estimated_input_tokens=1000&estimated_output_tokens=200")
                decisions.append((time.perf_counter() - started) * 1000)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    finally:
        broker.stop()
    q = statistics.quantiles
    return {
        "latency_p50_ms": round(statistics.median(latencies), 1) if latencies else float("nan"),
        "latency_p99_ms": round(q(latencies, n=100)[98], 1) if len(latencies) > 1 else float("nan"),
        "latency_samples": len(latencies),
        "decision_p50_ms": round(statistics.median(decisions), 2),
        "decision_p99_ms": round(q(decisions, n=100)[98], 2),
    }


def forecast_speed(budgets: int = 300) -> dict[str, float]:
    """Budgets forecast per second with both cores (synthetic 90-day daily histories)."""
    from pipeline.core.budgets import Budget, period_bounds
    from pipeline.runtime.forecast_job import Job, fit_all

    now = datetime(2025, 3, 20, 12, tzinfo=timezone.utc)
    jobs = []
    for i in range(budgets):
        rng = random.Random(i)
        b = Budget.model_validate({"budget_id": f"b{i}", "tenant_id": f"t{i}", "limit": "1000",
                                   "period": "month"})
        history = [(now.replace(hour=0) - timedelta(days=d),
                    Decimal(str(round(rng.uniform(5, 15), 4)))) for d in range(1, 91)]
        period = period_bounds(b.period, b.tz, now)
        jobs.append(Job(b, history, Decimal(100), period, now))
    t0 = time.perf_counter()
    fit_all(jobs, processes=2)
    took = time.perf_counter() - t0
    return {"forecast_budgets_per_s": round(budgets / took, 2),
            "forecast_1000_budgets_s_estimate": round(1000 / (budgets / took), 1)}


def run_all(progress: Progress = lambda s: None, quick: bool = False) -> dict[str, Any]:
    """Every figure, one run."""
    out: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "python": sys.version.split()[0]}
    progress("core micro-benchmark")
    out.update(micro_core())
    progress("tiktoken")
    out.update(tiktoken_speed())
    progress("sink and state memory")
    out.update(sink_and_state())
    progress("throughput (worker vs baselines)")
    out.update(throughput(n_single=10_000 if quick else 20_000,
                          n_batched=30_000 if quick else 100_000, progress=progress))
    out.update(latency_and_decisions(seconds=8 if quick else 20, progress=progress))
    sdk = latency_and_decisions(rate=2000, seconds=8 if quick else 15, envelopes=True)
    out["latency_p50_ms_2000_sdk_batched"] = sdk["latency_p50_ms"]
    out["latency_p99_ms_2000_sdk_batched"] = sdk["latency_p99_ms"]
    out.update(scale_out(n=20_000 if quick else 40_000, progress=progress))
    out.update(http_ingest(n_kafka=10_000 if quick else 20_000,
                           n_batched=10_000 if quick else 20_000,
                           n_single=1_000 if quick else 3_000,
                           n_mixed=2_000 if quick else 5_000, progress=progress))
    progress("forecast speed")
    out.update(forecast_speed(100 if quick else 300))
    progress("spend-velocity alerts (a simulated week)")
    out.update(asyncio.run(anomaly_week()))
    from pipeline.benchmark.burst import burst, sdk_latency  # it imports this module

    progress("bursty single-event traffic (6,000 msgs/s peak)")
    out.update(burst(progress=progress))
    out.update(sdk_latency(seconds=8 if quick else 15, progress=progress))
    return out


def main() -> None:  # pragma: no cover
    quick = "--quick" in sys.argv
    result = run_all(progress=lambda s: print(s, file=sys.stderr), quick=quick)
    print(json.dumps(result))


if __name__ == "__main__":  # pragma: no cover
    main()
