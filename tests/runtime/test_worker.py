"""A real `tokenmeter worker` process on the real embedded broker and its own chDB."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest

from pipeline.settings import Settings
from tests.helpers import (
    METER,
    get,
    make_traffic,
    produce,
    query,
    read_dlq,
    start_worker,
    subprocess_env,
    truth,
    wait_events,
    wait_ready,
)
from tests.helpers import now as clock_now

pytestmark = pytest.mark.integration






def as_messages(events: list[dict], seed: int) -> list[tuple[bytes, bytes]]:
    """Every event twice, shuffled; chunks of 1-30 sent as single events or envelopes."""
    rng = random.Random(seed)
    stream = events + events
    rng.shuffle(stream)
    out = []
    i = 0
    while i < len(stream):
        chunk = stream[i:i + rng.randint(1, 30)]
        i += len(chunk)
        by_tenant: dict[str, list[dict]] = defaultdict(list)
        for e in chunk:
            by_tenant[e["tenant_id"]].append(e)
        for tenant, group in by_tenant.items():
            value = group[0] if len(group) == 1 else group
            out.append((tenant.encode(), json.dumps(value).encode()))
    return out




def hour_truth(events: list[dict], tenant: str) -> tuple[Decimal, int]:
    now = clock_now()
    start = now.replace(minute=0, second=0, microsecond=0)
    cost, n = Decimal(0), 0
    for e in events:
        p = METER.meter_object(e, now=now)
        if p.tenant_id == tenant and start <= p.timestamp < start + timedelta(hours=1):
            cost += p.total_cost
            n += 1
    return cost, n


def test_worker_meters_exactly_and_survives_sigkill(settings: Settings) -> None:
    events = make_traffic(1500, seed=11)
    msgs = as_messages(events, seed=12)
    bad = [(b"x", b"{nope"), (b"x", json.dumps({"event_id": "u", "timestamp": "2025-01-01T00:00:00Z",
                                                  "tenant_id": "tenant-00001", "provider": "z",
                                                  "model": "zzz", "input_tokens": 1,
                                                  "output_tokens": 1}).encode())]
    half = len(msgs) // 2
    proc = start_worker(settings)
    try:
        wait_ready(settings, proc)
        asyncio.run(produce(settings, msgs[:half] + bad))
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)  # crash mid-stream
        proc.wait()
        proc = start_worker(settings)
        wait_ready(settings, proc)
        asyncio.run(produce(settings, msgs[half:]))
        assert wait_events(settings, len(events)) == len(events)
        time.sleep(1.0)  # anything extra (a double count) would show up now
        rows = query(settings, "SELECT tenant_id, sum(total_cost), count() FROM tokenmeter.usage_events FINAL GROUP BY tenant_id")
        got = {t: Decimal(c) for t, c, _ in rows}
        assert got == truth(events)
        raw = query(settings, "SELECT count() FROM tokenmeter.usage_events")[0][0]
        assert int(raw) == len(events), "a duplicate row reached the ledger"
        # live spend for the current hour, per tenant, equals the ground truth
        for tenant in sorted(got)[:4]:
            status, body = get(settings, f"/api/tenants/{tenant}/spend?window=hour")
            assert status == 200
            cost, n = hour_truth(events, tenant)
            assert (Decimal(body["total_cost"]), body["events"]) == (cost, n), tenant
            assert body["window_end"] > body["window_start"]
        dlq = asyncio.run(read_dlq(settings, 2))
        assert {d["reason_code"] for d in dlq} == {"invalid_json", "unknown_model"}
        # a clean stop commits the acked offsets: a restart replays nothing
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        proc = start_worker(settings)
        wait_ready(settings, proc)
        time.sleep(3.0)
        metrics = urllib.request.urlopen(f"{settings.web_url}/metrics", timeout=5).read().decode()
        assert "tokenmeter_messages_total 0\n" in metrics, metrics
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_api_token_guards_every_api_route(settings: Settings, tmp_path) -> None:
    s = settings.model_copy(update={"api_token": __import__("pydantic").SecretStr("s3cret")})
    env = {**subprocess_env(s), "TOKENMETER_API_TOKEN": "s3cret"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(s, proc)  # /health stays open for probes
        for path in ("/api/budgets", "/api/tenants/x/spend", "/api/breaches",
                     "/api/dashboard/overview", "/api/dashboard/budgets",
                     "/api/dashboard/tenants/x", "/api/dashboard/breaches"):
            assert get(s, path)[0] == 401, path
        # the dashboard page and its script hold no data: open, like the probes
        for path in ("/", "/static/app.js"):
            with urllib.request.urlopen(f"{s.web_url}{path}", timeout=5) as r:
                assert r.status == 200
        assert get(s, "/static/../settings.py")[0] in (401, 404)
        req = urllib.request.Request(f"{s.web_url}/api/budgets",
                                     headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
        # the CLI sends the token it is configured with
        out = subprocess.run([sys.executable, "-m", "pipeline.cli", "query", "--format", "csv",
                              "SELECT 1"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.splitlines() == ["1", "1"]
        bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "query", "SELECT 1"],
                             env={**env, "TOKENMETER_API_TOKEN": "nope"},
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "401" in bad.stderr and "nope" not in bad.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
