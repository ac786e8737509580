"""The spend-velocity watch in the real Processor, on the doubles of pipeline/testing.py.

Baselines come from a callable standing in for the ledger query (the query itself is proved
on chDB in tests/store/test_baseline.py). Traffic is one batch per 5 s of simulated event
time, the clock moved with it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pipeline.core.anomaly import sample_hours
from pipeline.core.budgets import Budget
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from pipeline.stream.velocity import VelocityWatch
from pipeline.testing import InMemoryLedger, ListPublisher, SettableClock
from tests.helpers import METER, NOW

D = Decimal
TIMEOUT_S = 20


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


def usual_history(budget: Budget, hour: datetime) -> list[tuple[datetime, Decimal]]:
    """Per-minute spend of the sampled hours: 900 and 1100 tokens in turn (median 1000, MAD
    100 tokens a minute)."""
    return [(h + timedelta(minutes=m), D(900 if m % 2 else 1100))
            for h in sample_hours(hour) for m in range(60)]


def no_history(budget: Budget, hour: datetime) -> list[tuple[datetime, Decimal]]:
    return []


def broken(budget: Budget, hour: datetime) -> list[tuple[datetime, Decimal]]:
    raise ConnectionError("ClickHouse is down")


class Rig:
    def __init__(self, source: Any, budget: Budget) -> None:
        self.ledger = InMemoryLedger()
        self.breaches = ListPublisher()
        self.clock = SettableClock(NOW)
        self.cleared: list[tuple[str, datetime]] = []
        self.watch = VelocityWatch(source, self.clock,
                                   on_clear=lambda b, at: self.cleared.append((b, at)))
        live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=100_000)
        live.get(0)
        self.proc = Processor(METER, self.ledger, self.ledger, live, ListPublisher(),
                              clock=self.clock, publish_breach=self.breaches,
                              watchers=[self.watch])
        self.watch.bind(self.proc.book, self.proc.budgets.owns)
        self.budget = budget
        self.offset = 0
        self.n = 0

    async def start(self) -> None:
        await self.proc.budget_changed(self.budget.budget_id, self.budget)

    async def tick(self, tokens: Sequence[int], model: str = "gpt-4o") -> None:
        """Events of ``tokens`` input tokens each at the clock's time, then 5 s on."""
        batch = []
        for t in tokens:
            self.n += 1
            e = {"event_id": f"e{self.n}", "timestamp": self.clock.now.isoformat(),
                 "tenant_id": "acme", "provider": "openai", "model": model,
                 "input_tokens": t, "output_tokens": 0}
            batch.append(RawMessage(json.dumps(e).encode(), "usage-events", 0, self.offset))
            self.offset += 1
        if batch:
            await self.proc.process(batch)
        await self.watch.settle()
        self.clock.advance(5)

    def anomalies(self) -> list[dict[str, Any]]:
        return [b for b in (json.loads(v) for _, v in self.breaches.sent)
                if b["kind"] == "anomaly"]


def tokens_budget(**anomaly: Any) -> Budget:
    return Budget.model_validate({
        "budget_id": "velocity", "tenant_id": "acme", "metric": "tokens", "limit": "1e9",
        "anomaly": {"enabled": True, "floor": "100", **anomaly}})


ORDINARY = [80]  # 80 tokens every 5 s: 960 a minute, the usual rate
RUNAWAY = [400, 400]  # 10x


