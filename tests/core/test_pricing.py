"""Pricing composition: base -> long context -> service tier -> cache TTL, computed by hand.

The first table prices synthetic versions shaped like each provider's rules (so the
composition is tested apart from catalog data); the second prices the shipped catalog.
"""

from datetime import datetime, timezone
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.catalog import Catalog, ModelPrice, PriceVersion, load_catalog
from pipeline.core.pricing import TokenCounts, cost_lines, price_lines
from pipeline.errors import PricingError

UTC = timezone.utc
AT = datetime(2025, 11, 1, tzinfo=UTC)
CAT = load_catalog()


def version(**spec) -> PriceVersion:
    return PriceVersion.model_validate({"version": "t", "effective_from": "2025-01-01T00:00:00Z",
                                        **spec})


# Anthropic's rules: 5m writes 1.25x, 1h writes 2x, reads 0.1x; above 200k prompt tokens the
# long-context rates price the whole request; batch halves every rate, long context included
ANTHROPIC = version(input="3", output="15", cache_read="0.30", cache_write_5m="3.75",
                    cache_write_1h="6", long_context={
                        "threshold": 200_000, "input": "6", "output": "22.50",
                        "cache_read": "0.60", "cache_write_5m": "7.50", "cache_write_1h": "12"},
                    tiers={"batch": {"multiplier": "0.5"}})
# OpenAI's: cached input listed, no write price (writes are free / billed as input), batch
# and flex half price, priority its own list
OPENAI = version(input="1.25", output="10", cache_read="0.125",
                 tiers={"batch": {"multiplier": "0.5"}, "flex": {"multiplier": "0.5"},
                        "priority": {"input": "2.50", "output": "20", "cache_read": "0.25"}})
# Google's: long context above 200k with its own cache-read price, batch half price
GOOGLE = version(input="1.25", output="10", cache_read="0.125",
                 long_context={"threshold": 200_000, "input": "2.50", "output": "15",
                               "cache_read": "0.25"},
                 tiers={"batch": {"multiplier": "0.5"}})
VERSIONS = {"anthropic": ANTHROPIC, "openai": OPENAI, "google": GOOGLE}
def calc(v: PriceVersion, tier: str = "standard", *, i: int = 0, o: int = 0, cr: int = 0,
         cw: int = 0, cw1h: int = 0, r: int = 0, provider: str = "openai") -> D:
    c = TokenCounts(input_tokens=i, output_tokens=o, cache_read_input_tokens=cr,
                    cache_creation_input_tokens=cw, reasoning_output_tokens=r,
                    cache_creation_1h_input_tokens=cw1h)
    model = ModelPrice(model="m", provider=provider, versions=[v])
    return cost_lines(c, model, v, currency="USD", service_tier=tier).total_cost


@pytest.mark.parametrize(("provider", "tier", "counts", "expected"), [
    # Anthropic, standard context
    ("anthropic", "standard", dict(i=100_000, o=10_000), D("0.45")),  # .3 + .15
    ("anthropic", "standard", dict(i=100_000, cr=90_000, o=100_000), D("1.557")),  # .03+.027+1.5
    ("anthropic", "batch", dict(i=100_000, cr=90_000, o=100_000), D("0.7785")),  # reads at .15
    # writes: 40k of 100k input, 10k of them 1h; 20k reads; uncached 40k
    ("anthropic", "standard", dict(i=100_000, cr=20_000, cw=40_000, cw1h=10_000),
     D("0.2985")),  # .12 + .006 + .1125 + .06
    ("anthropic", "batch", dict(i=100_000, cr=20_000, cw=40_000, cw1h=10_000), D("0.14925")),
    # long context: the prompt counts reads and writes toward 200k (only 100k uncached here)
    ("anthropic", "standard", dict(i=300_000, o=100_000), D("4.05")),  # 1.8 + 2.25
    ("anthropic", "batch", dict(i=300_000, o=100_000), D("2.025")),
    ("anthropic", "standard", dict(i=250_000, cr=100_000, cw=50_000, cw1h=20_000, o=10_000),
     D("1.35")),  # .6 + .06 + .225 + .24 + .225
    ("anthropic", "batch", dict(i=250_000, cr=100_000, cw=50_000, cw1h=20_000, o=10_000),
     D("0.675")),
    ("anthropic", "standard", dict(i=200_000), D("0.6")),  # at the threshold: base rates
    ("anthropic", "standard", dict(i=200_001), D("1.200006")),  # above it: all at 6
    # OpenAI: reasoning is output; cached input; tiers
    ("openai", "standard", dict(i=1_000_000, cr=400_000, o=100_000, r=60_000), D("1.8")),
    ("openai", "batch", dict(i=1_000_000, cr=400_000, o=100_000, r=60_000), D("0.9")),
    ("openai", "flex", dict(i=1_000_000, cr=400_000, o=100_000, r=60_000), D("0.9")),
    ("openai", "priority", dict(i=1_000_000, cr=400_000, o=100_000, r=60_000), D("3.6")),
    ("openai", "standard", dict(i=100_000, cw=100_000), D("0.125")),  # a 5m write as input
    ("openai", "standard", dict(), D(0)),
    # Google: long context with its own cache-read rate, batch halves both bands
    ("google", "standard", dict(i=100_000, cr=50_000, o=10_000), D("0.16875")),
    ("google", "batch", dict(i=100_000, cr=50_000, o=10_000), D("0.084375")),
    ("google", "standard", dict(i=300_000, cr=100_000, o=10_000), D("0.675")),  # .5+.025+.15
    ("google", "batch", dict(i=300_000, cr=100_000, o=10_000), D("0.3375")),
])
def test_composition_table(provider: str, tier: str, counts: dict, expected: D) -> None:
    assert calc(VERSIONS[provider], tier, provider=provider, **counts) == expected


