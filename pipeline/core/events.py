"""Message models: the contract of every topic (docs/contracts.md, "Messages")."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    TypeAdapter,
)

# Limits (documented in docs/contracts.md, "Input limits"); over them is reason_code too_large.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 1000
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 512 * 1024
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_CHARS = 1024
MAX_TOKENS = 100_000_000  # no model has a context anywhere near this per call
ZERO = Decimal(0)
ONE = Decimal(1)


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        # 0001-01-01T00:00+14:00 has no UTC instant in Python's range: a ValueError makes
        # it a validation error (invalid_timestamp) instead of an exception that stops a batch
        raise ValueError("the timestamp's UTC instant is outside years 1-9999") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, strip_whitespace=True)]
OptId = Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)] | None
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS, strict=True)]
Money = Annotated[
    Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json")
]


class Criticality(StrEnum):
    """How much the caller says this call matters."""

    low = "low"
    normal = "normal"
    high = "high"
    critical = "critical"


class ServiceTier(StrEnum):
    """Provider service tier; batch/flex/priority have their own prices."""

    standard = "standard"
    batch = "batch"
    flex = "flex"
    priority = "priority"


class UsageEvent(BaseModel):
    """One LLM call, as a producer reports it.

    ``cache_creation_input_tokens`` counts every cache write; ``cache_creation_1h_input_tokens``
    is the part of them written with a one-hour TTL (the rest are 5-minute writes). Other
    shapes (Anthropic's ``cache_creation`` object, OTel names) are mapped onto these two by
    pipeline/core/validate.py.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    event_id: Id
    timestamp: UtcDatetime
    tenant_id: Id
    project_id: OptId = None
    user_id: OptId = None
    feature: OptId = None
    trace_id: OptId = None
    attributes: dict[Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)],
                     Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_CHARS)]] = (
        Field(default_factory=dict, max_length=MAX_ATTRIBUTES)
    )
    provider: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    model: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
    input_tokens: Tokens | None = None
    cache_read_input_tokens: Tokens = 0
    cache_creation_input_tokens: Tokens = 0
    cache_creation_1h_input_tokens: Tokens = 0
    output_tokens: Tokens | None = None
    reasoning_output_tokens: Tokens = 0
    input_text: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | None = None
    output_text: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | None = None
    task_type: OptId = None
    criticality: Criticality = Criticality.normal
    user_tier: OptId = None
    service_tier: ServiceTier = ServiceTier.standard
    cache_hit: bool = False
    # the hold taken by POST /api/reservations that this call settles (docs/budgets.md)
    reservation_id: OptId = None


LEGACY_TTL_ATTRIBUTE = "cache_ttl"


def cache_writes_1h(cache_creation_input_tokens: int, cache_creation_1h_input_tokens: int,
                    attributes: dict[str, str], *, lists_1h_price: bool) -> int:
    """The one-hour cache writes to price: the explicit count, else the legacy attribute's.

    Legacy: before the explicit count existed, ``attributes.cache_ttl == "1h"`` meant every
    write of the call was a one-hour write, where the price version lists a one-hour write
    price (``lists_1h_price``; elsewhere the attribute changed nothing, and still does not).
    Validation refuses the attribute together with an explicit split without one-hour
    writes, so a 0 here with the attribute set always means "no split given": the meter and
    reprice (over rows stored before the column existed, which read 0) reach the same count.
    """
    if cache_creation_1h_input_tokens:
        return cache_creation_1h_input_tokens
    if lists_1h_price and attributes.get(LEGACY_TTL_ATTRIBUTE) == "1h":
        return cache_creation_input_tokens
    return 0


@dataclass(frozen=True, slots=True)
class CostLines:
    """What one call cost, line by line (Decimal, in the catalog currency)."""

    input_cost: Money = ZERO
    cache_read_cost: Money = ZERO
    cache_write_cost: Money = ZERO
    output_cost: Money = ZERO
    reasoning_cost: Money = ZERO
    total_cost: Money = ZERO
    saved_cost: Money = ZERO
    currency: str = "USD"
    price_version: str = ""
    priced_model: str = ""


# A plain slotted dataclass, not a BaseModel: one is built per event on the hot path, and
# pydantic construction cost more than pricing itself. JSON and its schema go through
# PRICED_ADAPTER (a pydantic TypeAdapter), so the contract stays generated from this class.
@dataclass(slots=True)
class PricedUsage:
    """A validated, counted, priced and value-scored event (text fields dropped)."""

    event_id: str
    timestamp: datetime
    tenant_id: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    project_id: str | None = None
    user_id: str | None = None
    feature: str | None = None
    trace_id: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    reasoning_output_tokens: int = 0
    task_type: str | None = None
    criticality: Criticality = Criticality.normal
    user_tier: str | None = None
    service_tier: ServiceTier = ServiceTier.standard
    cache_hit: bool = False
    reservation_id: str | None = None
    token_source: str = "provided"  # noqa: S105 - not a secret
    input_cost: Money = ZERO
    cache_read_cost: Money = ZERO
    cache_write_cost: Money = ZERO
    output_cost: Money = ZERO
    reasoning_cost: Money = ZERO
    total_cost: Money = ZERO
    saved_cost: Money = ZERO
    currency: str = "USD"
    price_version: str = ""
    priced_model: str = ""
    value_weight: Money = ONE
    value_units: Money = ZERO
    value_tier: str = "standard"

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens (cached and reasoning are inside those)."""
        return self.input_tokens + self.output_tokens


PRICED_ADAPTER: TypeAdapter[PricedUsage] = TypeAdapter(PricedUsage)
COST_ADAPTER: TypeAdapter[CostLines] = TypeAdapter(CostLines)


def priced_json(p: PricedUsage) -> bytes:
    """PricedUsage as JSON (money as decimal strings)."""
    return PRICED_ADAPTER.dump_json(p)


class DeadLetter(BaseModel):
    """A message that could not be metered, with why and where it came from."""

    model_config = ConfigDict(frozen=True)

    reason_code: str
    detail: str
    raw: str = Field(description="payload (text fields removed, size-capped)")
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    event_id: str | None = None
    tenant_id: str | None = None
    received_at: datetime

