from datetime import datetime, timezone
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.catalog import Catalog, load_catalog
from pipeline.errors import PricingError
from pipeline.pricing import TokenCounts, cost_lines

AT = datetime(2025, 7, 1, tzinfo=timezone.utc)
CAT = load_catalog()


def price(model: str, at: datetime = AT, tier: str = "standard", hit: bool = False,
          ttl: str = "5m", **counts: int):
    m, v = CAT.price_version(model, at)
    c = TokenCounts(input_tokens=counts.get("i", 0), output_tokens=counts.get("o", 0),
                    cache_read_input_tokens=counts.get("cr", 0),
                    cache_creation_input_tokens=counts.get("cw", 0),
                    reasoning_output_tokens=counts.get("r", 0))
    return cost_lines(c, m, v, currency="USD", service_tier=tier, cache_hit=hit, cache_ttl=ttl)


@pytest.mark.parametrize(
    "model, kwargs, total",
    [
        # plain input/output
        ("gpt-4o", dict(i=1_000_000, o=0), D("2.50")),
        ("gpt-4o", dict(i=0, o=1_000_000), D("10.00")),
        ("gpt-4o", dict(i=1000, o=500), D("0.0075")),
        ("gpt-4o-mini", dict(i=1_000_000, o=1_000_000), D("0.75")),
        ("claude-3-5-sonnet", dict(i=1_000_000, o=1_000_000), D("18.00")),
        ("claude-3-haiku", dict(i=1_000_000, o=1_000_000), D("1.50")),
        ("gemini-1.5-pro", dict(i=1_000_000, o=0), D("2.50")),  # > 128k: long context
        ("gemini-1.5-pro", dict(i=100_000, o=0), D("0.125")),
        ("llama-3-70b", dict(i=1_000_000, o=1_000_000), D("1.38")),
        ("llama-3-8b", dict(i=1_000_000, o=1_000_000), D("0.13")),
        # dated snapshot resolves to family price
        ("gpt-4o-2024-08-06", dict(i=1_000_000), D("2.50")),
        ("claude-3-5-sonnet-20241022", dict(o=1_000_000), D("15.00")),
        ("openai/gpt-4o-mini", dict(i=1_000_000), D("0.15")),
        # cached reads are part of input: uncached = input - read - write
        ("gpt-4o", dict(i=1_000_000, cr=400_000), D("1.50") + D("0.50")),
        ("claude-3-5-sonnet", dict(i=1_000_000, cr=500_000, cw=100_000),
         D("1.20") + D("0.15") + D("0.375")),
        # 1-hour cache writes cost more where the catalog says so
        ("claude-3-5-sonnet", dict(i=100_000, cw=100_000, ttl="1h"), D("0.60")),
        # no cache price: cached tokens at the input price
        ("llama-3-70b", dict(i=1_000_000, cr=1_000_000), D("0.59")),
        # reasoning is part of output
        ("o3", dict(o=1_000_000, r=600_000), D("8.00")),
        # long context applies to the whole request
        ("claude-sonnet-4", dict(i=200_001, o=1000), D("200001") * D("6") / D(10**6)
         + D("1000") * D("22.50") / D(10**6)),
        ("claude-sonnet-4", dict(i=200_000, o=1000), D("0.6") + D("0.015")),
        # service tiers
        ("gpt-4o", dict(i=1_000_000, o=1_000_000, tier="batch"), D("6.25")),
        ("gpt-4o", dict(i=1_000_000, o=1_000_000, tier="priority"), D("21.25")),
        ("o3", dict(i=1_000_000, o=1_000_000, tier="flex"), D("5.00")),
        ("llama-3-70b", dict(i=1_000_000, tier="batch"), D("0.59")),  # no tier price: standard
        # zero tokens cost zero
        ("gpt-4o", dict(), D(0)),
    ],
)
def test_cost_table(model: str, kwargs: dict, total: D) -> None:
    lines = price(model, **kwargs)
    assert lines.total_cost == total
    parts = (lines.input_cost + lines.cache_read_cost + lines.cache_write_cost
             + lines.output_cost + lines.reasoning_cost)
    assert parts == lines.total_cost