def test_a_write_without_a_write_price_is_input_only_where_the_provider_bills_so() -> None:
    """OpenAI and Google bill cache creation as input; anywhere else an unlisted write
    price is refused, not guessed."""
    assert calc(OPENAI, i=100_000, cw=100_000, provider="azure") == D("0.125")
    with pytest.raises(PricingError, match="cache-write"):
        calc(OPENAI, i=100_000, cw=100_000, provider="bedrock")


@pytest.mark.parametrize(("v", "tier", "counts", "fragment"), [
    (OPENAI, "standard", dict(i=100_000, cw=100_000, cw1h=100_000), "1-hour cache-write"),
    (version(input="1", output="2"), "standard", dict(i=10, cr=5), "cache-read"),
    (GOOGLE, "flex", dict(i=10), "'flex' service tier"),
    (GOOGLE, "priority", dict(i=10), "'priority' service tier"),
])
def test_what_the_catalog_does_not_list_is_refused_never_guessed(v, tier, counts,
                                                                 fragment) -> None:
    with pytest.raises(PricingError) as info:
        calc(v, tier, **counts)
    assert info.value.reason_code == "unpriced" and fragment in info.value.detail


def test_tier_listing_for_the_long_context_band() -> None:
    v = version(input="1", output="2", long_context={"threshold": 10, "input": "4",
                                                     "output": "8"},
                tiers={"priority": {"input": "1.5", "output": "3",
                                    "long_context": {"input": "5"}, "multiplier": "2"}})
    assert calc(v, "priority", i=5, o=1_000_000) == D("3.0000075")  # listed: 5 x 1.5 + 3
    # long band: listed input 5, output = 8 x 2 (the multiplier covers what is not listed)
    assert calc(v, "priority", i=1_000_000, o=1_000_000) == D("21")


def test_rate_sources_name_the_composition() -> None:
    c = TokenCounts(input_tokens=300_000, output_tokens=10, cache_read_input_tokens=1,
                    cache_creation_input_tokens=3, cache_creation_1h_input_tokens=1)
    sources = {ln.name: ln.rate.source for ln in price_lines(c, ANTHROPIC, "batch")}
    assert sources == {"input": "long_context.input x batch 0.5",
                       "output": "long_context.output x batch 0.5",
                       "cache_read": "long_context.cache_read x batch 0.5",
                       "cache_write_5m": "long_context.cache_write_5m x batch 0.5",
                       "cache_write_1h": "long_context.cache_write_1h x batch 0.5"}


# -- the shipped catalog, priced by hand --------------------------------------------------

