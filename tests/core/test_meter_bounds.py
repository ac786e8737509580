"""A price or weight past what the ledger stores sets its events aside; the rest meter on."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.meter import Meter
from pipeline.core.numbers import MAX_AMOUNT, MAX_WEIGHT
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


def test_a_cost_past_the_ledger_is_dead_lettered_and_the_batch_goes_on() -> None:
    # 10^26 for one million input tokens: exactly what Decimal(38, 12) no longer holds
    meter = Meter(catalog_pricing_gpt_4o_input_at(str(MAX_AMOUNT)), load_policy())
    out = meter.meter_message(message(
        {"event_id": "big", "provider": "openai", "model": "gpt-4o"},
        {"event_id": "ok", "provider": "openai", "model": "gpt-4o-mini"}), now=NOW)
    assert [p.event_id for p in out.priced] == ["ok"]
    (dead,) = out.dead
    assert (dead.event_id, dead.reason_code) == ("big", "out_of_range")
    assert "correct that price in the catalog" in dead.detail


def test_the_largest_storable_cost_is_metered() -> None:
    below = Decimal("9.9E+25")  # per million tokens: the cost of this event
    meter = Meter(catalog_pricing_gpt_4o_input_at(str(below)), load_policy())
    priced = meter.meter_object({**BASE, "event_id": "e", "provider": "openai",
                                 "model": "gpt-4o"}, now=NOW)
    assert priced.total_cost == below


def test_a_weight_past_the_ledger_is_dead_lettered_every_time() -> None:
    policy = load_policy().model_copy(update={"task_weights": {"odd": MAX_WEIGHT,
                                                               "fine": MAX_WEIGHT / 10}})
    meter = Meter(load_catalog(), policy)
    events = [{"event_id": f"e{i}", "provider": "openai", "model": "gpt-4o-mini",
               "task_type": task, "criticality": "normal"}
              for i, task in enumerate(("odd", "fine", "odd"))]
    out = meter.meter_message(message(*events), now=NOW)
    assert [p.event_id for p in out.priced] == ["e1"]
    assert out.priced[0].value_weight == MAX_WEIGHT / 10
    assert [(d.event_id, d.reason_code) for d in out.dead] == [("e0", "out_of_range"),
                                                               ("e2", "out_of_range")]
    assert "lower it in the value policy" in out.dead[0].detail
