"""A price or weight past what one event may carry sets its events aside; the rest meter on."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.meter import Meter
from pipeline.core.numbers import MAX_EVENT_COST, MAX_WEIGHT
from pipeline.core.scoring import load_policy

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
BASE = {"timestamp": "2026-05-31T10:00:00Z", "tenant_id": "t", "input_tokens": 1_000_000,
        "output_tokens": 0}


def catalog_pricing_gpt_4o_input_at(price: str) -> Catalog:
    data = json.loads(load_catalog().model_dump_json())
    for m in data["models"]:
        if m["model"] == "gpt-4o":
            for v in m["versions"]:
                v["input"] = price
    return Catalog.model_validate(data)


def message(*events: dict) -> str:
    return json.dumps([{**BASE, **e} for e in events])  # a batch envelope


@pytest.mark.parametrize(("price", "cache_hit"), [
    (str(MAX_EVENT_COST), False),  # one million input tokens: exactly the bound
    (str(MAX_EVENT_COST), True),   # a cache hit costs 0 and saves the bound
    ("1E+999999", False),          # past Decimal's exponent range once multiplied
])
def test_a_cost_past_the_bound_is_dead_lettered_and_the_batch_goes_on(price: str,
                                                                       cache_hit: bool) -> None:
    meter = Meter(catalog_pricing_gpt_4o_input_at(price), load_policy())
    out = meter.meter_message(message(
        {"event_id": "big", "provider": "openai", "model": "gpt-4o", "cache_hit": cache_hit},
        {"event_id": "ok", "provider": "openai", "model": "gpt-4o-mini"}), now=NOW)
    assert [p.event_id for p in out.priced] == ["ok"]
    (dead,) = out.dead
    assert (dead.event_id, dead.reason_code) == ("big", "out_of_range")
    assert "correct that price in the catalog" in dead.detail


def test_a_cost_just_below_the_bound_is_metered() -> None:
    below = MAX_EVENT_COST - Decimal("0.01")  # per million tokens: the cost of this event
    meter = Meter(catalog_pricing_gpt_4o_input_at(str(below)), load_policy())
    priced = meter.meter_object({**BASE, "event_id": "e", "provider": "openai",
                                 "model": "gpt-4o"}, now=NOW)
    assert priced.total_cost == below


def test_a_weight_outside_the_bounds_is_dead_lettered_every_time() -> None:
    policy = load_policy().model_copy(update={"task_weights": {
        "huge": MAX_WEIGHT, "negative": Decimal("-0.5"), "fine": MAX_WEIGHT / 10}})
    meter = Meter(load_catalog(), policy)
    events = [{"event_id": f"e{i}", "provider": "openai", "model": "gpt-4o-mini",
               "task_type": task, "criticality": "normal"}
              for i, task in enumerate(("huge", "fine", "negative", "huge"))]
    out = meter.meter_message(message(*events), now=NOW)
    assert [p.event_id for p in out.priced] == ["e1"]
    assert out.priced[0].value_weight == MAX_WEIGHT / 10
    assert [(d.event_id, d.reason_code) for d in out.dead] == [
        ("e0", "out_of_range"), ("e2", "out_of_range"), ("e3", "out_of_range")]
    assert "correct it in the value policy" in out.dead[0].detail
