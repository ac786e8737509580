"""Budgets end to end: CLI and HTTP API against a real worker on the real broker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest

from pipeline.settings import Settings
from tests.helpers import http, produce, start_worker, subprocess_env, wait_ready
from tests.helpers import now as clock_now

# budget periods against a worker clock: `make test-clocks` runs it at a month start and a
# year end too
pytestmark = [pytest.mark.integration, pytest.mark.clock_worker]


def tm(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          env=subprocess_env(settings), capture_output=True, text=True,
                          timeout=60)



def event(i: int, tenant: str, tokens: int) -> tuple[bytes, bytes]:
    e = {"event_id": f"bw-{i}-{tenant}", "timestamp": clock_now().isoformat(),
         "tenant_id": tenant, "provider": "openai", "model": "gpt-4o-mini",
         "input_tokens": tokens, "output_tokens": 0, "task_type": "summarization"}
    return tenant.encode(), json.dumps(e).encode()


def breaches(settings: Settings) -> list[dict]:
    out = tm(settings, "breaches", "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_budget_lifecycle(settings: Settings) -> None:
    bad = tm(settings, "budget", "set", "b-bad", "--tenant", "acme", "--limit", "10",
             "--pool", "critical=0.5", "low=0.4")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "sum to 1" in bad.stderr
    ok = tm(settings, "budget", "set", "b-acme", "--tenant", "acme", "--limit", "1000",
            "--metric", "tokens", "--period", "day", "--mode", "hard")
    assert ok.returncode == 0, ok.stderr
    listed = tm(settings, "budget", "list", "--json")
    assert [b["budget_id"] for b in json.loads(listed.stdout)] == ["b-acme"]

    proc = start_worker(settings)
    try:
        wait_ready(settings, proc)
        status, body = http(settings, "GET", "/api/budgets")
        assert [b["budget_id"] for b in body["budgets"]] == ["b-acme"]
        # an invalid budget through the API is refused with the reason
        status, body = http(settings, "PUT", "/api/budgets/b2",
                            {"tenant_id": "acme", "limit": "-1", "timezone": "Nowhere/Land"})
        assert status == 422 and "limit" in body["error"] and "timezone" in body["error"]

        asyncio.run(produce(settings, [event(i, "acme", 100) for i in range(4)]
                            + [event(i, "control", 5000) for i in range(4)]))
        sent = time.monotonic()
        asyncio.run(produce(settings, [event(10, "acme", 450)]))  # 850 = 85%
        deadline = time.monotonic() + 30
        got: list[dict] = []
        while time.monotonic() < deadline and len(got) < 2:
            got = breaches(settings)
            time.sleep(0.2)
        assert sorted(int(b["threshold_pct"]) for b in got) == [50, 80]
        assert all(b["tenant_id"] == "acme" and b["budget_id"] == "b-acme" for b in got)
        print(f"produce-to-breach (upper bound incl. CLI start): {time.monotonic() - sent:.2f}s")

        # decision: 100 tokens fit, 200 do not (hard budget, tokens metric): deny
        q = "/api/decision?tenant_id=acme&model=gpt-4o-mini&value_tier=standard"
        status, body = http(settings, "GET", q + "&estimated_input_tokens=100&estimated_output_tokens=0")
        assert status == 200 and body["decision"] == "allow", body
        status, body = http(settings, "GET", q + "&estimated_input_tokens=200&estimated_output_tokens=0")
        assert body["decision"] == "deny" and body["remaining"][0]["remaining"] == "150"
        status, body = http(settings, "GET", "/api/decision?tenant_id=acme&model=nope&estimated_input_tokens=1&estimated_output_tokens=1")
        assert status == 404

        # the forecast job runs inside the worker (it holds chDB) and prints per budget
        fc = tm(settings, "forecast", "--json")
        assert fc.returncode == 0, fc.stderr
        lines = [json.loads(x) for x in fc.stdout.splitlines()]
        assert [x["budget_id"] for x in lines] == ["b-acme"]
        assert {"budget_id", "period_end", "predicted_spend", "lower", "upper",
                "probability_exceed", "model"} <= set(lines[0])
        assert lines[0]["model"] == "none" and "history" in lines[0]["reason"]

        # raise the limit over the API: no new breach; then delete
        status, body = http(settings, "PUT", "/api/budgets/b-acme",
                            {"tenant_id": "acme", "limit": "2000", "metric": "tokens", "period": "day"})
        assert status == 200 and body["limit"] == "2000"
        status, _ = http(settings, "DELETE", "/api/budgets/b-acme")
        assert status == 200
        assert http(settings, "GET", "/api/budgets")[1]["budgets"] == []
        assert len(breaches(settings)) == 2
        mirrored = http(settings, "GET", "/api/breaches?tenant_id=acme")[1]["breaches"]
        assert len(mirrored) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert json.loads(tm(settings, "budget", "list", "--json").stdout) == []