def catalog_cost(model: str, provider: str | None = None, at: datetime = AT,
                 tier: str = "standard", **counts: int) -> D:
    m, v = CAT.price_version(model, at, provider)
    c = TokenCounts(input_tokens=counts.get("i", 0), output_tokens=counts.get("o", 0),
                    cache_read_input_tokens=counts.get("cr", 0),
                    cache_creation_input_tokens=counts.get("cw", 0),
                    reasoning_output_tokens=counts.get("r", 0),
                    cache_creation_1h_input_tokens=counts.get("cw1h", 0))
    return cost_lines(c, m, v, currency="USD", service_tier=tier).total_cost


@pytest.mark.parametrize(("model", "provider", "at", "tier", "counts", "expected"), [
    # the cases
    ("claude-sonnet-4-5", "anthropic", AT, "batch", dict(i=300_000, o=100_000), D("2.025")),
    ("claude-sonnet-4-5", "anthropic", AT, "standard", dict(i=300_000, o=100_000), D("4.05")),
    ("claude-sonnet-4-5", "anthropic", AT, "batch", dict(i=100_000, cr=90_000, o=100_000),
     D("0.7785")),
    ("gpt-4o-2024-08-06", "openai", datetime(2024, 9, 1, tzinfo=UTC), "standard",
     dict(i=1_000_000, o=1_000_000), D("12.50")),
    ("gpt-4o", "openai", datetime(2024, 9, 1, tzinfo=UTC), "standard",
     dict(i=1_000_000, o=1_000_000), D("20.00")),  # the alias still meant 2024-05-13 then
    ("gpt-4o", "openai", AT, "standard", dict(i=1_000_000, o=1_000_000), D("12.50")),
    # 1h writes at 2x input, 5m at 1.25x, one call carrying both (Anthropic reports both)
    ("claude-sonnet-4-5", "anthropic", AT, "standard",
     dict(i=100_000, cw=100_000, cw1h=40_000), D("0.465")),  # .06 x 3.75 + .04 x 6
    ("claude-haiku-4-5", "anthropic", AT, "standard", dict(i=100_000, o=10_000), D("0.15")),
    ("gpt-5", "openai", AT, "priority", dict(i=1_000_000, cr=500_000, o=100_000),
     D("3.375")),  # .5 x 2.5 + .5 x .25 + .1 x 20
    ("o3", "openai", datetime(2025, 5, 1, tzinfo=UTC), "standard", dict(o=1_000_000, r=600_000),
     D("40.00")),  # before the June 2025 cut; reasoning billed as output
    ("o3", "openai", AT, "flex", dict(i=1_000_000, o=1_000_000), D("5.00")),
    # Gemini batch halves input and output but lists the standard cache price
    ("gemini-2.5-pro", "google", datetime(2025, 11, 15, tzinfo=UTC), "batch",
     dict(i=100_000, cr=50_000, o=10_000), D("0.0875")),  # .03125 + .00625 + .05
    ("gemini-2.5-pro", "google", datetime(2025, 11, 15, tzinfo=UTC), "batch",
     dict(i=300_000, cr=100_000, o=10_000), D("0.35")),  # .25 + .025 + .075 (long context)
    ("gemini-2.5-pro", "google", datetime(2025, 9, 1, tzinfo=UTC), "standard",
     dict(i=100_000, cr=50_000), D("0.078")),  # .0625 + .0155 (the earlier cache price)
    ("gemini-2.5-flash", "gemini", datetime(2025, 11, 15, tzinfo=UTC), "standard",
     dict(i=1_000_000, cr=1_000_000), D("0.03")),
    ("deepseek-ai/DeepSeek-R1", "together", AT, "standard", dict(i=1_000_000, o=1_000_000),
     D("10.00")),
    ("deepseek-reasoner", "deepseek", AT, "standard", dict(i=1_000_000, o=1_000_000),
     D("0.70")),
    ("gpt-3.5-turbo-0613", "openai", AT, "standard", dict(i=1_000_000, o=1_000_000),
     D("3.50")),
    # the alias meant -0613 until it moved to -0125 in February 2024
    ("gpt-3.5-turbo", "openai", datetime(2024, 1, 10, tzinfo=UTC), "standard",
     dict(i=1_000_000, o=1_000_000), D("3.50")),
    ("gpt-3.5-turbo", "openai", datetime(2024, 3, 1, tzinfo=UTC), "standard",
     dict(i=1_000_000, o=1_000_000), D("2.00")),
    ("o1-mini", "openai", datetime(2024, 9, 20, tzinfo=UTC), "standard",
     dict(i=1_000_000, o=1_000_000), D("15.00")),  # launch price
    ("gemini-2.0-flash", "google", AT, "batch", dict(i=1_000_000, cr=1_000_000), D("0.025")),
])
def test_catalog_table(model, provider, at, tier, counts, expected) -> None:
    assert catalog_cost(model, provider, at, tier, **counts) == expected


