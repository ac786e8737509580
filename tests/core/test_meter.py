"""The Meter's memos (rates per version, score per kind of call) change no figure."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.pricing import TokenCounts, cost_lines
from pipeline.core.scoring import load_policy, score
from pipeline.core.validate import validate_event
from pipeline.errors import PricingError
from tests.helpers import DefectiveMeter

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
CAT = load_catalog()
POLICY = load_policy()
MODELS = [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5"),
          ("google", "gemini-2.5-pro")]


def _events() -> list[dict]:
    out = []
    grid = itertools.product(MODELS, ("sales_email", "regulatory_compliance", None, "new-task"),
                             ("low", "normal", "critical"), (None, "free", "enterprise", "odd"),
                             ("standard", "batch"), (False, True))
    for n, ((provider, model), task, crit, tier, service, hit) in enumerate(grid):
        event = {"event_id": f"e{n}", "timestamp": "2026-05-31T10:00:00Z", "tenant_id": "t",
                 "provider": provider, "model": model, "input_tokens": 250_000 + n,
                 "output_tokens": 900 + n, "cache_read_input_tokens": 1000 * (n % 3),
                 "criticality": crit, "service_tier": service, "cache_hit": hit}
        if task is not None:
            event["task_type"] = task
        if tier is not None:
            event["user_tier"] = tier
        out.append(event)
    return out


def test_metered_figures_match_the_unmemoized_functions() -> None:
    meter = Meter(CAT, POLICY)
    events = _events()
    priced = 0
    for _ in range(2):  # the second pass comes from the memos
        for raw in events:
            event = validate_event(raw, now=NOW)
            model, version = CAT.price_version(event.model, event.timestamp, event.provider)
            assert event.input_tokens is not None and event.output_tokens is not None
            try:
                lines = cost_lines(TokenCounts(event.input_tokens, event.output_tokens,
                                               event.cache_read_input_tokens),
                                   model, version, currency=CAT.currency,
                                   service_tier=event.service_tier.value,
                                   cache_hit=event.cache_hit)
            except PricingError as exc:
                with pytest.raises(PricingError) as refused:
                    meter.meter_object(raw, now=NOW)
                assert refused.value.detail == exc.detail
                continue
            got = meter.meter_object(raw, now=NOW)
            priced += 1
            weight, units, tier = score(POLICY, event.input_tokens + event.output_tokens,
                                        event.task_type, event.criticality.value,
                                        event.user_tier)
            assert (got.input_cost, got.cache_read_cost, got.cache_write_cost, got.output_cost,
                    got.reasoning_cost, got.total_cost, got.saved_cost) == (
                lines.input_cost, lines.cache_read_cost, lines.cache_write_cost,
                lines.output_cost, lines.reasoning_cost, lines.total_cost, lines.saved_cost)
            assert (got.price_version, got.priced_model, got.currency) == (
                lines.price_version, lines.priced_model, lines.currency)
            assert (got.value_weight, got.value_units, got.value_tier) == (weight, units, tier)
    assert priced > 500


def test_score_memo_is_bounded_by_distinct_kinds_of_call() -> None:
    meter = Meter(CAT, POLICY)
    base = {"timestamp": "2026-05-31T10:00:00Z", "tenant_id": "t", "provider": "openai",
            "model": "gpt-4o", "input_tokens": 10, "output_tokens": 1}
    for n in range(10_050):
        meter.meter_object({**base, "event_id": f"e{n}", "task_type": f"task-{n}"}, now=NOW)
    assert len(meter._scores) == 10_000
    late = meter.meter_object({**base, "event_id": "x", "task_type": "regulatory_compliance"},
                              now=NOW)
    assert late.value_tier == "critical" and late.value_units == late.value_weight * 11


def test_a_new_policy_is_not_served_from_the_old_ones_memo() -> None:
    meter = Meter(CAT, POLICY)
    event = {"event_id": "e", "timestamp": "2026-05-31T10:00:00Z", "tenant_id": "t",
             "provider": "openai", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 1,
             "task_type": "chat"}
    assert meter.meter_object(event, now=NOW).value_weight == Decimal("0.8")
    meter.policy = POLICY.model_copy(update={"task_weights": {"chat": Decimal(7)}})
    assert meter.meter_object(event, now=NOW).value_weight == Decimal(7)


def test_an_item_the_meter_fails_on_is_set_aside_and_the_rest_metered() -> None:
    base = {"timestamp": "2026-05-31T10:00:00Z", "tenant_id": "t", "provider": "openai",
            "model": "gpt-4o", "input_tokens": 10, "output_tokens": 1}
    items = [{**base, "event_id": eid} for eid in ("a", "poison", "b")]
    edge = {**base, "event_id": "edge", "timestamp": "0001-01-01T00:00:00+14:00"}
    out = DefectiveMeter(CAT, POLICY).meter_message(json.dumps([*items, edge]), now=NOW)
    assert [p.event_id for p in out.priced] == ["a", "b"]
    assert [(d.event_id, d.reason_code) for d in out.dead] == [
        ("poison", "internal_error"), ("edge", "invalid_timestamp")]
    assert "RuntimeError: boom" in out.dead[0].detail
