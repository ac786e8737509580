"""`tokenmeter up --demo`: three weeks of backdated history, budgets of every kind, a first
forecast, steady simulated traffic, routed calls (the SDK router and the decision API pick
the model of each simulated prompt), and one runaway agent run that a run budget stops and the
velocity watch reports as an anomaly, so every dashboard panel has something to show."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.core.budgets import Budget, Period, period_bounds
from pipeline.core.scoring import load_policy
from pipeline.core.simulate import Simulator, routed_call
from pipeline.runtime.runaway_demo import run_budget, run_runaway
from pipeline.settings import TOPIC_EVENTS, Settings
from pipeline.stream.topics import start_producer

log = logging.getLogger(__name__)
HISTORY_DAYS = 21
RUNAWAY_AFTER_S = 5.0  # after the backfill and budgets: the dashboard shows the calm first
UTC = ZoneInfo("UTC")
# routed calls go to the tenants with demo budgets (near its limit, comfortable, hard and
# over), so the threshold shift shows; batches of a bounded thread each, so stopping the
# worker never waits on an endless one
ROUTED_TENANTS = ("tenant-00000", "tenant-00001", "tenant-00002")
ROUTED_BATCH = 40
ROUTED_PAUSE_S = 0.25


def demo_budgets(spend: dict[str, Decimal], now: datetime) -> list[Budget]:
    """One budget per status to show: near its limit (forecast), comfortable, and breached."""
    def month_pace(tenant: str, factor: str) -> Decimal:
        start, end = period_bounds(Period.month, UTC, now)
        share = Decimal((now - start) / (end - start)) or Decimal(1)
        return max(Decimal("0.01"), (spend.get(tenant, Decimal(0)) / share
                                     * Decimal(factor)).quantize(Decimal("0.01")))

    return [
        Budget(budget_id="demo-tenant-00000-month", tenant_id="tenant-00000",
               limit=month_pace("tenant-00000", "1.05")),
        Budget(budget_id="demo-tenant-00001-month", tenant_id="tenant-00001",
               limit=month_pace("tenant-00001", "3")),
        Budget.model_validate({"budget_id": "demo-tenant-00002-month",
                               "tenant_id": "tenant-00002", "mode": "hard",
                               "limit": month_pace("tenant-00002", "0.5")}),
        # every end user of the busiest tenant at most $0.50 a day (a template)
        Budget.model_validate({"budget_id": "demo-tenant-00000-users", "period": "day",
                               "tenant_id": "tenant-00000", "each": "user_id",
                               "limit": "0.5"}),
        run_budget(),
    ]


def add_demo_traffic(runtime: Any, settings: Settings, rate: float) -> None:
    """Register the demo task on the worker's app."""

    async def demo() -> None:
        while not runtime.ready:
            await asyncio.sleep(0.2)
        producer = await start_producer(settings, "send demo traffic", linger_ms=20)
        topic = settings.topic(TOPIC_EVENTS)
        try:
            await backfill(producer, topic)
            loop = asyncio.get_running_loop()
            stopper = loop.create_task(runaway())  # noqa: F841 - kept
            routing = loop.create_task(routed())  # noqa: F841 - kept
            live = Simulator(tenants=50, seed=7)
            while True:
                now = runtime.clock()
                batch = [live.event(now) for _ in range(max(1, int(rate / 10)))]
                await producer.send(topic, json.dumps(batch).encode(),
                                    key=batch[0]["tenant_id"].encode())
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()

    async def runaway() -> None:
        await asyncio.sleep(RUNAWAY_AFTER_S)
        run_id = f"demo-runaway-{runtime.clock():%Y%m%dT%H%M%S}"
        log.info("demo: starting runaway agent run %s (Opus in a loop, $2 run budget)", run_id)
        result = await asyncio.to_thread(run_runaway, settings, runtime.clock, run_id)
        log.info("demo: runaway run %s: %d calls, ~$%s, stopped=%s (%s)", result.run_id,
                 result.steps, result.estimated_spend, result.stopped, result.reason)

    async def routed() -> None:
        batch = 0
        while True:
            try:
                result = await asyncio.to_thread(run_routed, settings, runtime.clock,
                                                 calls=ROUTED_BATCH, pause_s=ROUTED_PAUSE_S,
                                                 seed=batch)
                log.info("demo: routed %d calls (%s), %d denied", sum(result.tiers.values()),
                         dict(result.tiers), result.denied)
            except Exception as exc:  # noqa: BLE001 - a rebalance or restart: go on
                log.warning("demo: routed traffic failed (%s); retrying in 5 s", exc)
                await asyncio.sleep(5)
            batch += 1

    async def backfill(producer: Any, topic: str) -> None:
        now = runtime.clock()
        events = Simulator(tenants=8, seed=11).history(now, HISTORY_DAYS, per_hour=12)
        by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in events:
            by_tenant[e["tenant_id"]].append(e)
        for tenant, items in by_tenant.items():
            for i in range(0, len(items), 500):
                await producer.send(topic, json.dumps(items[i:i + 500]).encode(),
                                    key=tenant.encode())
        await producer.flush()
        processor = runtime.processor
        m = processor.metrics
        for _ in range(600):  # the history is in the ledger before budgets judge it
            if m.events + m.duplicates + sum(m.dead.values()) >= len(events):
                break
            await asyncio.sleep(0.2)
        spend: dict[str, Decimal] = defaultdict(Decimal)
        start, _ = period_bounds(Period.month, UTC, now)
        for e in events:
            if datetime.fromisoformat(e["timestamp"]) >= start:
                spend[e["tenant_id"]] += processor.meter.meter_object(e, now=now).total_cost
        for b in demo_budgets(spend, now):
            if b.budget_id not in processor.book.budgets:
                await runtime.publish_budget(b.budget_id, b.model_dump_json().encode())
                await processor.budget_changed(b.budget_id, b)
        forecasts, _breaches = await runtime.forecast()
        log.info("demo: %d backdated events over %d days, %d budgets, %d forecasts",
                 len(events), HISTORY_DAYS, len(processor.book.budgets), len(forecasts))

    runtime.app.task(demo)


