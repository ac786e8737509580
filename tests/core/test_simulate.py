"""Synthetic traffic: the runaway agent loop the demo and benchmarks inject, priced by hand."""

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.core.simulate import Simulator, routed_call, routed_prompt, runaway_call

AT = datetime(2026, 6, 17, 10, 0, tzinfo=timezone.utc)
METER = Meter(load_catalog(), load_policy())


# claude-opus-4 list prices: $15 per million input tokens, $75 per million output tokens;
# step k sends 4000 + 500k input tokens (the loop's context grows) and 900 output tokens
@pytest.mark.parametrize(("step", "cost"), [
    (0, D("0.06") + D("0.0675")),      # 4,000 x 15e-6 + 900 x 75e-6
    (1, D("0.0675") + D("0.0675")),    # 4,500 x 15e-6
    (10, D("0.135") + D("0.0675")),    # 9,000 x 15e-6
])
def test_runaway_calls_cost_what_opus_lists(step: int, cost: D) -> None:
    p = METER.meter_object(runaway_call(AT, "t1", "run-1", step), now=AT)
    assert p.total_cost == cost
    assert (p.trace_id, p.attributes["run_id"], p.feature) == ("run-1", "run-1", "agent")


def test_runaway_steps_are_distinct_events_of_one_run() -> None:
    calls = [runaway_call(AT + timedelta(seconds=i), "t1", "run-7", i) for i in range(50)]
    assert len({c["event_id"] for c in calls}) == 50
    assert {c["trace_id"] for c in calls} == {"run-7"}


def test_history_is_deterministic_for_a_seed() -> None:
    a = Simulator(tenants=3, seed=5).history(AT, 2, per_hour=6)
    b = Simulator(tenants=3, seed=5).history(AT, 2, per_hour=6)
    assert a == b and a
    assert all(datetime.fromisoformat(e["timestamp"]) < AT for e in a)


def test_routed_calls_are_deterministic_for_a_seed_and_mix_easy_and_hard_prompts() -> None:
    def draw(seed: int) -> list[dict]:
        rng = random.Random(seed)
        return [routed_call(rng, ["t1", "t2"]) for _ in range(200)]

    calls = draw(3)
    assert calls == draw(3) and calls != draw(4)
    assert {c["tenant_id"] for c in calls} == {"t1", "t2"}
    assert all(c["estimated_input_tokens"] > len(c["prompt"]) // 4 for c in calls)
    hard = [routed_prompt(random.Random(s))[1] for s in range(200)]
    assert 0.2 < sum(hard) / len(hard) < 0.5  # about 35% hard
    # a routed call carries what the decision API and the event need, never spent tokens
    assert {"prompt", "task_type", "criticality", "user_tier", "user_id"} <= set(calls[0])
    assert "input_tokens" not in calls[0]
