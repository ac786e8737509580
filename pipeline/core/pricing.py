"""Cost of one call from token counts and a price version (pure, Decimal throughout).

Composition, in this order and no other:

1. base rates of the version in force;
2. long-context band: when the prompt (every input token, cache reads and writes included)
   exceeds the version's threshold, the band's rates price the whole request;
3. service tier (batch, flex, priority): rates the tier lists for the band replace the
   band's, and the tier's multiplier scales every rate it does not list;
4. cache TTL: 5-minute and 1-hour cache writes each at their own rate.

Counts follow OpenTelemetry: input includes cache reads and writes (uncached = input - reads
- writes), output includes reasoning. A line with tokens is priced by exactly one rate; a rate
the catalog does not list falls back only where the provider's own rule says so (reasoning is
billed as output; a cache write with no write price is billed as input, as OpenAI and Google
do); otherwise the call is refused (``unpriced``), never guessed. ``cache_hit`` (served by
the caller's own cache) costs 0 and records the would-be cost as ``saved_cost``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pipeline.core.catalog import PER_MILLION, RATE_FIELDS, ModelPrice, PartialRates, PriceVersion
from pipeline.core.events import CostLines
from pipeline.core.providers import canonical
from pipeline.errors import PricingError

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Token counts of one call, OpenTelemetry GenAI semantics.

    ``cache_creation_input_tokens`` counts every cache write; ``cache_creation_1h_input_tokens``
    is the part of them written with a one-hour TTL (the rest are 5-minute writes).
    """

    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_output_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Rate:
    """One composed rate per 1M tokens and where it came from (for audits and tests)."""

    value: Decimal
    source: str


@dataclass(frozen=True, slots=True)
class ComposedRates:
    """The rates that price one request: a field is None when nothing lists it."""

    input: Rate
    output: Rate
    cache_read: Rate | None
    cache_write_5m: Rate | None
    cache_write_1h: Rate | None
    reasoning: Rate | None
    long_context: bool


def _band(version: PriceVersion, prompt_tokens: int) -> tuple[PartialRates, str, bool]:
    lc = version.long_context
    if lc is not None and prompt_tokens > lc.threshold:
        return lc, "long_context", True
    return version, "base", False


def compose(version: PriceVersion, prompt_tokens: int, service_tier: str) -> ComposedRates:
    """Steps 1-3 of the composition: the band's rates under the service tier."""
    band, band_name, is_long = _band(version, prompt_tokens)
    rates: dict[str, Rate | None] = {}
    if service_tier == "standard":
        for f in RATE_FIELDS:
            v = getattr(band, f)
            rates[f] = None if v is None else Rate(v, f"{band_name}.{f}")
    else:
        tier = version.tiers.get(service_tier)
        if tier is None:
            raise PricingError("unpriced", f"price version {version.version} lists no "
                               f"{service_tier!r} service tier; add its prices (tokenmeter "
                               "prices import) and replay the DLQ")
        listed = (tier.long_context if is_long else tier)
        for f in RATE_FIELDS:
            explicit = getattr(listed, f) if listed is not None else None
            base = getattr(band, f)
            if explicit is not None:
                where = f"{service_tier}.long_context" if is_long else service_tier
                rates[f] = Rate(explicit, f"{where}.{f}")
            elif tier.multiplier is not None and base is not None:
                rates[f] = Rate(base * tier.multiplier,
                                f"{band_name}.{f} x {service_tier} {tier.multiplier}")
            else:
                rates[f] = None
    inp, out = rates["input"], rates["output"]
    if inp is None or out is None:
        why = f" ({version.notes})" if version.notes else ""
        raise PricingError("unpriced", f"price version {version.version} has no input/output "
                           f"price in the {service_tier!r} tier{why}")
    return ComposedRates(inp, out, rates["cache_read"], rates["cache_write_5m"],
                         rates["cache_write_1h"], rates["reasoning"], is_long)


@dataclass(frozen=True, slots=True)
class Line:
    """One priced line: tokens times exactly one rate."""

    name: str
    tokens: int
    rate: Rate

    @property
    def cost(self) -> Decimal:
        """tokens x rate / 1M."""
        return self.tokens * self.rate.value / PER_MILLION


def _need(rate: Rate | None, tokens: int, what: str, version: PriceVersion) -> Rate:
    if rate is None:
        raise PricingError("unpriced", f"{tokens} {what} tokens but price version "
                           f"{version.version} lists no {what} price for this request; "
                           "add it (tokenmeter prices import) and replay the DLQ")
    return rate


# providers that bill a cache write as ordinary input (they list no write price)
WRITES_BILLED_AS_INPUT = frozenset({"openai", "azure", "google"})


def price_lines(counts: TokenCounts, version: PriceVersion, service_tier: str = "standard",
                *, writes_as_input: bool = True) -> list[Line]:
    """The call's lines with the rate that prices each (step 4: cache TTLs).

    ``writes_as_input``: the provider bills cache writes without a listed price as input;
    otherwise such writes are refused.
    """
    r = compose(version, counts.input_tokens, service_tier)
    writes_1h = counts.cache_creation_1h_input_tokens
    writes_5m = counts.cache_creation_input_tokens - writes_1h
    uncached = counts.input_tokens - counts.cache_read_input_tokens \
        - counts.cache_creation_input_tokens
    lines = [Line("input", uncached, r.input),
             Line("output", counts.output_tokens - counts.reasoning_output_tokens, r.output)]
    if counts.cache_read_input_tokens:
        lines.append(Line("cache_read", counts.cache_read_input_tokens,
                          _need(r.cache_read, counts.cache_read_input_tokens, "cache-read",
                                version)))
    if writes_5m:
        rate = r.cache_write_5m
        if rate is None and writes_as_input:
            # no listed write price: billed as input (OpenAI and Google charge creation so)
            rate = Rate(r.input.value, f"{r.input.source} (write as input)")
        lines.append(Line("cache_write_5m", writes_5m,
                          _need(rate, writes_5m, "cache-write", version)))
    if writes_1h:
        lines.append(Line("cache_write_1h", writes_1h,
                          _need(r.cache_write_1h, writes_1h, "1-hour cache-write", version)))
    if counts.reasoning_output_tokens:
        rate = r.reasoning or Rate(r.output.value, f"{r.output.source} (reasoning as output)")
        lines.append(Line("reasoning", counts.reasoning_output_tokens, rate))
    return lines


def cost_lines(
    counts: TokenCounts,
    model: ModelPrice,
    version: PriceVersion,
    *,
    currency: str,
    service_tier: str = "standard",
    cache_hit: bool = False,
) -> CostLines:
    """Price one call; the lines always sum to the would-be total."""
    costs = {"input": ZERO, "output": ZERO, "cache_read": ZERO, "cache_write": ZERO,
             "reasoning": ZERO}
    writes_as_input = (canonical(model.provider) or model.provider) in WRITES_BILLED_AS_INPUT
    for line in price_lines(counts, version, service_tier, writes_as_input=writes_as_input):
        key = "cache_write" if line.name.startswith("cache_write") else line.name
        costs[key] += line.cost
    total = sum(costs.values(), ZERO)
    if cache_hit:
        return CostLines(saved_cost=total, currency=currency, price_version=version.version,
                         priced_model=model.model)
    return CostLines(
        input_cost=costs["input"],
        cache_read_cost=costs["cache_read"],
        cache_write_cost=costs["cache_write"],
        output_cost=costs["output"],
        reasoning_cost=costs["reasoning"],
        total_cost=total,
        currency=currency,
        price_version=version.version,
        priced_model=model.model,
    )
