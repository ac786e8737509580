"""Bursty single-event traffic against a real worker: backlog and breach latency in a burst.

Arrivals follow the shape of public LLM request traces rather than a steady Poisson stream:
- Inter-arrival gaps are Gamma with shape 0.5 (CV 1/sqrt(0.5) = 1.41), the bursty-arrival
  model of BurstGPT (Azure OpenAI GPT traces, arXiv 2401.17644; its generator's default
  ``gamma_shape: float = 0.5``, https://github.com/HPMLL/BurstGPT
  example/src/burstgpt/config.py), on a time-varying rate (time rescaling).
- The rate envelope: the Azure LLM inference trace 2023 (Splitwise, ISCA 2024;
  https://github.com/Azure/AzurePublicDataset/blob/master/AzureLLMInferenceDataset2023.md)
  coding trace holds 8,819 requests in 57.3 min (2.57/s on average) yet 26 of them in the one
  second from 18:20:20.0, with idle gaps of 28 s and 144 s before that burst: busy seconds
  at ~10x the mean between quiet stretches. Here: a base rate, a ramp, a plateau at the peak
  (6,000/s for 6 s), a fast decay and the base rate again (1,000/s, the rate of the
  suite's latency figure; peak/base 6x, milder than the trace's ~10x).
- Tenants are Zipf-skewed (a few heavy ones, as in per-client workload composition,
  ServeGen arXiv 2505.09999); each has one budget crossed every 1% of its limit.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from itertools import pairwise
from typing import Any

from pipeline.benchmark.suite import Progress, _http, _worker
from pipeline.benchmark.throughput import _metrics, free_port
from pipeline.core.numbers import MAX_THRESHOLDS
from pipeline.embedded.broker import EmbeddedBroker


@dataclass(frozen=True)
class Profile:
    """A piecewise-linear rate envelope (events/s) and the Gamma shape of the gaps."""

    base: float = 1000.0
    peak: float = 6000.0
    lead_s: float = 4.0  # at the base rate: the reference backlog before the burst
    ramp_s: float = 3.0
    burst_s: float = 6.0
    decay_s: float = 0.5
    tail_s: float = 20.0
    shape: float = 0.5

    def segments(self) -> list[tuple[float, float, float, float]]:
        """(start s, end s, rate at start, rate at end) of each phase."""
        out: list[tuple[float, float, float, float]] = []
        t = 0.0
        for length, r0, r1 in ((self.lead_s, self.base, self.base),
                               (self.ramp_s, self.base, self.peak),
                               (self.burst_s, self.peak, self.peak),
                               (self.decay_s, self.peak, self.base),
                               (self.tail_s, self.base, self.base)):
            if length > 0:
                out.append((t, t + length, r0, r1))
                t += length
        return out

    def burst_window(self) -> tuple[float, float]:
        """Start and end (s) of the plateau at the peak rate (a steady profile: all of it)."""
        if self.burst_s == 0:
            return 0.0, self.segments()[-1][1]
        start = self.lead_s + self.ramp_s
        return start, start + self.burst_s

    def expected(self) -> float:
        """Expected number of arrivals (the integral of the rate)."""
        return sum((r0 + r1) / 2 * (b - a) for a, b, r0, r1 in self.segments())


def steady(rate: float, seconds: float) -> Profile:
    """A constant rate with the same bursty gaps."""
    return Profile(base=rate, peak=rate, lead_s=seconds, ramp_s=0, burst_s=0, decay_s=0,
                   tail_s=0)


def arrivals(profile: Profile, seed: int) -> list[float]:
    """Arrival offsets (s, sorted): a Gamma renewal process mapped through the envelope."""
    rng = random.Random(seed)
    k = profile.shape
    out: list[float] = []
    u = rng.gammavariate(k, 1 / k)  # unit-mean gaps in "operational time" (expected count)
    done = 0.0
    for a, b, r0, r1 in profile.segments():
        total, slope = (r0 + r1) / 2 * (b - a), (r1 - r0) / (b - a)
        while u - done < total:
            v = u - done  # invert r0*t + slope*t^2/2 = v in the form that is stable for slope<0
            out.append(a + 2 * v / (r0 + math.sqrt(max(0.0, r0 * r0 + 2 * slope * v))))
            u += rng.gammavariate(k, 1 / k)
        done += total
    return out


def tenant_weights(tenants: int, skew: float = 1.0) -> list[float]:
    """Zipf shares of ``tenants`` tenants (the first is the heaviest)."""
    raw = [1 / (i + 1) ** skew for i in range(tenants)]
    return [w / sum(raw) for w in raw]


def assign_tenants(n: int, weights: list[float], seed: int) -> list[int]:
    """The tenant index of each of ``n`` arrivals."""
    return random.Random(f"{seed}-tenants").choices(range(len(weights)), weights, k=n)


@dataclass
class _Run:
    """What one drive of the worker recorded, times in s from the first scheduled send."""

    times: list[float]
    sent: list[float] = field(default_factory=list)  # handed to the producer (SDK: recorded)
    acked: list[float] = field(default_factory=list)  # acknowledged by the broker
    breaches: list[tuple[int, float]] = field(default_factory=list)  # (event index, ms)
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # t, acked, metered
    delivered: int = 0
    t0: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)


def _sampler(run: _Run, url: str, stop: threading.Event, every: float) -> None:
    # a thread, so that a slow /metrics answer never stalls the producer's event loop
    while not stop.is_set():
        before, t1 = run.delivered, time.perf_counter()
        try:
            metered = _metrics(url).get("tokenmeter_events_total", 0.0)
        except OSError:
            metered = math.nan
        t2, after = time.perf_counter(), run.delivered
        if not math.isnan(metered):  # the worker counted at some moment between t1 and t2
            run.samples.append(((t1 + t2) / 2 - run.t0, (before + after) / 2, metered))
        stop.wait(max(0.0, every - (t2 - t1)))


async def _produce(run: _Run, producer: Any, topic: str, keys: list[bytes],
                   values: list[bytes], envelopes: bool) -> None:
    times, n, i = run.times, len(run.times), 0
    pending: dict[bytes, list[int]] = {}
    last_flush = 0.0
    run.sent, run.acked = [math.nan] * n, [math.nan] * n

    def acked(group: list[int], fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            at = time.perf_counter() - run.t0
            for j in group:
                run.acked[j] = at
            run.delivered += len(group)

    async def send(key: bytes, group: list[int]) -> None:
        value = (b"[" + b",".join(values[j] for j in group) + b"]" if envelopes
                 else values[group[0]])
        (await producer.send(topic, value, key=key)).add_done_callback(partial(acked, group))

    while i < n:
        now = time.perf_counter() - run.t0
        batch_end = i + 500  # yield now and then: aiokafka's sender runs on this loop too
        while i < n and i < batch_end and times[i] <= now:
            run.sent[i] = time.perf_counter() - run.t0
            if not envelopes:
                await send(keys[i], [i])
            else:  # what the SDK does: per tenant, up to 100 events or 50 ms
                pending.setdefault(keys[i], []).append(i)
                if len(pending[keys[i]]) >= 100:
                    await send(keys[i], pending.pop(keys[i]))
            i += 1
        if envelopes and (now - last_flush >= 0.05 or i == n):
            for key, group in pending.items():
                await send(key, group)
            pending.clear()
            last_flush = now
        wait = (times[i] if i < n else now) - (time.perf_counter() - run.t0)
        await asyncio.sleep(min(max(wait, 0.0), 0.005))


async def _drive(bootstrap: str, url: str, prefix: str, run: _Run, keys: list[bytes],
                 values: list[bytes], envelopes: bool, drain_s: float) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    consumer = AIOKafkaConsumer(f"{prefix}budget-breaches", bootstrap_servers=bootstrap,
                                auto_offset_reset="latest", group_id=None, fetch_max_wait_ms=10)
    await producer.start()
    await consumer.start()
    await asyncio.sleep(1.0)

    async def consume() -> None:
        async for m in consumer:
            eid = json.loads(m.value).get("triggering_event_id") or ""
            if eid.startswith("burst-"):
                i = int(eid[6:])
                run.breaches.append((i, (time.perf_counter() - run.t0 - run.sent[i]) * 1000))

    task = asyncio.create_task(consume())
    stop = threading.Event()
    run.t0 = time.perf_counter()
    sampler = threading.Thread(target=_sampler, args=(run, url, stop, 0.1), daemon=True)
    sampler.start()
    try:
        await _produce(run, producer, f"{prefix}usage-events", keys, values, envelopes)
        await producer.flush()
        deadline = time.perf_counter() + drain_s
        while time.perf_counter() < deadline and not (
                run.samples and run.delivered == len(run.times)
                and run.samples[-1][2] >= run.delivered):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # the last breaches are in flight
    finally:
        stop.set()
        sampler.join(5)
        task.cancel()
        await producer.stop()
        await consumer.stop()


def _cpu_s(pid: int | str = "self") -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(profile: Profile, envelopes: bool, seed: int, tenants: int, drain_s: float,
             progress: Progress) -> _Run:
    times = arrivals(profile, seed)
    weights = tenant_weights(tenants)
    who = assign_tenants(len(times), weights, seed)
    names = [f"tenant-{t:05d}" for t in range(tenants)]
    start = datetime.now(timezone.utc)
    # pre-encoded, so that producing costs one send() per message and no JSON work
    values = [json.dumps({"event_id": f"burst-{i}", "tenant_id": names[who[i]],
                          "timestamp": (start + timedelta(seconds=t)).isoformat(),
                          "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 100,
                          "output_tokens": 0}).encode() for i, t in enumerate(times)]
    keys = [names[t].encode() for t in who]
    broker = EmbeddedBroker("127.0.0.1", free_port())
    broker.start()
    port, prefix = free_port(), "burst-"
    try:
        with tempfile.TemporaryDirectory(prefix="tm-bench-") as data:
            proc = _worker(broker.bootstrap, data, port, prefix)
            # read the worker's stderr as it comes: a full pipe would block the worker
            err: list[str] = []
            threading.Thread(target=lambda: err.extend(proc.stderr or []), daemon=True).start()
            try:
                url = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        if _http(f"{url}/health")["status"] == "ready":
                            break
                    except OSError:
                        time.sleep(0.2)
                else:
                    raise RuntimeError(f"worker not ready: {''.join(err)[-2000:]}")
                # a threshold every 1% up to the 20% each tenant uses (MAX_THRESHOLDS)
                thresholds = [str(t) for t in range(1, MAX_THRESHOLDS + 1)]
                for t, w in enumerate(weights):
                    limit = str(max(1, int(len(times) * w * 100 * 100 / MAX_THRESHOLDS)))
                    _http(f"{url}/api/budgets/burst-{names[t]}", "PUT",
                          {"tenant_id": names[t], "limit": limit, "metric": "tokens",
                           "period": "day", "thresholds": thresholds})
                progress(f"{len(times)} events over {profile.segments()[-1][1]:.0f} s"
                         + (" in SDK envelopes" if envelopes else ", one message each"))
                run = _Run(times)
                cpu, wall = (_cpu_s(), _cpu_s(proc.pid)), time.perf_counter()
                asyncio.run(_drive(broker.bootstrap, url, prefix, run, keys, values, envelopes,
                                   drain_s))
                wall = time.perf_counter() - wall  # what each process used of the 2 cores
                run.cpu = {"harness_cpu_pct": round((_cpu_s() - cpu[0]) / wall * 100, 1),
                           "worker_cpu_pct": round((_cpu_s(proc.pid) - cpu[1]) / wall * 100, 1)}
                if proc.poll() is not None:
                    raise RuntimeError(f"worker died: {''.join(err)[-2000:]}")
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    finally:
        broker.stop()
    return run


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else math.nan
    return round(statistics.quantiles(values, n=100)[q - 1], 1)


def _per_second(times: list[float]) -> Counter[int]:
    return Counter(int(t) for t in times if not math.isnan(t))


def timeline(run: _Run) -> list[dict[str, float]]:
    """Per second: events scheduled, sent, acked by the broker, and the largest backlog."""
    planned, sent, acked = (_per_second(ts) for ts in (run.times, run.sent, run.acked))
    backlog: dict[int, float] = {}
    for t, delivered, metered in run.samples:
        backlog[int(t)] = max(backlog.get(int(t), 0.0), delivered - metered)
    return [{"second": s, "planned": planned[s], "sent": sent[s], "acked": acked[s],
             "backlog_max": backlog[s]} for s in sorted(backlog)]


def figures(profile: Profile, run: _Run, clear_frac: float = 0.01) -> dict[str, float]:
    """Send rate, breach latency, backlog peak and time to clear after the burst."""
    start, end = profile.burst_window()
    last = profile.segments()[-1][1]  # the last scheduled send
    planned, sent, acked = (_per_second(ts) for ts in (run.times, run.sent, run.acked))
    plateau = [sent[s] for s in range(math.ceil(start), int(end))]
    lag = [(a - t) * 1000 for a, t in zip(run.acked, run.times, strict=True) if not math.isnan(a)]
    lat = {"burst": [ms for i, ms in run.breaches if start <= run.times[i] < end],
           "after": [ms for i, ms in run.breaches if run.times[i] >= end],
           "all": [ms for _, ms in run.breaches]}
    backlog = [(t, a - m) for t, a, m in run.samples]
    before = sorted(b for t, b in backlog if 1.0 <= t < profile.lead_s)
    reference = before[int(len(before) * 0.9)] if before else 0.0
    threshold = max(clear_frac * profile.peak, reference)

    def clear(under: float, until: float) -> float:
        # the first sample after the burst at or under ``under``, taken before ``until``
        return next((round(max(0.0, t - end), 2) for t, b in backlog
                     if end <= t < until and b <= under), math.nan)

    tail = [b for t, b in backlog if last - 5 <= t < last]
    # how far behind the worker is: the age of the m-th acked event when m have been metered
    order = sorted(a for a in run.acked if not math.isnan(a))
    behind = [t - order[min(int(m), len(order)) - 1] for t, _, m in run.samples if m >= 1]
    gaps = [b[0] - a[0] for a, b in pairwise(run.samples)]
    out: dict[str, float] = {
        "events": len(run.times), "events_acked": run.delivered,
        "planned_peak_per_s": max(planned.values()),
        "sent_peak_per_s": max(sent.values(), default=0),
        "sent_min_per_s_at_peak": min(plateau) if plateau else math.nan,
        "acked_peak_per_s": max(acked.values(), default=0),
        "ack_lag_p99_ms": _pct(lag, 99),
        "backlog_peak": max((b for _, b in backlog), default=math.nan),
        "backlog_before_burst_p90": reference, "backlog_clear_threshold": threshold,
        # cleared while traffic still arrives; NaN: not within the tail of the schedule
        "backlog_clear_s": clear(threshold, last),
        "backlog_clear_1pct_s": clear(clear_frac * profile.peak, last),
        "backlog_tail_p50": statistics.median(tail) if tail else math.nan,
        "behind_peak_s": round(max(behind, default=math.nan), 2),
        "backlog_zero_s": clear(0, math.inf),  # fully drained, after the sends stopped too
        "sample_interval_ms": round(statistics.median(gaps) * 1000, 1) if gaps else math.nan,
        **run.cpu,
    }
    for phase, values in lat.items():
        out[f"breach_p50_ms_{phase}"] = _pct(values, 50)
        out[f"breach_p99_ms_{phase}"] = _pct(values, 99)
        out[f"breach_samples_{phase}"] = len(values)
    return out


def burst(peak: float = 6000.0, base: float = 1000.0, burst_s: float = 6.0, seed: int = 1,
          tenants: int = 50, progress: Progress = lambda s: None,
          timeline_out: list[dict[str, float]] | None = None) -> dict[str, float]:
    """The bursty scenario of issue #20, keys prefixed ``burst_`` for `tokenmeter bench`.

    ``timeline_out``, if given, receives the per-second timeline (planned, sent, acked, backlog).
    """
    profile = Profile(base=base, peak=peak, burst_s=burst_s)
    run = _measure(profile, False, seed, tenants, 25.0, progress)
    if timeline_out is not None:
        timeline_out.extend(timeline(run))
    return {f"burst_{k}": v for k, v in figures(profile, run).items()}


def sdk_latency(rate: float = 5000.0, seconds: float = 15.0, seed: int = 1, tenants: int = 50,
                progress: Progress = lambda s: None,
                timeline_out: list[dict[str, float]] | None = None) -> dict[str, float]:
    """Produce-to-breach at a steady rate in SDK envelopes (per tenant, 100 events or 50 ms)."""
    profile = steady(rate, seconds)
    run = _measure(profile, True, seed, tenants, 15.0, progress)
    if timeline_out is not None:
        timeline_out.extend(timeline(run))
    f, tag = figures(profile, run), f"{rate:.0f}_sdk_batched"
    keys = ("breach_p50_ms_all", "breach_p99_ms_all", "breach_samples_all", "ack_lag_p99_ms",
            "backlog_peak", "harness_cpu_pct", "worker_cpu_pct")
    return {f"{k.replace('breach', 'latency').removesuffix('_all')}_{tag}": f[k] for k in keys}


def main() -> None:  # pragma: no cover
    """`python -m pipeline.benchmark.burst [--json] [--sdk]`."""
    def say(s: str) -> None:
        print(s, file=sys.stderr)

    rows: list[dict[str, float]] = []
    out: dict[str, Any] = dict(sdk_latency(progress=say, timeline_out=rows) if "--sdk" in sys.argv
                               else burst(progress=say, timeline_out=rows))
    if "--json" in sys.argv:
        print(json.dumps({**out, "timeline": rows}))
        return
    for row in rows:
        print(" ".join(f"{k}={v:g}" for k, v in row.items()))
    for k, v in out.items():
        print(f"{k:40s} {v}")


if __name__ == "__main__":  # pragma: no cover
    main()