async def ordinary_then_runaway(rig: Rig, minutes_before: int = 10,
                                runaway_s: int = 120) -> datetime:
    await rig.start()
    for _ in range(minutes_before * 12):
        await rig.tick(ORDINARY)
    started = rig.clock.now
    for _ in range(runaway_s // 5):
        await rig.tick(RUNAWAY)
    return started


def test_a_runaway_fires_once_with_its_numbers_and_ordinary_traffic_does_not() -> None:
    rig = Rig(usual_history, tokens_budget())

    async def scenario() -> datetime:
        await rig.start()
        for _ in range(10 * 12):  # ten ordinary minutes
            await rig.tick(ORDINARY)
        assert rig.anomalies() == []
        started = rig.clock.now
        for _ in range(24):
            await rig.tick(RUNAWAY)
        return started

    started = run(scenario())
    [b] = rig.anomalies()
    assert b["budget_id"] == "velocity" and b["window_seconds"] == 60
    assert D(b["baseline_rate"]) == D(1000)
    rate = D(b["observed_rate"])
    assert rate >= 3000  # min_ratio x the median, and z >= 6
    assert D(b["score"]) == ((rate - 1000) / (D("1.4826") * 100)).quantize(D("0.000001"))
    assert D(b["spent"]) == rate  # a 60 s window: its spend is its rate per minute
    latency = datetime.fromisoformat(b["emitted_at"]) - started
    assert timedelta(0) < latency <= timedelta(seconds=30)
    assert b["triggering_event_id"]
    assert [r["breach_id"] for r in rig.ledger.rows("budget_breaches")] == [b["breach_id"]]


def test_a_replay_of_the_same_events_repeats_the_breach_id() -> None:
    ids = []
    for _ in range(2):
        rig = Rig(usual_history, tokens_budget())
        run(ordinary_then_runaway(rig, minutes_before=2, runaway_s=60))
        ids.append([b["breach_id"] for b in rig.anomalies()])
    assert len(ids[0]) == 1 and ids[0] == ids[1]


def test_the_episode_clears_after_the_cooldown_and_a_second_runaway_fires_again() -> None:
    rig = Rig(usual_history, tokens_budget())

    async def scenario() -> None:
        await ordinary_then_runaway(rig, minutes_before=2, runaway_s=60)
        for _ in range(9 * 12):  # nine quiet minutes: still one episode
            await rig.tick(ORDINARY)
        assert rig.cleared == []
        for _ in range(3 * 12):
            await rig.tick(ORDINARY)
        assert [b for b, _ in rig.cleared] == ["velocity"]
        for _ in range(12):
            await rig.tick(RUNAWAY)

    run(scenario())
    first, second = rig.anomalies()
    assert first["breach_id"] != second["breach_id"]


def test_a_quiet_tenant_without_history_does_not_fire_below_the_floor() -> None:
    # cost metric, default floor $0.05 a minute; gpt-4o input at $2.50 per million tokens:
    # 1,500 tokens every 5 s is $0.045 a minute
    quiet = Budget.model_validate({"budget_id": "velocity", "tenant_id": "acme",
                                   "limit": "1000", "anomaly": {"enabled": True}})
    rig = Rig(no_history, quiet)

    async def scenario() -> None:
        await rig.start()
        for _ in range(10 * 12):
            await rig.tick([1500])
        assert rig.anomalies() == []
        assert rig.watch.baselines  # the (empty) baseline was loaded: only the floor held
        for _ in range(4):
            await rig.tick([1500, 1500])  # $0.09 a minute, over the floor

    run(scenario())
    [b] = rig.anomalies()
    assert D(b["baseline_rate"]) == 0 and D(b["observed_rate"]) >= D("0.05")


def test_max_rate_fires_without_a_baseline_and_a_failing_baseline_read_stops_nothing() -> None:
    rig = Rig(broken, tokens_budget(max_rate="5000"))

    async def scenario() -> None:
        await ordinary_then_runaway(rig, minutes_before=2, runaway_s=60)

    run(scenario())
    assert rig.watch.failures >= 1 and "ClickHouse is down" in (rig.watch.last_failure or "")
    assert rig.watch.baselines == {}
    [b] = rig.anomalies()
    assert b["severity"] == "critical" and b["baseline_rate"] is None
    assert D(b["observed_rate"]) > 5000
    assert len(rig.ledger.usage) == rig.n  # every event metered


def test_a_far_future_event_does_nothing() -> None:
    b = tokens_budget(max_rate="5000")
    watch = VelocityWatch(usual_history, SettableClock(NOW), book=lambda tenant: [b])
    future = METER.meter_object({"event_id": "f", "tenant_id": "acme", "provider": "openai",
                                 "timestamp": (NOW + timedelta(days=1)).isoformat(),
                                 "model": "gpt-4o", "input_tokens": 10**6,
                                 "output_tokens": 0}, now=NOW)

    async def scenario() -> list[Any]:
        out = await watch.observe([future], NOW)
        out += await watch.observe([], NOW + timedelta(days=1))  # not when its time comes
        await watch.settle()
        return out

    assert run(scenario()) == []
    assert watch.windows["velocity"].buckets == {}
