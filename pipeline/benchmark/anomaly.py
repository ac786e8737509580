"""Spend-velocity alerts, measured: false alarms on a shaped week and runaway detection latency.

On the embedded chDB (migrated Store) with the real Processor (group-committed inserts via
``submit``, as the worker runs it) and the VelocityWatch of the worker: four weeks of history
with a daily and weekly shape are inserted for five tenants, then one simulated week of the
same shape is replayed through the Processor in 5 s steps of event time, the SettableClock
moved with it, with runaways (10x the tenant's usual call rate of that hour, ten minutes
each) injected at random times in the same run. The goal figures are over the three tenants
of 12 to 24 calls a minute at the peak; two low-volume tenants (3 and 1) are measured and
reported apart (at 0.1 to 0.3 calls a minute in a weekend night, ten times that is still a
handful of calls a minute: a minute holds too little evidence to tell it from chance at one
false alarm a week). A sixth tenant has no history.

What is simulated: the clock follows event time (a week runs in about two minutes), and the
broker is not in this loop (the Processor is fed RawMessages directly). A baseline read takes
milliseconds while a step stands for 5 s, so the loop waits for baseline reads in flight at
each step, as real time would give them.

Usage: .venv/bin/python -m pipeline.benchmark.anomaly [SEED]
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pipeline.core.simulate import Simulator

START = datetime(2026, 2, 2, tzinfo=timezone.utc)  # a Monday: the replayed week starts here
STEP_S = 5
WEEKS = 4
# usual calls a minute of each tenant at a weekday's busiest hour; events are the
# simulator's mix with ten times its context (agent-sized calls, a few cents each). The goal
# group: 12 to 24 calls a minute at the peak, 1.4 to 2.7 in a weekend night's quietest hour.
TENANTS = {"tenant-a": 24.0, "tenant-b": 16.0, "tenant-c": 12.0}
# below the statistical limit (docs/budgets.md, "Spend velocity"): measured and reported
# apart, not counted in the goal figures
LOW_TENANTS = {"tenant-d": 3.0, "tenant-e": 1.0}
NEW_TENANT = ("tenant-new", 6.0)  # same kind of traffic, no history
FLOOR = Decimal("0.02")  # per minute: set for these tenants (the default is 0.05)
RUNAWAYS = 24  # in the goal group
LOW_RUNAWAYS = 10
NEW_RUNAWAYS = 4  # in the tenant without history, from its second day
RUNAWAY_S = 600
RUNAWAY_X = 10


def shape(at: datetime) -> float:
    """Share of the peak rate at ``at``: a working-day curve, quieter weekends."""
    weekend = 0.45 if at.weekday() >= 5 else 1.0
    hour = at.hour + at.minute / 60
    return weekend * (0.25 + 0.75 * math.exp(-((hour - 14) ** 2) / 12))


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth; means here are small)."""
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def templates(tenant: str, n: int, seed: int) -> list[dict[str, Any]]:
    """A pool of event bodies of one tenant (costs as the simulator mixes them, x10)."""
    sim = Simulator(tenants=1, seed=seed, text_share=0.0)
    out = []
    for _ in range(n):
        e = sim.event(START)
        e["tenant_id"] = tenant
        e["project_id"] = f"{tenant}-p1"
        e["input_tokens"] *= 10
        e.pop("service_tier", None)
        out.append(e)
    return out