@dataclass(frozen=True, slots=True)
class RoutedResult:
    """What a batch of routed calls did."""

    tiers: Counter[str]  # calls recorded per final tier (weak, strong, other)
    denied: int  # calls the decision API denied (nothing recorded)
    event_ids: list[str]


def run_routed(settings: Settings, clock: Callable[[], datetime], *, calls: int,
               pause_s: float = 0.0, seed: int = 0,
               tenants: tuple[str, ...] = ROUTED_TENANTS) -> RoutedResult:
    """Route ``calls`` simulated prompts as a producer would (blocking): the SDK router
    scores each prompt locally, the decision API picks the model from that verdict and the
    tenant's budgets, and the call's usage is recorded with the route's attributes."""
    from pipeline.sdk import Router, UsageProducer

    router = Router()
    policy = load_policy()
    rng = random.Random(seed)
    token = settings.api_token.get_secret_value() if settings.api_token else None
    tiers: Counter[str] = Counter()
    denied = 0
    ids: list[str] = []
    with UsageProducer(settings.kafka_bootstrap, topic=settings.topic(TOPIC_EVENTS),
                       api_url=settings.web_url, api_token=token, clock=clock) as producer:
        for _ in range(calls):
            call = routed_call(rng, list(tenants))
            scope = {k: call[k] for k in ("project_id", "user_id", "feature", "task_type",
                                          "criticality", "user_tier")}
            # the value tier the meter will give the event: critical work keeps strong
            tier = policy.tier(policy.weight(call["task_type"], call["criticality"],
                                             call["user_tier"]))
            route = router.decide(settings.web_url, call["prompt"], tenant_id=call["tenant_id"],
                                  estimated_input_tokens=call["estimated_input_tokens"],
                                  estimated_output_tokens=call["estimated_output_tokens"],
                                  value_tier=tier, api_token=token, **scope)
            if not route.allowed:
                denied += 1
                continue
            # the simulated model "answers" with the estimated tokens
            ids.append(producer.record(tenant_id=call["tenant_id"], provider=route.provider,
                                       model=route.model, route=route,
                                       input_tokens=call["estimated_input_tokens"],
                                       output_tokens=call["estimated_output_tokens"], **scope))
            tiers[route.tier] += 1
            if pause_s:
                time.sleep(pause_s)
        producer.flush()
    return RoutedResult(tiers, denied, ids)
