"""The hot path's shortcuts give the audited path's exact Decimals, digit for digit.

``line_costs`` with a RateMemo (what the Meter uses) is compared with the lines
``price_lines`` lists, summed as cost_lines summed them before the memo existed (a dict of
five sums, each from 0, in one order): same value and same Decimal tuple (sign, digits,
exponent), over every shipped model and version, every service tier it lists, both context
bands, cache reads and both write lifetimes, reasoning and cache hits.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, localcontext

import pytest

from pipeline.core.catalog import PER_MILLION, ModelPrice, PriceVersion, load_catalog
from pipeline.core.events import CostLines
from pipeline.core.pricing import (
    RateMemo,
    TokenCounts,
    compose,
    cost_lines,
    line_costs,
    price_lines,
    writes_bill_as_input,
)
from pipeline.errors import PricingError

CAT = load_catalog()
ZERO = Decimal(0)

COUNTS = [
    TokenCounts(1_222, 147),
    TokenCounts(0, 0),
    TokenCounts(100_000, 9_000, cache_read_input_tokens=60_000),
    TokenCounts(100_000, 9_000, cache_creation_input_tokens=40_000,
                cache_creation_1h_input_tokens=10_000, cache_read_input_tokens=20_000),
    TokenCounts(50_000, 30_000, reasoning_output_tokens=25_000),
    TokenCounts(350_000, 1_000, cache_read_input_tokens=100_000),  # long context, reads
    TokenCounts(350_001, 7, cache_creation_input_tokens=349_999,
                cache_creation_1h_input_tokens=3),
    TokenCounts(99_999_999, 99_999_999, reasoning_output_tokens=1),
]


def _before(counts: TokenCounts, model: ModelPrice, version: PriceVersion, tier: str,
            cache_hit: bool) -> tuple[Decimal, ...]:
    """cost_lines as it summed price_lines before the memo (commit c3c5f7d)."""
    costs = {"input": ZERO, "output": ZERO, "cache_read": ZERO, "cache_write": ZERO,
             "reasoning": ZERO}
    for line in price_lines(counts, version, tier, writes_as_input=writes_bill_as_input(model)):
        key = "cache_write" if line.name.startswith("cache_write") else line.name
        costs[key] += line.tokens * line.rate.value / PER_MILLION
    total = sum(costs.values(), ZERO)
    if cache_hit:
        return ZERO, ZERO, ZERO, ZERO, ZERO, ZERO, total
    return (costs["input"], costs["cache_read"], costs["cache_write"], costs["output"],
            costs["reasoning"], total, ZERO)


def _cases() -> list[tuple[ModelPrice, PriceVersion, str]]:
    out = []
    for model in CAT.models:
        for version in model.versions:
            if version.input is None:
                continue  # an unknown-price window: refused, tested below
            for tier in ("standard", *version.tiers):
                out.append((model, version, tier))
    return out


CASES = _cases()


def test_the_grid_covers_tiers_and_bands() -> None:
    tiers = {tier for _, _, tier in CASES}
    assert {"standard", "batch", "priority"} <= tiers
    assert any(v.long_context is not None for _, v, _ in CASES)
    assert len(CASES) > 100


@pytest.mark.parametrize("cache_hit", [False, True])
def test_memo_path_gives_the_audited_decimals(cache_hit: bool) -> None:
    memo = RateMemo()
    checked = refused = 0
    for _ in range(2):  # the second pass is served from the memo
        for model, version, tier in CASES:
            for counts in COUNTS:
                try:
                    expected = _before(counts, model, version, tier, cache_hit)
                except PricingError as exc:
                    with pytest.raises(PricingError) as got:
                        line_costs(counts, model, version, service_tier=tier,
                                   cache_hit=cache_hit, memo=memo)
                    assert (got.value.reason_code, got.value.detail) == (exc.reason_code,
                                                                         exc.detail)
                    refused += 1
                    continue
                for memoized in (memo, None):
                    got = line_costs(counts, model, version, service_tier=tier,
                                     cache_hit=cache_hit, memo=memoized)
                    assert got == expected
                    assert [d.as_tuple() for d in got] == [d.as_tuple() for d in expected]
                checked += 1
    assert checked > 1000 and refused > 0


def test_cost_lines_carries_the_same_figures() -> None:
    model = CAT.resolve("claude-sonnet-4-5", "anthropic")
    assert model is not None
    version = CAT.price_version(model.model, CAT.models[0].versions[0].effective_from
                                + timedelta(days=3650), "anthropic")[1]
    counts = COUNTS[3]
    lines = cost_lines(counts, model, version, currency="USD", service_tier="batch")
    inp, read, write, out, reasoning, total, saved = line_costs(
        counts, model, version, service_tier="batch")
    assert lines == CostLines(input_cost=inp, cache_read_cost=read, cache_write_cost=write,
                              output_cost=out, reasoning_cost=reasoning, total_cost=total,
                              saved_cost=saved, currency="USD",
                              price_version=version.version, priced_model=model.model)
    assert total == inp + read + write + out + reasoning and total > 0


def test_memo_is_keyed_by_band_tier_and_the_version_object() -> None:
    memo = RateMemo()
    model = next(m for m in CAT.models
                 if any(v.long_context is not None and "batch" in v.tiers for v in m.versions))
    version = next(v for v in model.versions
                   if v.long_context is not None and "batch" in v.tiers)
    assert version.long_context is not None
    threshold = version.long_context.threshold
    for tokens in (threshold, threshold + 1, 1):
        for tier in ("standard", "batch"):
            got, _ = memo.get(model, version, tokens, tier)
            assert got == compose(version, tokens, tier)
    # an equal-looking version with other prices (a merged overlay) is a new key
    changed = version.model_copy(update={"input": version.input * 2})
    got, _ = memo.get(model, changed, 1, "standard")
    assert got.input.value == version.input * 2


def test_memo_is_bounded() -> None:
    memo = RateMemo(limit=3)
    versions = [(m, v) for m, v, t in CASES if t == "standard"][:10]
    for model, version in versions:
        assert memo.get(model, version, 1, "standard")[0] == compose(version, 1, "standard")
    assert len(memo._memo) == 3


def test_an_unlisted_tier_is_refused_every_time() -> None:
    memo = RateMemo()
    model, version, _ = next(c for c in CASES if "flex" not in c[1].tiers)
    for _ in range(2):
        with pytest.raises(PricingError, match="lists no 'flex' service tier"):
            memo.get(model, version, 10, "flex")
    assert not memo._memo


def test_memo_follows_the_decimal_context() -> None:
    # a batch rate is base x multiplier: 1.23456 x 0.5 has 5 digits, more than prec=4 keeps
    version = PriceVersion.model_validate({
        "version": "v", "effective_from": "2025-01-01T00:00:00Z", "input": "1.23456",
        "output": "2", "tiers": {"batch": {"multiplier": "0.5"}}})
    model = ModelPrice(model="m", provider="openai", versions=[version])
    memo = RateMemo()
    counts = TokenCounts(1_000_000, 0)
    with localcontext() as ctx:
        ctx.prec = 4
        narrow = line_costs(counts, model, version, service_tier="batch", memo=memo)
        assert narrow[0] == Decimal("0.6173")
    wide = line_costs(counts, model, version, service_tier="batch", memo=memo)
    assert wide[0] == Decimal("0.61728")
    assert wide == _before(counts, model, version, "batch", False)