def pick_runaways(rng: random.Random, tenants: dict[str, float], count: int,
                  earliest_s: int = 3600) -> list[tuple[str, datetime]]:
    """(tenant, start) of each injection: random times, apart within a tenant."""
    chosen: list[tuple[str, datetime]] = []
    names = sorted(tenants)
    while len(chosen) < count:
        tenant = names[len(chosen) % len(names)]
        at = START + timedelta(seconds=STEP_S * rng.randrange(earliest_s // STEP_S,
                                                               (7 * 86400 - 3600) // STEP_S))
        if all(t != tenant or abs((at - s).total_seconds()) > 2 * 3600 for t, s in chosen):
            chosen.append((tenant, at))
    return sorted(chosen, key=lambda r: r[1])


async def run(seed: int = 7, progress: Any = lambda s: None) -> dict[str, Any]:
    """Every figure of one run."""
    from pipeline.core.budgets import Budget
    from pipeline.core.catalog import load_catalog
    from pipeline.core.meter import Meter
    from pipeline.core.scoring import load_policy
    from pipeline.settings import load_settings
    from pipeline.store.client import open_store
    from pipeline.store.migrations import migrate
    from pipeline.store.sink import USAGE_COLUMNS, Sink, usage_row
    from pipeline.stream.live import LiveState
    from pipeline.stream.processor import Processor, RawMessage
    from pipeline.stream.velocity import VelocityWatch
    from pipeline.testing import ListPublisher, SettableClock

    rng = random.Random(seed)
    meter = Meter(load_catalog(), load_policy())
    history_tenants = {**TENANTS, **LOW_TENANTS}
    peaks = {**history_tenants, NEW_TENANT[0]: NEW_TENANT[1]}
    pools = {t: templates(t, 400, seed + i) for i, t in enumerate(peaks)}
    with tempfile.TemporaryDirectory() as data:
        store = open_store(load_settings(data_dir=data))
        migrate(store)
        t0 = time.perf_counter()
        # history: priced rows of the template pools, inserted directly
        priced = {t: [meter.meter_object(e, now=START) for e in pool]
                  for t, pool in pools.items()}
        rows: list[list[Any]] = []
        n_history = 0
        at = START - timedelta(weeks=WEEKS)
        while at < START:
            for tenant, peak in history_tenants.items():
                for _ in range(poisson(rng, peak * shape(at) * STEP_S / 60)):
                    p = rng.choice(priced[tenant])
                    ts = at + timedelta(seconds=rng.random() * STEP_S)
                    rows.append(usage_row(replace(p, event_id=f"h{n_history}", timestamp=ts),
                                          late=False, partition=0, offset=n_history,
                                          ingested_at=ts))
                    n_history += 1
            if len(rows) >= 50_000:
                store.insert("usage_events", rows, USAGE_COLUMNS)
                rows = []
            at += timedelta(seconds=STEP_S)
        if rows:
            store.insert("usage_events", rows, USAGE_COLUMNS)
        history_s = time.perf_counter() - t0
        progress(f"history: {n_history} rows in {history_s:.1f} s")

        clock = SettableClock(START)
        breaches = ListPublisher()
        watch = VelocityWatch(store, clock)
        live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=1), max_ids=500_000)
        live.get(0)
        proc = Processor(meter, Sink(store), store, live, ListPublisher(), clock=clock,
                         publish_breach=breaches, watchers=[watch])
        watch.bind(proc.book, proc.budgets.owns)
        for tenant in peaks:
            await proc.budget_changed(f"{tenant}-velocity", Budget.model_validate({
                "budget_id": f"{tenant}-velocity", "tenant_id": tenant, "limit": "1000000",
                "anomaly": {"enabled": True, "floor": str(FLOOR)}}))

        goal_runaways = pick_runaways(rng, TENANTS, RUNAWAYS)
        low_runaways = pick_runaways(rng, LOW_TENANTS, LOW_RUNAWAYS)
        # the tenant without history: runaways once it has a day of its own (before that
        # only max_rate applies: it is learning)
        new_runaways = pick_runaways(rng, dict([NEW_TENANT]), NEW_RUNAWAYS, 26 * 3600)
        runaways = sorted(goal_runaways + low_runaways + new_runaways, key=lambda r: r[1])
        spans: dict[str, list[tuple[datetime, datetime]]] = {}
        for tenant, s in runaways:
            spans.setdefault(tenant, []).append((s, s + timedelta(seconds=RUNAWAY_S)))
        offset = 0
        n_events = 0
        waited = 0.0

        async def durable() -> None:
            return None

        t1 = time.perf_counter()
        at = START
        end = START + timedelta(weeks=1)
        while at < end:
            batch = []
            for tenant, peak in peaks.items():
                x = RUNAWAY_X if any(s <= at < e for s, e in spans.get(tenant, ())) else 1
                for _ in range(poisson(rng, x * peak * shape(at) * STEP_S / 60)):
                    e = dict(rng.choice(pools[tenant]))
                    e["event_id"] = f"r{n_events}"
                    e["timestamp"] = (at + timedelta(seconds=rng.random() * STEP_S)).isoformat()
                    batch.append(RawMessage(json.dumps(e).encode(), "usage-events", 0, offset))
                    offset += 1
                    n_events += 1
            at += timedelta(seconds=STEP_S)
            clock.set(at)
            if batch:
                await proc.submit(batch, durable)
            if watch.loading:  # a few ms of real time; the step stands for 5 s
                w0 = time.perf_counter()
                await watch.settle()
                waited += time.perf_counter() - w0
        await proc.drain()
        replay_s = time.perf_counter() - t1
        store.close()

    anomalies = [json.loads(v) for _, v in breaches.sent]
    anomalies = [b for b in anomalies if b["kind"] == "anomaly"]
    goal = detection(anomalies, goal_runaways, TENANTS)
    low = detection(anomalies, low_runaways, LOW_TENANTS)
    new = [b for b in anomalies if b["tenant_id"] == NEW_TENANT[0]]
    fresh = detection(anomalies, new_runaways, dict([NEW_TENANT]))
    return {
        "anomaly_history_rows": n_history,
        "anomaly_replayed_events": n_events,
        **{f"anomaly_{k}": v for k, v in goal.items()},
        **{f"anomaly_low_volume_{k}": v for k, v in low.items()},
        **{f"anomaly_no_history_{k}": v for k, v in fresh.items()},
        "anomaly_no_history_tenant_breaches": len(new),
        "anomaly_no_history_first_at": min((b["emitted_at"] for b in new), default=None),
        "anomaly_no_history_first_rate": new[0]["observed_rate"] if new else None,
        "anomaly_baseline_reads": watch.loads,
        "anomaly_baseline_failures": watch.failures,
        "anomaly_history_insert_s": round(history_s, 1),
        "anomaly_replay_s": round(replay_s, 1),
        "anomaly_replay_waiting_for_baselines_s": round(waited, 1),
    }


