"""The decision estimate prices like the meter: service tier x cache reads/writes, and value
units weighted by the scoring policy; run/entity keys answer for templates (pure)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D
from typing import Any

import pytest

from pipeline.core.budgets import Metric, Mode
from pipeline.core.catalog import load_catalog
from pipeline.core.decision import (
    Request,
    Room,
    amount,
    decide,
    estimate,
    request_from,
    request_key,
)
from pipeline.core.scoring import load_policy
from pipeline.errors import ValidationFailed
from tests.helpers import METER

CAT = load_catalog()
POLICY = load_policy()
AT = datetime(2025, 7, 1, tzinfo=timezone.utc)


def req(model: str, **kw: Any) -> Request:
    base: dict[str, Any] = {"tenant_id": "acme", "model": model, "value_tier": "standard",
                            "input_tokens": 10_000, "output_tokens": 1_000}
    return Request(**(base | kw))


@pytest.mark.parametrize("model, kw, cost", [
    # claude-sonnet-4 (2025-05-22): $3 in, $15 out, $0.30 cache read, $3.75 5-minute write
    ("claude-sonnet-4", {}, D("0.045")),  # 10k x 3 + 1k x 15 = 45,000 / 1M
    # 4k uncached x 3 + 4k read x 0.30 + 2k written x 3.75 + 1k out x 15 = 35,700 / 1M
    ("claude-sonnet-4", {"cache_read_tokens": 4_000, "cache_write_tokens": 2_000},
     D("0.0357")),
    # batch halves every rate (multiplier 0.5)
    ("claude-sonnet-4", {"cache_read_tokens": 4_000, "cache_write_tokens": 2_000,
                         "service_tier": "batch"}, D("0.01785")),
    # gpt-4o priority: $4.25 in, $17 out, $2.125 cache read:
    # 6k x 4.25 + 4k x 2.125 + 1k x 17 = 51,000 / 1M
    ("gpt-4o", {"cache_read_tokens": 4_000, "service_tier": "priority"}, D("0.051")),
    # OpenAI lists no write price: a write is billed as input, as the meter does
    ("gpt-4o", {"cache_write_tokens": 2_000}, D("0.035")),
])
def test_estimate_prices_tier_and_cache(model: str, kw: dict[str, Any], cost: D) -> None:
    r = req(model, **kw)
    assert estimate(CAT, model, r, AT) == cost
    # the same as the meter charges for that event
    event = {"event_id": "e", "timestamp": AT.isoformat(), "tenant_id": "acme",
             "provider": CAT.resolve(model).provider, "model": model,  # type: ignore[union-attr]
             "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
             "cache_read_input_tokens": r.cache_read_tokens,
             "cache_creation_input_tokens": r.cache_write_tokens,
             "service_tier": r.service_tier}
    assert METER.meter_object(event, now=AT).total_cost == cost


def test_value_units_use_the_policy_weight() -> None:
    # code_generation 2.0 x criticality high 1.5 x user tier pro 1.2 = 3.6; 11k tokens
    r = req("gpt-4o", task_type="code_generation", criticality="high", user_tier="pro")
    assert amount(Metric.value_units, D(0), r, POLICY) == D("39600.0")
    assert amount(Metric.value_units, D(0), r) == D(11_000)  # no policy: the token stand-in
    room = [Room("vu", "", D(39_000), D(0), Mode.hard, Metric.value_units)]
    # the stand-in (11,000) fitted a 39,000 budget; the weighted amount does not
    assert decide(r, room, CAT, AT).decision == "allow"
    assert decide(r, room, CAT, AT, POLICY).decision == "deny"
    assert decide(r, [Room("vu", "", D(40_000), D(0), Mode.hard, Metric.value_units)],
                  CAT, AT, POLICY).decision == "allow"


def test_a_template_whose_key_is_not_named_is_reported_not_denied() -> None:
    full = Room("per-user", "", D(5), D(5), Mode.hard, Metric.cost, checked=False,
                each="user_id")
    d = decide(req("gpt-4o"), [full], CAT, AT)
    assert d.decision == "allow"
    assert "per-user (each user_id) could not be checked" in d.reason
    named = Room("per-user", "", D(5), D(5), Mode.hard, Metric.cost, key="u1", each="user_id")
    d = decide(req("gpt-4o", user_id="u1"), [named], CAT, AT)
    assert d.decision == "deny" and "per-user[u1]" in d.reason
    assert d.as_json()["remaining"][0]["key"] == "u1"


@pytest.mark.parametrize("each, kw, key", [
    ("user_id", {"user_id": "u1"}, "u1"),
    ("trace_id", {"trace_id": "t9"}, "t9"),
    ("session_id", {"session_id": "s1"}, "s1"),
    ("run_id", {"attributes": {"run_id": "r1"}}, "r1"),  # the attribute, as events carry it
    ("attributes.api_key", {"attributes": {"api_key": "k1"}}, "k1"),
    ("feature", {}, None),
    ("attributes.api_key", {"attributes": {"other": "x"}}, None),
])
def test_request_key(each: str, kw: dict[str, Any], key: str | None) -> None:
    assert request_key(each, req("gpt-4o", **kw)) == key


def test_request_from_query_and_body() -> None:
    q = {"tenant_id": "acme", "model": "gpt-4o", "estimated_input_tokens": "100",
         "estimated_output_tokens": "5", "service_tier": "batch",
         "estimated_cache_read_tokens": "40", "criticality": "high", "run_id": "r1"}
    r = request_from(q, {"api_key": "k"})
    assert (r.input_tokens, r.output_tokens, r.cache_read_tokens, r.service_tier,
            r.criticality, r.run_id, r.attributes) == (100, 5, 40, "batch", "high", "r1",
                                                       {"api_key": "k"})
    body = {"tenant_id": "acme", "model": "gpt-4o", "estimated_input_tokens": 100,
            "estimated_output_tokens": 5}
    assert request_from(body).value_tier == "standard"
    # the old API's defaults: missing estimates are 0 (GET /api/decision)
    assert request_from({"tenant_id": "acme", "model": "gpt-4o"}).input_tokens == 0


def test_reservations_must_give_both_estimates() -> None:
    # #18 review 7: a reservation without estimates held nothing; 0 said outright is fine
    base = {"tenant_id": "acme", "model": "gpt-4o"}
    for missing in ("estimated_input_tokens", "estimated_output_tokens"):
        given = {k: 10 for k in ("estimated_input_tokens", "estimated_output_tokens")
                 if k != missing}
        with pytest.raises(ValidationFailed, match=f"missing parameter {missing}"):
            request_from(base | given, estimates_required=True)
    zero = request_from(base | {"estimated_input_tokens": 0, "estimated_output_tokens": 0},
                        estimates_required=True)
    assert (zero.input_tokens, zero.output_tokens) == (0, 0)


@pytest.mark.parametrize("params, message", [
    ({"model": "gpt-4o"}, "missing parameter tenant_id"),
    ({"tenant_id": "a", "model": "m", "estimated_input_tokens": "-1"},
     "estimated_input_tokens must be a whole number"),
    ({"tenant_id": "a", "model": "m", "estimated_input_tokens": True},
     "estimated_input_tokens must be a whole number"),
    ({"tenant_id": "a", "model": "m", "service_tier": "turbo"}, "service_tier 'turbo'"),
    ({"tenant_id": "a", "model": "m", "estimated_input_tokens": 10,
      "estimated_cache_read_tokens": 11}, "cache reads \\+ writes exceed"),
    ({"tenant_id": 7, "model": "m"}, "tenant_id must be a string"),
])
def test_request_from_says_what_is_wrong(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        request_from(params)


def test_attributes_must_be_strings() -> None:
    with pytest.raises(ValidationFailed, match="attributes must map names to strings"):
        request_from({"tenant_id": "a", "model": "m"}, {"n": 1})