@pytest.mark.parametrize(
    "model, at, total, version",
    [
        ("gpt-4o", datetime(2024, 6, 1, tzinfo=timezone.utc), D("20.00"), "2024-05-13"),
        ("gpt-4o", datetime(2024, 10, 2, tzinfo=timezone.utc), D("12.50"), "2024-10-02"),
        ("gemini-1.5-pro", datetime(2024, 9, 30, 23, 59, tzinfo=timezone.utc), D("3.50") + D("10.50"), "2024-05-14"),
        ("gemini-1.5-pro", datetime(2024, 10, 1, tzinfo=timezone.utc), D("6.25"), "2024-10-01"),
        ("gemini-1.5-flash", datetime(2024, 8, 1, tzinfo=timezone.utc), D("1.40"), "2024-05-14"),
        ("o3", datetime(2025, 5, 1, tzinfo=timezone.utc), D("50.00"), "2025-04-16"),
        ("deepseek-chat", datetime(2025, 3, 1, tzinfo=timezone.utc), D("1.37"), "2025-02-09"),
    ],
)
def test_version_in_force_at_event_time(model: str, at: datetime, total: D, version: str) -> None:
    # 100k input keeps Gemini under its long-context threshold; scale to 1M-equivalents
    lines = price(model, at=at, i=100_000, o=100_000)
    assert lines.total_cost * 10 == total
    assert lines.price_version == version


def test_cache_hit_costs_zero_and_records_saving() -> None:
    miss = price("gpt-4o", i=1000, o=1000)
    hit = price("gpt-4o", i=1000, o=1000, hit=True)
    assert hit.total_cost == 0
    assert hit.saved_cost == miss.total_cost
    assert miss.saved_cost == 0


@pytest.mark.parametrize("name", ["gpt-99", "claude-unknown", "", "llama-2-7b"])
def test_unknown_model_is_an_error_never_zero(name: str) -> None:
    with pytest.raises(PricingError) as info:
        CAT.price_version(name, AT)
    assert info.value.reason_code == "unknown_model"


def test_no_version_before_first_effective_date() -> None:
    with pytest.raises(PricingError):
        CAT.price_version("gpt-5", datetime(2024, 1, 1, tzinfo=timezone.utc))


MODELS = sorted(m.model for m in CAT.models)
counts = st.integers(min_value=0, max_value=5_000_000)


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, TokenCounts, str]:
    i = draw(counts)
    cr = draw(st.integers(0, i))
    cw = draw(st.integers(0, i - cr))
    o = draw(counts)
    r = draw(st.integers(0, o))
    tier = draw(st.sampled_from(["standard", "batch", "flex", "priority"]))
    return draw(st.sampled_from(MODELS)), TokenCounts(i, o, cr, cw, r), tier


def _cost(model: str, c: TokenCounts, tier: str, hit: bool = False) -> D:
    m = CAT.resolve(model)
    assert m is not None
    v = max(m.versions, key=lambda x: x.effective_from)
    return cost_lines(c, m, v, currency="USD", service_tier=tier, cache_hit=hit).total_cost


@settings(max_examples=400, deadline=None)
@given(calls())
def test_properties(call: tuple[str, TokenCounts, str]) -> None:
    model, c, tier = call
    m = CAT.resolve(model)
    assert m is not None
    v = max(m.versions, key=lambda x: x.effective_from)
    lines = cost_lines(c, m, v, currency="USD", service_tier=tier)
    total = lines.total_cost
    assert isinstance(total, D)
    assert total >= 0
    assert (lines.input_cost + lines.cache_read_cost + lines.cache_write_cost
            + lines.output_cost + lines.reasoning_cost) == total
    # exact: cost * 1e6 is a whole multiple of the smallest price unit we store
    assert (total * 10**6) == (total * 10**6).quantize(D("1e-9"))
    # monotonic in every token count (within one pricing tier: stay below long-context)
    thr = v.long_context.threshold if v.long_context else None
    if thr is None or c.input_tokens < thr:
        more_out = TokenCounts(c.input_tokens, c.output_tokens + 1, c.cache_read_input_tokens,
                               c.cache_creation_input_tokens, c.reasoning_output_tokens)
        assert _cost(model, more_out, tier) >= total
        if thr is None or c.input_tokens + 1 < thr:
            more_in = TokenCounts(c.input_tokens + 1, c.output_tokens,
                                  c.cache_read_input_tokens, c.cache_creation_input_tokens,
                                  c.reasoning_output_tokens)
            assert _cost(model, more_in, tier) >= total
    # a cached read never costs more than the same token uncached
    if c.cache_read_input_tokens:
        uncached = TokenCounts(c.input_tokens, c.output_tokens, 0,
                               c.cache_creation_input_tokens, c.reasoning_output_tokens)
        assert total <= _cost(model, uncached, tier)
    # cache_hit costs zero and saves exactly the would-be cost
    hit = cost_lines(c, m, v, currency="USD", service_tier=tier, cache_hit=True)
    assert hit.total_cost == 0 and hit.saved_cost == total


def test_catalog_cached_read_never_above_input() -> None:
    for m in CAT.models:
        for v in m.versions:
            if v.cache_read is not None:
                assert v.cache_read <= v.input, m.model


def test_catalog_type() -> None:
    assert isinstance(CAT, Catalog)
