"""A worker turns a forecast breach's action on, delivers it to a webhook, and resets it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web

from pipeline.core.budgets import BreachKind, BudgetBreach, Metric
from pipeline.delivery.webhooks import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify,
)
from pipeline.settings import Settings
from tests.helpers import free_port, http, now, subprocess_env, wait_ready

pytestmark = [pytest.mark.integration]
SECRET = "worker-test-secret"


class Receiver:
    """A real HTTP endpoint on a thread of its own: 503 once, then 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append((dict(request.headers), await request.read()))
        return web.Response(status=503 if len(self.seen) == 1 else 200)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Receiver:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)



async def publish_breach(settings: Settings, breach: BudgetBreach) -> None:
    from pipeline.stream.topics import start_producer

    producer = await start_producer(settings, "test breach")
    try:
        await producer.send_and_wait(settings.topic("budget-breaches"),
                                     breach.model_dump_json().encode(), key=b"acme")
    finally:
        await producer.stop()


def wait_for(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_worker_applies_delivers_and_resets(settings: Settings) -> None:
    with Receiver() as rx:
        env = subprocess_env(settings)
        env.update({"TOKENMETER_WEBHOOK_URLS": f"http://127.0.0.1:{rx.port}/hook",
                    "TOKENMETER_WEBHOOK_SECRET": SECRET,
                    "TOKENMETER_ACTIONS_REFRESH_S": "0.5"})
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_ready(settings, proc)
            hook = f"http://127.0.0.1:{rx.port}/hook"  # also global: one delivery
            status, shown = http(settings, "PUT", "/api/budgets/team-a", {
                "tenant_id": "acme", "limit": "10", "actions": {"forecast": "block"},
                "webhooks": [{"url": hook}]})
            assert status == 200
            # the API shows webhook URLs masked; a budget read and written back keeps its own
            masked = f"http://127.0.0.1:{rx.port}/…hook"
            assert shown["webhooks"] == [{"url": masked, "format": "json"}]
            status, listed = http(settings, "GET", "/api/budgets?tenant_id=acme")
            assert status == 200 and listed["budgets"][0]["webhooks"][0]["url"] == masked
            status, shown = http(settings, "PUT", "/api/budgets/team-a", listed["budgets"][0])
            assert status == 200 and shown["webhooks"][0]["url"] == masked
            at = now()
            breach = BudgetBreach(
                breach_id="f" * 32, budget_id="team-a", tenant_id="acme",
                kind=BreachKind.forecast, threshold_pct=Decimal(100), spent=Decimal(4),
                limit=Decimal(10), percent=Decimal(40), metric=Metric.cost,
                period_start=at - timedelta(days=1), period_end=at + timedelta(days=1),
                severity="critical", action="alert", emitted_at=at,
                predicted_spend=Decimal(12))
            asyncio.run(publish_breach(settings, breach))

            actions = wait_for(lambda: http(settings, "GET", "/api/actions?tenant_id=acme")[1]
                               ["actions"])
            assert [(a["budget_id"], a["action"], a["breach_id"]) for a in actions] == [
                ("team-a", "block", breach.breach_id)]
            # the decision API and reservations apply it: $4 of $10 spent would allow
            ask = ("/api/decision?tenant_id=acme&model=gpt-4o&estimated_input_tokens=1000"
                   "&estimated_output_tokens=100")
            status, answer = http(settings, "GET", ask)
            assert status == 200 and answer["decision"] == "deny", answer
            assert "team-a" in answer["reason"] and "block" in answer["reason"]
            status, held = http(settings, "POST", "/api/reservations?tenant_id=acme", {
                "tenant_id": "acme", "model": "gpt-4o", "estimated_input_tokens": 1000,
                "estimated_output_tokens": 100})
            assert status == 200 and held["decision"] == "deny", held
            wait_for(lambda: len(rx.seen) >= 2)  # 503, then 200 after a backoff
            headers, body = rx.seen[-1]
            assert headers[IDEMPOTENCY_HEADER] == breach.breach_id
            ts = int(headers[TIMESTAMP_HEADER])
            assert verify(SECRET, ts, breach.breach_id, body, headers[SIGNATURE_HEADER],
                          now_s=ts)
            assert json.loads(body)["breach_id"] == breach.breach_id

            # the reset needs a JSON body; it lifts the action
            assert http(settings, "POST", "/api/budgets/team-a/reset")[0] == 400
            status, body = http(settings, "POST", "/api/budgets/team-a/reset",
                                {"budget_id": "team-a"})
            assert status == 200 and [a["action"] for a in body["reset"]] == ["block"]
            assert http(settings, "GET", "/api/actions?tenant_id=acme")[1]["actions"] == []
            assert http(settings, "GET", ask)[1]["decision"] == "allow"
            assert http(settings, "POST", "/api/budgets/nope/reset", {})[0] == 404

            def delivered() -> Any:
                status, body = http(settings, "POST", "/api/query", {
                    "sql": "SELECT url, status, attempts, last_status "
                           "FROM tokenmeter.webhook_deliveries"})
                return status == 200 and body["rows"]
            assert wait_for(delivered) == [[masked, "delivered", 2, 200]]
            assert len(rx.seen) == 2
        finally:
            proc.send_signal(signal.SIGTERM)
            err = proc.communicate(timeout=30)[1]
    assert SECRET not in err  # never logged
