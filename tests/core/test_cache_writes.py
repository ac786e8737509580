"""5-minute and 1-hour cache writes priced as separate lines by the meter (issue #16).

Expected values are computed by hand from Anthropic's claude-sonnet-4-5 list prices per 1M
tokens: input 3, output 15, cache read 0.30, 5-minute write 3.75, 1-hour write 6; above
200k prompt tokens input 6, output 22.50, read 0.60, 5-minute write 7.50, 1-hour write 12.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal as D
from typing import Any

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.events import UsageEvent, cache_writes_1h, priced_json
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.errors import ValidationFailed

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)
METER = Meter(load_catalog(), load_policy())


def event(**fields: Any) -> dict[str, Any]:
    return {"event_id": "c-1", "timestamp": "2026-01-15T10:00:00Z", "tenant_id": "acme",
            "provider": "anthropic", "model": "claude-sonnet-4-5", **fields}


@pytest.mark.parametrize(
    "fields, writes, writes_1h, cache_write_cost, total",
    [
        # 100k input = 60k 5m + 40k 1h writes: 60k x 3.75 + 40k x 6 = 0.225 + 0.24;
        # output 1000 x 15 = 0.015
        (dict(input_tokens=100_000, output_tokens=1_000,
              cache_creation={"ephemeral_5m_input_tokens": 60_000,
                              "ephemeral_1h_input_tokens": 40_000}),
         100_000, 40_000, D("0.465"), D("0.48")),
        # 150k input: 50k uncached x 3 = 0.15, 20k read x 0.30 = 0.006, 30k 5m x 3.75 =
        # 0.1125, 50k 1h x 6 = 0.30; 2000 out x 15 = 0.03
        (dict(input_tokens=150_000, output_tokens=2_000, cache_read_input_tokens=20_000,
              cache_creation_input_tokens=80_000, cache_creation_1h_input_tokens=50_000),
         80_000, 50_000, D("0.4125"), D("0.5985")),
        # the same call without a split: every write at the 5-minute rate, 80k x 3.75 = 0.30
        (dict(input_tokens=150_000, output_tokens=2_000, cache_read_input_tokens=20_000,
              cache_creation_input_tokens=80_000),
         80_000, 0, D("0.30"), D("0.486")),
        # legacy attributes.cache_ttl = 1h, no split: all 80k are 1-hour writes, x 6 = 0.48
        (dict(input_tokens=150_000, output_tokens=2_000, cache_read_input_tokens=20_000,
              cache_creation_input_tokens=80_000, attributes={"cache_ttl": "1h"}),
         80_000, 80_000, D("0.48"), D("0.666")),
        # the explicit split wins over the legacy attribute
        (dict(input_tokens=150_000, output_tokens=2_000, cache_read_input_tokens=20_000,
              cache_creation_input_tokens=80_000, cache_creation_1h_input_tokens=50_000,
              attributes={"cache_ttl": "1h"}),
         80_000, 50_000, D("0.4125"), D("0.5985")),
        # long context (300k prompt > 200k): 150k uncached x 6 = 0.90, 100k 5m x 7.50 = 0.75,
        # 50k 1h x 12 = 0.60, 1000 out x 22.50 = 0.0225
        (dict(input_tokens=300_000, output_tokens=1_000, cache_creation_5m_input_tokens=100_000,
              cache_creation_1h_input_tokens=50_000),
         150_000, 50_000, D("1.35"), D("2.2725")),
        # OTel names of the split
        ({"input_tokens": 100_000, "output_tokens": 1_000,
          "gen_ai.usage.cache_creation.input_tokens": 100_000,
          "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": 40_000},
         100_000, 40_000, D("0.465"), D("0.48")),
    ],
)
def test_meter_prices_5m_and_1h_writes_apart(fields: dict[str, Any], writes: int,
                                             writes_1h: int, cache_write_cost: D,
                                             total: D) -> None:
    p = METER.meter_object(event(**fields), now=NOW)
    assert (p.cache_creation_input_tokens, p.cache_creation_1h_input_tokens) == (writes,
                                                                                  writes_1h)
    assert p.cache_write_cost == cache_write_cost
    assert p.total_cost == total
    assert p.input_cost + p.cache_read_cost + p.cache_write_cost + p.output_cost \
        + p.reasoning_cost == p.total_cost
    # the priced message carries the 1-hour count that was priced
    assert json.loads(priced_json(p))["cache_creation_1h_input_tokens"] == writes_1h


def test_meter_message_dead_letters_inconsistent_split() -> None:
    raw = json.dumps([event(input_tokens=100, output_tokens=1, cache_creation_input_tokens=40,
                            cache_creation={"ephemeral_5m_input_tokens": 30,
                                            "ephemeral_1h_input_tokens": 20}),
                      event(event_id="c-2", input_tokens=100, output_tokens=1,
                            cache_creation_input_tokens=10, cache_creation_1h_input_tokens=11)])
    out = METER.meter_message(raw, now=NOW)
    assert out.priced == []
    assert [d.reason_code for d in out.dead] == ["inconsistent_counts"] * 2
    assert "5-minute (30) plus the 1-hour (20)" in out.dead[0].detail
    assert "cache_creation_1h_input_tokens (11) exceed" in out.dead[1].detail


def test_meter_refuses_1h_above_all_writes_on_an_unvalidated_event() -> None:
    # Meter.price takes UsageEvents built in code too (not only through validate_event)
    e = UsageEvent.model_validate(event(input_tokens=100, output_tokens=1,
                                        cache_creation_input_tokens=10,
                                        cache_creation_1h_input_tokens=11))
    with pytest.raises(ValidationFailed) as info:
        METER.price(e)
    assert info.value.reason_code == "inconsistent_counts"


def test_legacy_attribute_changes_nothing_where_no_1h_price_is_listed() -> None:
    # gpt-4o lists no write prices: writes are billed as input, as before the split existed
    ev = {**event(input_tokens=10_000, output_tokens=0, cache_creation_input_tokens=4_000,
                  attributes={"cache_ttl": "1h"}), "provider": "openai", "model": "gpt-4o"}
    p = METER.meter_object(ev, now=NOW)
    assert p.cache_creation_1h_input_tokens == 0
    assert p.total_cost == METER.meter_object({**ev, "attributes": {}}, now=NOW).total_cost


@pytest.mark.parametrize(
    "writes, explicit, attributes, lists_1h, expected",
    [
        (100, 0, {}, True, 0),
        (100, 40, {}, True, 40),
        (100, 40, {"cache_ttl": "1h"}, True, 40),
        (100, 0, {"cache_ttl": "1h"}, True, 100),
        (100, 0, {"cache_ttl": "5m"}, True, 0),
        (100, 0, {"cache_ttl": "1h"}, False, 0),
        (0, 0, {"cache_ttl": "1h"}, True, 0),
    ],
)
def test_cache_writes_1h(writes: int, explicit: int, attributes: dict[str, str],
                         lists_1h: bool, expected: int) -> None:
    assert cache_writes_1h(writes, explicit, attributes, lists_1h_price=lists_1h) == expected
    # idempotent: the resolved count stored in the ledger resolves to itself (reprice)
    assert cache_writes_1h(writes, expected, attributes, lists_1h_price=lists_1h) == expected
