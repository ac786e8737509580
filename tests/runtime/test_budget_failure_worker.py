"""A budget nobody may set (limit 1e-15, on the topic from a stray producer or from before the
bounds) against a real worker: metering goes on for everyone, and the budget shows as failed
in /health, `tokenmeter budget list` and the dashboard."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from pipeline.settings import TOPIC_BUDGETS, Settings
from tests.helpers import get, now, produce, query, start_worker, subprocess_env, wait_ready

# budget periods against a worker clock: `make test-clocks` runs it at a month start and a
# year end too
pytestmark = [pytest.mark.integration, pytest.mark.clock_worker]


async def publish_budgets(settings: Settings, budgets: list[dict]) -> None:
    from aiokafka import AIOKafkaProducer

    from pipeline.stream.topics import ensure_topics

    await ensure_topics(settings)
    p = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await p.start()
    try:
        for b in budgets:  # raw JSON, as a producer that skips the CLI's validation sends it
            await p.send_and_wait(settings.topic(TOPIC_BUDGETS), json.dumps(b).encode(),
                                  key=b["budget_id"].encode())
    finally:
        await p.stop()


def event(i: int, tenant: str) -> tuple[bytes, bytes]:
    e = {"event_id": f"bf-{i}-{tenant}", "timestamp": now().isoformat(), "tenant_id": tenant,
         "provider": "openai", "model": "gpt-4o", "input_tokens": 100_000, "output_tokens": 0}
    return tenant.encode(), json.dumps(e).encode()


def test_invalid_budget_is_reported_and_metering_goes_on(settings: Settings) -> None:
    asyncio.run(publish_budgets(settings, [
        {"budget_id": "bad", "tenant_id": "acme", "limit": "1e-15", "period": "day"},
        {"budget_id": "good", "tenant_id": "acme", "limit": "1", "period": "day"},
    ]))
    proc = start_worker(settings)
    try:
        wait_ready(settings, proc)
        asyncio.run(produce(settings, [event(i, t) for i in range(10)
                                       for t in ("acme", "control")]))  # $2.50 each
        deadline = time.monotonic() + 60
        stored = breaches = 0
        while time.monotonic() < deadline and (stored < 20 or breaches < 3):
            stored = int(query(settings, "SELECT count() FROM tokenmeter.usage_events "
                                         "FINAL")[0][0])
            breaches = int(query(settings, "SELECT count() FROM tokenmeter.budget_breaches "
                                           "FINAL WHERE budget_id = 'good'")[0][0])
            time.sleep(0.3)
        assert (stored, breaches) == (20, 3)

        status, health = get(settings, "/health")
        assert status == 200 and health["status"] == "ready"
        assert set(health["failed_budgets"]) == {"bad"}
        assert "out of range" in health["failed_budgets"]["bad"]
        # probes may use any Host; a DNS-rebinding page then learns a count, not ids/reasons
        req = urllib.request.Request(f"{settings.web_url}/health",
                                     headers={"Host": "rebind.example:80"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read())["failed_budgets"] == 1

        status, dash = get(settings, "/api/dashboard/budgets")
        assert status == 200
        shown = {b["budget_id"]: (b["status"], b.get("failure")) for b in dash["budgets"]}
        assert shown["good"][0] == "breached"
        assert shown["bad"][0] == "failed" and "out of range" in shown["bad"][1]

        listed = subprocess.run([sys.executable, "-m", "pipeline.cli", "budget", "list",
                                 "--json"], env=subprocess_env(settings), capture_output=True,
                                text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        got = {b["budget_id"]: (b["status"], b["failure"]) for b in json.loads(listed.stdout)}
        assert got["good"] == ("ok", None)
        assert got["bad"][0] == "invalid" and "out of range" in got["bad"][1]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