def detection(anomalies: list[dict[str, Any]], runaways: list[tuple[str, datetime]],
              tenants: dict[str, float]) -> dict[str, Any]:
    """Latency of the first breach inside each injected runaway, and the breaches of these
    tenants that no runaway explains (false alarms)."""
    latencies: list[float] = []
    missed = 0
    explained: set[str] = set()
    for tenant, start in runaways:
        hits = [b for b in anomalies if b["tenant_id"] == tenant
                and start <= datetime.fromisoformat(b["emitted_at"])
                < start + timedelta(seconds=RUNAWAY_S)]
        if not hits:
            missed += 1
            continue
        first = min(hits, key=lambda b: b["emitted_at"])
        explained.update(b["breach_id"] for b in hits)
        latencies.append((datetime.fromisoformat(first["emitted_at"]) - start).total_seconds())
    false = {t: sum(1 for b in anomalies if b["tenant_id"] == t
                    and b["breach_id"] not in explained) for t in tenants}
    latencies.sort()
    # a missed runaway counts as detected never: p95 is over every injection
    ranked = latencies + [math.inf] * missed
    p95 = ranked[min(len(ranked) - 1, math.ceil(0.95 * len(ranked)) - 1)] if ranked else None
    def finite(v: float | None) -> float | None:  # JSON has no infinity: null is "missed"
        return None if v is None or math.isinf(v) else v

    return {
        "runaways_injected": len(runaways),
        "runaways_missed": missed,
        "detection_latency_p50_s": finite(statistics.median(ranked)) if ranked else None,
        "detection_latency_p95_s": finite(p95),
        "detection_latency_max_s": finite(ranked[-1]) if ranked else None,
        "false_alarms_per_tenant_week": false,
        "false_alarms_max_per_tenant_week": max(false.values()),
        "peak_calls_per_min": tenants,
    }


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    print(json.dumps(asyncio.run(run(seed, progress=lambda s: print(s, file=sys.stderr)))))


if __name__ == "__main__":
    main()
