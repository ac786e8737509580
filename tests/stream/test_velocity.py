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

import pytest

from pipeline.core.anomaly import Baseline, HourRow, hour_start, sample_hours, score_of
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


USUAL_CALLS, USUAL_TOKENS = 720, 57_600  # an hour: 12 calls of 80 tokens a minute


def usual_history(budget: Budget, hour: datetime) -> list[HourRow]:
    """The sampled hours of four past weeks: 720 calls and 57,600 tokens in each, and 300
    calls in the hour before each (not a sample)."""
    return [row for h in sample_hours(hour) for row in
            [(h, D(USUAL_TOKENS), USUAL_CALLS), (h - timedelta(hours=1), D(24_000), 300)]]


def two_days_of_history(budget: Budget, hour: datetime) -> list[HourRow]:
    """A tenant first seen 48 h ago: its busiest hour of the past day had the usual traffic."""
    start = hour_start(hour)
    return [(start - timedelta(hours=h), D(USUAL_TOKENS if h == 3 else 8_000),
             USUAL_CALLS if h == 3 else 100) for h in range(1, 49)]


def no_history(budget: Budget, hour: datetime) -> list[HourRow]:
    return []


def broken(budget: Budget, hour: datetime) -> list[HourRow]:
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

    async def tick(self, tokens: Sequence[int], model: str = "gpt-4o",
                   traces: Sequence[str] = ()) -> None:
        """Events of ``tokens`` input tokens each at the clock's time (in turn of ``traces``,
        when given), then 5 s on."""
        batch = []
        for i, t in enumerate(tokens):
            self.n += 1
            e = {"event_id": f"e{self.n}", "timestamp": self.clock.now.isoformat(),
                 "tenant_id": "acme", "provider": "openai", "model": model,
                 "input_tokens": t, "output_tokens": 0}
            if traces:
                e["trace_id"] = traces[i % len(traces)]
            batch.append(RawMessage(json.dumps(e).encode(), "usage-events", 0, self.offset))
            self.offset += 1
        if batch:
            await self.proc.process(batch)
        await self.watch.settle()
        self.clock.advance(5)

    def anomalies(self) -> list[dict[str, Any]]:
        return [b for b in (json.loads(v) for _, v in self.breaches.sent)
                if b["kind"] == "anomaly"]


def tokens_budget(period: str = "month", each: str | None = None, **anomaly: Any) -> Budget:
    """The velocity budget in tokens (a run template with ``each``), anomaly settings as given."""
    return Budget.model_validate({
        "budget_id": "velocity", "tenant_id": "acme", "metric": "tokens", "limit": "1e9",
        "period": period, "each": each, "anomaly": {"enabled": True, "floor": "100", **anomaly}})


ORDINARY = [80]  # one call of 80 tokens every 5 s: 12 calls and 960 tokens a minute, usual
RUNAWAY = [80] * 10  # 10x the calls


async def ordinary_then_runaway(rig: Rig, minutes_before: int = 10,
                                runaway_s: int = 120) -> datetime:
    await rig.start()
    for _ in range(minutes_before * 12):
        await rig.tick(ORDINARY)
    started = rig.clock.now
    for _ in range(runaway_s // 5):
        await rig.tick(RUNAWAY)
    return started


@pytest.mark.parametrize("history", [usual_history, two_days_of_history])
def test_a_runaway_fires_once_with_its_numbers_and_ordinary_traffic_does_not(
        history: Any) -> None:
    rig = Rig(history, tokens_budget())

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
    assert D(b["baseline_rate"]) == D(960)
    rate = D(b["observed_rate"])
    assert rate >= 3 * 960  # min_ratio x the usual spend
    calls = int(rate / 80)
    assert D(b["score"]) == score_of(calls, 60, Baseline(D(USUAL_CALLS), D(USUAL_TOKENS), 4))
    assert D(b["score"]) >= 6
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


def test_a_tenant_without_history_raises_only_max_rate_alerts_while_it_learns() -> None:
    rig = Rig(no_history, tokens_budget())
    ceiling = Rig(no_history, tokens_budget(max_rate="5000"))

    async def scenario(r: Rig) -> None:
        await ordinary_then_runaway(r, minutes_before=2, runaway_s=60)

    run(scenario(rig))
    assert rig.anomalies() == []
    assert list(rig.watch.baselines.values()) == [None]  # loaded: under a day of history
    run(scenario(ceiling))
    [b] = ceiling.anomalies()
    assert b["severity"] == "critical" and b["baseline_rate"] is None


def test_a_quiet_hour_does_not_fire_below_the_floor() -> None:
    # cost metric, default floor $0.05 a minute; the sampled hours had no calls at all;
    # gpt-4o input at $2.50 per million tokens: 1,500 tokens every 5 s is $0.045 a minute
    quiet = Budget.model_validate({"budget_id": "velocity", "tenant_id": "acme",
                                   "limit": "1000", "anomaly": {"enabled": True}})

    def silent_hours(budget: Budget, hour: datetime) -> list[HourRow]:
        return [(h - timedelta(hours=1), D(1), 10) for h in sample_hours(hour)]

    rig = Rig(silent_hours, quiet)

    async def scenario() -> None:
        await rig.start()
        for _ in range(10 * 12):
            await rig.tick([1500])
        assert rig.anomalies() == []
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


def test_a_template_anomaly_names_the_run_that_ran_away() -> None:
    rig = Rig(usual_history, tokens_budget(period="run", each="trace_id"))

    async def scenario() -> None:
        await rig.start()
        for k in range(2 * 12):  # ordinary: one call every 5 s, runs a, b and c in turn
            await rig.tick(ORDINARY, traces=["run-a", "run-b", "run-c"][k % 3:][:1])
        for _ in range(12):  # run-loop makes nine calls every 5 s, run-a one
            await rig.tick(RUNAWAY, traces=["run-a", *["run-loop"] * 9])

    run(scenario())
    [b] = rig.anomalies()
    assert (b["each"], b["key"]) == ("trace_id", "run-loop")


def test_an_episode_clears_on_the_timer_when_no_event_comes() -> None:
    rig = Rig(usual_history, tokens_budget())

    async def scenario() -> None:
        await ordinary_then_runaway(rig, minutes_before=2, runaway_s=60)
        rig.clock.advance(9 * 60)
        await rig.watch.tick(rig.clock.now)
        assert rig.cleared == [] and rig.watch.episodes
        rig.clock.advance(2 * 60)  # past the cooldown, still no event
        await rig.watch.tick(rig.clock.now)

    run(scenario())
    assert [b for b, _ in rig.cleared] == ["velocity"] and not rig.watch.episodes
    assert len(rig.anomalies()) == 1  # a tick never fires


def test_a_templates_window_counts_only_events_with_its_key() -> None:
    rig = Rig(usual_history, tokens_budget(period="run", each="trace_id"))

    async def scenario() -> None:
        await rig.start()
        for _ in range(24):  # a burst of the tenant's other traffic: no trace_id
            await rig.tick(RUNAWAY)
        await rig.tick(ORDINARY, traces=["run-a"])

    run(scenario())
    assert rig.anomalies() == []
    assert sum(rig.watch.windows["velocity"].calls.values()) == 1
