"""sdk.anthropic_usage: Anthropic's usage (input excludes cache tokens) onto our fields."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal as D
from typing import Any

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.sdk import anthropic_usage

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)


@dataclass
class CacheCreation:  # the anthropic SDK's objects are attribute-style, like these
    ephemeral_5m_input_tokens: int
    ephemeral_1h_input_tokens: int


@dataclass
class Usage:
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None


SPLIT = {"input_tokens": 40_000, "output_tokens": 1_000, "cache_read_input_tokens": 20_000,
         "cache_creation_input_tokens": 100_000,
         "cache_creation": {"ephemeral_5m_input_tokens": 60_000,
                            "ephemeral_1h_input_tokens": 40_000}}
MAPPED = {"input_tokens": 160_000, "output_tokens": 1_000, "cache_read_input_tokens": 20_000,
          "cache_creation_input_tokens": 100_000, "cache_creation_1h_input_tokens": 40_000}


@pytest.mark.parametrize(("usage", "expected"), [
    (SPLIT, MAPPED),
    (Usage(40_000, 1_000, 20_000, 100_000, CacheCreation(60_000, 40_000)), MAPPED),
    # no total: all writes = 5m + 1h
    ({k: v for k, v in SPLIT.items() if k != "cache_creation_input_tokens"}, MAPPED),
    # no split: every write is a 5-minute write
    ({"input_tokens": 10, "output_tokens": 2, "cache_creation_input_tokens": 5},
     {"input_tokens": 15, "output_tokens": 2, "cache_creation_input_tokens": 5}),
    # the SDK's None fields mean none
    (Usage(10, 2), {"input_tokens": 10, "output_tokens": 2}),
])
def test_anthropic_usage(usage: Any, expected: dict[str, int]) -> None:
    assert anthropic_usage(usage) == expected


def test_anthropic_usage_prices_both_lifetimes() -> None:
    event = {"event_id": "a-1", "timestamp": NOW.isoformat(), "tenant_id": "acme",
             "provider": "anthropic", "model": "claude-sonnet-4-5", **anthropic_usage(SPLIT)}
    p = Meter(load_catalog(), load_policy()).meter_object(event, now=NOW)
    # 40k x 3 + 20k x 0.30 + 60k x 3.75 + 40k x 6 + 1000 x 15, per 1M
    assert (p.input_cost, p.cache_read_cost, p.cache_write_cost, p.output_cost) == (
        D("0.12"), D("0.006"), D("0.465"), D("0.015"))
    assert p.total_cost == D("0.606")
