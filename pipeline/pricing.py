"""Cost of one call from token counts and a price version (pure, Decimal throughout).

Rules: input includes cache reads and cache writes (uncached = input - read - write);
output includes reasoning. Above a model's long-context threshold the tier prices apply to
the whole request. A service tier (batch/flex/priority) uses its own prices when the catalog
lists them, else standard. ``cache_hit`` (served by the caller's own cache) costs 0 and
records the would-be cost as ``saved_cost``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pipeline.catalog import PER_MILLION, ModelPrice, PriceVersion, Rates
from pipeline.events import CostLines

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Token counts of one call, OpenTelemetry GenAI semantics."""

    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_output_tokens: int = 0


def select_rates(version: PriceVersion, input_tokens: int, service_tier: str) -> Rates:
    """The rates that apply to a request of this size in this service tier."""
    rates: Rates = version
    if version.long_context is not None and input_tokens > version.long_context.threshold:
        rates = version.long_context
    if service_tier != "standard":
        tier = version.tiers.get(service_tier)
        if tier is not None:
            rates = tier
    return rates


def cost_lines(
    counts: TokenCounts,
    model: ModelPrice,
    version: PriceVersion,
    *,
    currency: str,
    service_tier: str = "standard",
    cache_hit: bool = False,
    cache_ttl: str = "5m",
) -> CostLines:
    """Price one call; the lines always sum to the would-be total."""
    r = select_rates(version, counts.input_tokens, service_tier)
    cache_read_rate = r.cache_read if r.cache_read is not None else r.input
    write = r.cache_write_1h if cache_ttl == "1h" and r.cache_write_1h is not None else None
    cache_write_rate = write if write is not None else (
        r.cache_write_5m if r.cache_write_5m is not None else r.input
    )
    reasoning_rate = r.reasoning if r.reasoning is not None else r.output
    cached = counts.cache_read_input_tokens + counts.cache_creation_input_tokens
    uncached = counts.input_tokens - cached
    visible_output = counts.output_tokens - counts.reasoning_output_tokens
    input_cost = uncached * r.input / PER_MILLION
    read_cost = counts.cache_read_input_tokens * cache_read_rate / PER_MILLION
    write_cost = counts.cache_creation_input_tokens * cache_write_rate / PER_MILLION
    output_cost = visible_output * r.output / PER_MILLION
    reasoning_cost = counts.reasoning_output_tokens * reasoning_rate / PER_MILLION
    total = input_cost + read_cost + write_cost + output_cost + reasoning_cost
    if cache_hit:
        return CostLines(
            saved_cost=total,
            currency=currency,
            price_version=version.version,
            priced_model=model.model,
        )
    return CostLines(
        input_cost=input_cost,
        cache_read_cost=read_cost,
        cache_write_cost=write_cost,
        output_cost=output_cost,
        reasoning_cost=reasoning_cost,
        total_cost=total,
        currency=currency,
        price_version=version.version,
        priced_model=model.model,
    )
