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
from decimal import Decimal, getcontext
from typing import NamedTuple

from pipeline.core.catalog import PER_MILLION, RATE_FIELDS, ModelPrice, PartialRates, PriceVersion
from pipeline.core.events import CostLines
from pipeline.core.providers import canonical
from pipeline.errors import PricingError

ZERO = Decimal(0)


class TokenCounts(NamedTuple):
    """Token counts of one call, OpenTelemetry GenAI semantics.

    A NamedTuple, not a frozen dataclass: one is built per event on the hot path, and a
    frozen dataclass's ``__init__`` costs three times as much.

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


def _line_rates(counts: TokenCounts, r: ComposedRates, version: PriceVersion,
                writes_as_input: bool) -> list[tuple[str, int, Rate]]:
    """(line, tokens, rate) of every line of the call: the one place step 4 lives."""
    reads = counts.cache_read_input_tokens
    writes = counts.cache_creation_input_tokens
    writes_1h = counts.cache_creation_1h_input_tokens
    reasoning = counts.reasoning_output_tokens
    writes_5m = writes - writes_1h
    lines = [("input", counts.input_tokens - reads - writes, r.input),
             ("output", counts.output_tokens - reasoning, r.output)]
    if reads:
        lines.append(("cache_read", reads, _need(r.cache_read, reads, "cache-read", version)))
    if writes_5m:
        rate = r.cache_write_5m
        if rate is None and writes_as_input:
            # no listed write price: billed as input (OpenAI and Google charge creation so)
            rate = Rate(r.input.value, f"{r.input.source} (write as input)")
        lines.append(("cache_write_5m", writes_5m,
                      _need(rate, writes_5m, "cache-write", version)))
    if writes_1h:
        lines.append(("cache_write_1h", writes_1h,
                      _need(r.cache_write_1h, writes_1h, "1-hour cache-write", version)))
    if reasoning:
        rate = r.reasoning or Rate(r.output.value, f"{r.output.source} (reasoning as output)")
        lines.append(("reasoning", reasoning, rate))
    return lines


def price_lines(counts: TokenCounts, version: PriceVersion, service_tier: str = "standard",
                *, writes_as_input: bool = True) -> list[Line]:
    """The call's lines with the rate that prices each (step 4: cache TTLs).

    ``writes_as_input``: the provider bills cache writes without a listed price as input;
    otherwise such writes are refused.
    """
    r = compose(version, counts.input_tokens, service_tier)
    return [Line(name, tokens, rate)
            for name, tokens, rate in _line_rates(counts, r, version, writes_as_input)]


class RateMemo:
    """``compose`` memoized per (model entry, price version, band, service tier, context).

    A catalog is immutable, so the composed rates of a version never change; the memo holds
    the entry and version it keys by identity, so their ids are not reused while it lives.
    One per Meter (not module state); bounded, since tiers and versions are few.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._memo: dict[tuple[int, int, bool, str, int, str],
                         tuple[ModelPrice, PriceVersion, ComposedRates, bool]] = {}

    def get(self, model: ModelPrice, version: PriceVersion, prompt_tokens: int,
            service_tier: str) -> tuple[ComposedRates, bool]:
        """(composed rates, whether unlisted cache writes bill as input) for one call."""
        lc = version.long_context
        ctx = getcontext()  # a tier multiplier's product depends on the Decimal context
        key = (id(model), id(version), lc is not None and prompt_tokens > lc.threshold,
               service_tier, ctx.prec, ctx.rounding)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is model and hit[1] is version:
            return hit[2], hit[3]
        rates = compose(version, prompt_tokens, service_tier)
        as_input = writes_bill_as_input(model)
        if len(self._memo) < self._limit:
            self._memo[key] = (model, version, rates, as_input)
        return rates, as_input


def writes_bill_as_input(model: ModelPrice) -> bool:
    """Whether the provider bills a cache write with no listed price as ordinary input."""
    return (canonical(model.provider) or model.provider) in WRITES_BILLED_AS_INPUT


# (input, cache_read, cache_write, output, reasoning, total, saved), CostLines' field order
Costs = tuple[Decimal, Decimal, Decimal, Decimal, Decimal, Decimal, Decimal]


def line_costs(counts: TokenCounts, model: ModelPrice, version: PriceVersion, *,
               service_tier: str = "standard", cache_hit: bool = False,
               memo: RateMemo | None = None) -> Costs:
    """What one call costs, line by line: the one place money is computed.

    Each line costs tokens x rate / 1M; the lines are added in one fixed order (input,
    output, cache read, cache writes 5m then 1h, reasoning), each sum starting from 0, so
    the Decimal operations are the same with or without ``memo``. A ``cache_hit`` costs 0
    and its would-be total is the saving.
    """
    if memo is None:
        rates = compose(version, counts.input_tokens, service_tier)
        writes_as_input = writes_bill_as_input(model)
    else:
        rates, writes_as_input = memo.get(model, version, counts.input_tokens, service_tier)
    inp = out = read = write = reasoning = ZERO
    for name, tokens, rate in _line_rates(counts, rates, version, writes_as_input):
        cost = tokens * rate.value / PER_MILLION
        if name == "input":
            inp += cost
        elif name == "output":
            out += cost
        elif name == "cache_read":
            read += cost
        elif name == "reasoning":
            reasoning += cost
        else:
            write += cost
    total = ZERO + inp + out + read + write + reasoning
    if cache_hit:
        return ZERO, ZERO, ZERO, ZERO, ZERO, ZERO, total
    return inp, read, write, out, reasoning, total, ZERO


def cost_lines(
    counts: TokenCounts,
    model: ModelPrice,
    version: PriceVersion,
    *,
    currency: str,
    service_tier: str = "standard",
    cache_hit: bool = False,
    memo: RateMemo | None = None,
) -> CostLines:
    """Price one call; the lines always sum to the would-be total."""
    inp, read, write, out, reasoning, total, saved = line_costs(
        counts, model, version, service_tier=service_tier, cache_hit=cache_hit, memo=memo)
    return CostLines(input_cost=inp, cache_read_cost=read, cache_write_cost=write,
                     output_cost=out, reasoning_cost=reasoning, total_cost=total,
                     saved_cost=saved, currency=currency, price_version=version.version,
                     priced_model=model.model)
