"""Fault: SIGKILL the worker 5 times while traffic flows; totals and breaches stay exact."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest

from pipeline.core.budgets import Budget, breach_id, period_bounds
from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.core.simulate import Simulator
from pipeline.settings import Settings, load_settings
from tests.helpers import free_port, get, produce, query, subprocess_env, wait_events, wait_ready
from tests.helpers import now as clock_now

pytestmark = pytest.mark.integration
METER = Meter(load_catalog(), load_policy())


def test_sigkill_five_times_exact_totals_and_breaches(tmp_path, topic_prefix: str) -> None:
    port = free_port()
    broker = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "broker"],
                              env={**subprocess_env(load_settings()),
                                   "TOKENMETER_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    settings: Settings = load_settings(kafka_bootstrap=f"127.0.0.1:{port}",
                                       data_dir=str(tmp_path / "data"), web_port=free_port(),
                                       topic_prefix=topic_prefix, app_id="crash", partitions=4)
    rng = random.Random(7)
    hour = clock_now().replace(minute=0, second=0, microsecond=0)
    sim = Simulator(tenants=10, seed=7, text_share=0.0)
    events = [sim.event(hour + timedelta(seconds=rng.randint(0, 3599))) for _ in range(4000)]
    stream = events + rng.sample(events, 400)  # 10% exact duplicates
    rng.shuffle(stream)
    truth: dict[str, Decimal] = defaultdict(Decimal)
    now = clock_now()
    for e in events:
        truth[e["tenant_id"]] += METER.meter_object(e, now=now).total_cost
    limit = (truth["tenant-00000"] * Decimal("0.9")).quantize(Decimal("0.000001"))
    budget = Budget.model_validate({"budget_id": "crash-b", "tenant_id": "tenant-00000",
                                    "limit": str(limit), "period": "day"})
    worker = None
    try:
        time.sleep(1.0)
        assert broker.poll() is None, broker.stderr.read()
        out = subprocess.run([sys.executable, "-m", "pipeline.cli", "budget", "set", "crash-b",
                              "--tenant", "tenant-00000", "--limit", str(limit), "--period",
                              "day"], env=subprocess_env(settings), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr

        def feed() -> None:
            msgs = [(e["tenant_id"].encode(), json.dumps(e).encode()) for e in stream]
            for i in range(0, len(msgs), 200):
                asyncio.run(produce(settings, msgs[i:i + 200]))
                time.sleep(0.4)

        feeder = threading.Thread(target=feed)
        feeder.start()
        kills = 0
        while kills < 5:
            worker = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"],
                                      env=subprocess_env(settings), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(3.0, 7.0))  # sometimes before ready, sometimes mid-batch
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills += 1
        feeder.join()
        worker = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"],
                                  env=subprocess_env(settings), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        wait_ready(settings, worker, timeout=90)
        assert wait_events(settings, len(events), timeout=120) == len(events)
        time.sleep(2.0)
        rows = query(settings, "SELECT tenant_id, sum(total_cost) FROM tokenmeter.usage_events "
                               "FINAL GROUP BY tenant_id")
        assert {t: Decimal(c) for t, c in rows} == truth
        raw = int(query(settings, "SELECT count() FROM tokenmeter.usage_events")[0][0])
        assert raw == len(events), "an event was inserted twice"
        for tenant, cost in truth.items():
            status, body = get(settings, f"/api/tenants/{tenant}/spend?window=hour"
                                         f"&at={hour.isoformat().replace('+00:00', 'Z')}")
            assert status == 200 and Decimal(body["total_cost"]) == cost, tenant
        start, _ = period_bounds(budget.period, budget.tz, hour)
        expected = {breach_id("crash-b", start, "", "threshold", t, budget.limit)
                    for t in budget.thresholds if truth["tenant-00000"] * 100 >= t * budget.limit}
        deadline = time.monotonic() + 20
        got: set[str] = set()
        while time.monotonic() < deadline and got != expected:
            out = subprocess.run([sys.executable, "-m", "pipeline.cli", "breaches", "--json"],
                                 env=subprocess_env(settings), capture_output=True, text=True,
                                 timeout=60)
            got = {json.loads(x)["breach_id"] for x in out.stdout.splitlines() if x.strip()}
            time.sleep(0.5)
        assert got == expected and len(expected) == 3
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        broker.send_signal(signal.SIGTERM)
        broker.wait(10)
