"""The breach consumer: an endpoint that never answers holds up no breach's action, and a
full delivery queue costs the breaches it turns away a delivery, not their action."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from aiohttp import web

from pipeline.core.budgets import BreachKind, Budget, BudgetBreach, Metric
from pipeline.delivery.sender import WebhookSender
from pipeline.delivery.webhooks import RetryPolicy
from pipeline.store.client import Store
from pipeline.stream.action_book import ActionBook
from pipeline.stream.breach_consumer import BreachConsumer
from tests.helpers import NOW

ONCE = RetryPolicy(max_attempts=1)


def anomaly_breach(i: int) -> bytes:
    return BudgetBreach(
        breach_id=f"{i:032x}", budget_id=f"b{i}", tenant_id="acme", kind=BreachKind.anomaly,
        threshold_pct=Decimal(0), spent=Decimal(1), limit=Decimal(10), percent=Decimal(10),
        metric=Metric.cost, period_start=NOW, period_end=NOW, severity="critical",
        action="block", emitted_at=NOW, observed_rate=Decimal(5), baseline_rate=Decimal("0.1"),
        window_seconds=60).model_dump_json().encode()


def budgets(n: int) -> dict[str, Budget]:
    return {f"b{i}": Budget.model_validate({
        "budget_id": f"b{i}", "tenant_id": "acme", "limit": 10,
        "actions": {"anomaly": "block"}, "anomaly": {"enabled": True}}) for i in range(n)}


class Stuck:
    """A real endpoint that takes requests and answers none until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.taken = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.taken += 1
        await self.release.wait()
        return web.Response(status=200)

    async def start(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


async def until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def rows(store: Store) -> list[tuple[Any, ...]]:
    return store.rows(f"SELECT breach_id, status, attempts, last_error FROM "
                      f"{store.database}.webhook_deliveries FINAL ORDER BY breach_id")


def test_an_endpoint_that_never_answers_holds_up_no_action(store: Store) -> None:
    # 12 breaches, 8 delivery slots: the agent handles them one after the other, and the
    # last one's action is on while not one delivery has ended
    stuck = Stuck()

    async def scenario() -> None:
        runner, url = await stuck.start()
        sender = WebhookSender(store, secret=None, global_urls=[url], policy=ONCE,
                               timeout_s=60, clock=lambda: NOW)
        actions = ActionBook(store)
        consumer = BreachConsumer(actions, sender, budgets(12).get, lambda: NOW)
        try:
            async with asyncio.timeout(10):  # the old sender waited here for a free slot
                for i in range(12):
                    await consumer.handle(anomaly_breach(i))
            assert [a.budget_id for a in actions.active(NOW)] == sorted(
                f"b{i}" for i in range(12))
            await until(lambda: stuck.taken == 8)  # 8 in flight, 4 waiting
            assert (consumer.handled, sender.waiting, stuck.taken) == (12, 4, 8)
            stuck.release.set()
            await sender.close()
        finally:
            stuck.release.set()
            await runner.cleanup()

    asyncio.run(scenario())
    assert [r[1:3] for r in rows(store)] == [("delivered", 1)] * 12


def test_a_full_queue_turns_breaches_away_with_a_record(store: Store) -> None:
    stuck = Stuck()

    async def scenario() -> list[bool]:
        runner, url = await stuck.start()
        sender = WebhookSender(store, secret=None, global_urls=[url], policy=ONCE,
                               timeout_s=60, concurrency=2, queue_max=3, clock=lambda: NOW)
        actions = ActionBook(store)
        consumer = BreachConsumer(actions, sender, budgets(8).get, lambda: NOW)
        try:
            for i in range(2):  # the two workers take these and wait on the endpoint
                await consumer.handle(anomaly_breach(i))
            await until(lambda: stuck.taken == 2)
            queued = [await sender.submit(BudgetBreach.model_validate_json(anomaly_breach(i)),
                                          None) for i in range(2, 8)]
            assert (sender.waiting, sender.dropped) == (3, 3)
            stuck.release.set()
            await sender.close()
        finally:
            stuck.release.set()
            await runner.cleanup()
        return queued

    assert asyncio.run(scenario()) == [True] * 3 + [False] * 3
    got = rows(store)
    assert [r[1:3] for r in got] == [("delivered", 1)] * 5 + [("gave_up", 0)] * 3
    assert all("delivery queue was full (3 breaches waiting)" in r[3] for r in got[5:])