@pytest.mark.parametrize(("model", "provider", "at", "tier", "counts"), [
    # OpenAI's batch tables list no cached-input price for gpt-4o
    ("gpt-4o", "openai", AT, "batch", dict(i=1000, cr=500)),
    # Gemini's cache price changed on an unknown day of October 2025
    ("gemini-2.5-pro", "google", datetime(2025, 10, 15, tzinfo=UTC), "standard",
     dict(i=1000, cr=500)),
    ("llama-3-70b", "groq", AT, "batch", dict(i=1000)),  # Groq lists no batch price
    # o1-mini's price cut and the gpt-3.5-turbo alias move happened on dates not found
    ("o1-mini", "openai", datetime(2025, 1, 15, tzinfo=UTC), "standard", dict(i=1000)),
    ("gpt-3.5-turbo", "openai", datetime(2024, 2, 10, tzinfo=UTC), "standard", dict(i=1000)),
])
def test_catalog_refuses_what_it_does_not_list(model, provider, at, tier, counts) -> None:
    with pytest.raises(PricingError) as info:
        catalog_cost(model, provider, at, tier, **counts)
    assert info.value.reason_code == "unpriced"


# -- properties over random calls ---------------------------------------------------------

counts = st.integers(min_value=0, max_value=5_000_000)


@st.composite
def calls(draw: st.DrawFn) -> tuple[PriceVersion, TokenCounts, str]:
    i = draw(counts)
    cr = draw(st.integers(0, i))
    cw = draw(st.integers(0, i - cr))
    cw1h = draw(st.integers(0, cw))
    o = draw(counts)
    r = draw(st.integers(0, o))
    pool = [*VERSIONS.values(), *(v for m in CAT.models for v in m.versions)]
    v = draw(st.sampled_from(pool))
    tier = draw(st.sampled_from(["standard", *sorted(v.tiers)]))
    return v, TokenCounts(i, o, cr, cw, r, cw1h), tier


@settings(max_examples=500, deadline=None)
@given(calls())
def test_every_token_is_priced_by_exactly_one_rate(call) -> None:
    v, c, tier = call
    try:
        lines = price_lines(c, v, tier)
    except PricingError as exc:
        # refused only for a line the version does not price, or a window of unknown price
        assert exc.reason_code == "unpriced"
        assert (v.input is None or v.output is None or c.cache_read_input_tokens
                or c.cache_creation_1h_input_tokens or c.cache_creation_input_tokens)
        return
    names = [ln.name for ln in lines]
    assert len(names) == len(set(names))  # one rate per line
    by = {ln.name: ln.tokens for ln in lines}
    assert by["input"] + by.get("cache_read", 0) + by.get("cache_write_5m", 0) \
        + by.get("cache_write_1h", 0) == c.input_tokens
    assert by["output"] + by.get("reasoning", 0) == c.output_tokens
    for ln in lines:
        assert ln.cost == ln.tokens * ln.rate.value / D(1_000_000)
        assert ln.rate.value >= 0 and ln.rate.source
    m = ModelPrice(model="m", provider="openai", versions=[v])  # writes as input, like lines
    priced = cost_lines(c, m, v, currency="USD", service_tier=tier)
    assert priced.total_cost == sum((ln.cost for ln in lines), D(0))
    assert (priced.input_cost + priced.cache_read_cost + priced.cache_write_cost
            + priced.output_cost + priced.reasoning_cost) == priced.total_cost
    hit = cost_lines(c, m, v, currency="USD", service_tier=tier, cache_hit=True)
    assert hit.total_cost == 0 and hit.saved_cost == priced.total_cost


def test_catalog_cached_read_never_above_input() -> None:
    for m in CAT.models:
        for v in m.versions:
            if v.cache_read is not None:
                assert v.cache_read <= v.input, m.model


def test_catalog_type() -> None:
    assert isinstance(CAT, Catalog)
