"""Metering core: raw message -> priced, scored events and dead letters (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, Overflow

from pipeline.core.catalog import Catalog
from pipeline.core.events import DeadLetter, PricedUsage, UsageEvent, cache_writes_1h
from pipeline.core.numbers import MAX_EVENT_COST, MAX_WEIGHT
from pipeline.core.pricing import RateMemo, TokenCounts, line_costs
from pipeline.core.scoring import ValuePolicy
from pipeline.core.tokens import TokenCounter
from pipeline.core.validate import decode_message, safe_raw, validate_event
from pipeline.errors import ValidationFailed


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from (for dead letters)."""

    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass(slots=True)
class Metered:
    """The outcome of metering one message."""

    priced: list[PricedUsage] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


class Meter:
    """Validates, counts, prices and scores events with a fixed catalog and policy."""

    def __init__(self, catalog: Catalog, policy: ValuePolicy, counter: TokenCounter | None = None):
        self.catalog = catalog
        self.policy = policy
        self.counter = counter or TokenCounter()
        self._rates = RateMemo()
        # (task_type, criticality, user_tier) -> (weight, tier): the policy is immutable;
        # bounded because task types and user tiers come from producers
        self._scores: dict[tuple[str | None, str, str | None], tuple[Decimal, str]] = {}
        self._scored_by = policy

    def _score(self, tokens: int, task_type: str | None, criticality: str,
               user_tier: str | None) -> tuple[Decimal, Decimal, str]:
        if self._scored_by is not self.policy:  # a new policy: nothing memoized holds
            self._scores.clear()
            self._scored_by = self.policy
        key = (task_type, criticality, user_tier)
        hit = self._scores.get(key)
        if hit is None:
            weight = self.policy.weight(task_type, criticality, user_tier)
            if not 0 <= weight < MAX_WEIGHT:
                # one bad weight in the policy sets its events aside (dead letters) instead
                # of stopping the sink, and with it metering, for every tenant
                raise ValidationFailed(
                    "out_of_range",
                    f"value weight {weight} (task_type {task_type!r}, criticality "
                    f"{criticality!r}, user_tier {user_tier!r}) is not in [0, {MAX_WEIGHT}); "
                    "correct it in the value policy, then `tokenmeter dlq replay --reason "
                    "out_of_range`")
            hit = (weight, self.policy.tier(weight))
            if len(self._scores) < 10_000:
                self._scores[key] = hit
        return hit[0], hit[0] * tokens, hit[1]

    def price(self, event: UsageEvent) -> PricedUsage:
        """Price and score one validated event (raises PricingError for unknown models)."""
        model, version = self.catalog.price_version(event.model, event.timestamp,
                                                    event.provider)
        source = "provided"
        input_tokens = event.input_tokens
        output_tokens = event.output_tokens
        if input_tokens is None:
            input_tokens, source = self.counter.count(event.model, event.input_text or "")
        if output_tokens is None:
            output_tokens, source = self.counter.count(event.model, event.output_text or "")
        cached = event.cache_read_input_tokens + event.cache_creation_input_tokens
        if cached > input_tokens:
            raise ValidationFailed(
                "inconsistent_counts",
                f"cache read + cache write ({cached}) exceed the {input_tokens} input tokens "
                "counted from input_text; send input_tokens",
            )
        if event.reasoning_output_tokens > output_tokens:
            raise ValidationFailed(
                "inconsistent_counts",
                f"reasoning_output_tokens ({event.reasoning_output_tokens}) exceed the "
                f"{output_tokens} output tokens counted from output_text; send output_tokens",
            )
        writes = event.cache_creation_input_tokens
        # legacy attributes.cache_ttl resolved here and stored resolved: the ledger says what
        # was priced, and reprice (same function) agrees for rows stored before the column
        writes_1h = cache_writes_1h(writes, event.cache_creation_1h_input_tokens,
                                    event.attributes,
                                    lists_1h_price=version.cache_write_1h is not None)
        if writes_1h > writes:
            raise ValidationFailed(
                "inconsistent_counts",
                f"cache_creation_1h_input_tokens ({writes_1h}) exceed "
                f"cache_creation_input_tokens ({writes}); the latter counts every write")
        counts = TokenCounts(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=event.cache_read_input_tokens,
            cache_creation_input_tokens=writes,
            reasoning_output_tokens=event.reasoning_output_tokens,
            cache_creation_1h_input_tokens=writes_1h,
        )
        try:
            input_cost, read_cost, write_cost, output_cost, reasoning_cost, total, saved = \
                line_costs(counts, model, version, service_tier=event.service_tier.value,
                           cache_hit=event.cache_hit, memo=self._rates)
        except Overflow:  # a rate past Decimal's exponent range (other signals are defects)
            raise _cost_out_of_range("overflows Decimal's range", event.model,
                                     version.version) from None
        if not (total < MAX_EVENT_COST and saved < MAX_EVENT_COST):
            # a price no catalog should hold (numbers.py: no real call costs 10^9): the event
            # is set aside rather than stopping the sink, the budgets' timer or the forecast
            # job, and with them metering, for every tenant
            raise _cost_out_of_range(f"is {total} (saved {saved}), not below {MAX_EVENT_COST}",
                                     event.model, version.version)
        weight, units, tier = self._score(
            input_tokens + output_tokens,
            event.task_type,
            event.criticality.value,
            event.user_tier,
        )
        return PricedUsage(
            event_id=event.event_id, timestamp=event.timestamp, tenant_id=event.tenant_id,
            provider=event.provider, model=event.model, input_tokens=input_tokens,
            output_tokens=output_tokens, project_id=event.project_id, user_id=event.user_id,
            feature=event.feature, trace_id=event.trace_id, attributes=event.attributes,
            cache_read_input_tokens=event.cache_read_input_tokens,
            cache_creation_input_tokens=writes, cache_creation_1h_input_tokens=writes_1h,
            reasoning_output_tokens=event.reasoning_output_tokens, task_type=event.task_type,
            criticality=event.criticality, user_tier=event.user_tier,
            service_tier=event.service_tier, cache_hit=event.cache_hit, token_source=source,
            reservation_id=event.reservation_id,
            input_cost=input_cost, cache_read_cost=read_cost, cache_write_cost=write_cost,
            output_cost=output_cost, reasoning_cost=reasoning_cost, total_cost=total,
            saved_cost=saved, currency=self.catalog.currency, price_version=version.version,
            priced_model=model.model,
            value_weight=weight, value_units=units, value_tier=tier,
        )

    def meter_object(self, obj: object, *, now: datetime) -> PricedUsage:
        """Validate then price one decoded object; raises ValidationFailed with a reason."""
        return self.price(validate_event(obj, now=now))

    def meter_message(
        self, raw: bytes | str, *, now: datetime, source: Source = Source()
    ) -> Metered:
        """Meter one message value (single event or batch envelope), item by item."""
        out = Metered()
        items = decode_message(raw)
        if not isinstance(items, list):
            out.dead.append(_dead(items.reason_code, items.detail, None, raw, source, now))
            return out
        for item in items:
            try:
                out.priced.append(self.meter_object(item, now=now))
            except ValidationFailed as exc:
                out.dead.append(_dead(exc.reason_code, exc.detail, item, None, source, now))
            except MemoryError:  # not this item's fault: the batch fails and is retried
                raise
            except Exception as exc:  # one item must never stop the stream
                # a defect on this input (an exception validation did not turn into a
                # reason): set aside like any refusal, so the batch and later messages go on
                out.dead.append(_dead("internal_error", f"{type(exc).__name__}: {exc}; a "
                                      "tokenmeter defect: report it, replay once fixed",
                                      item, None, source, now))
        return out


def _cost_out_of_range(what: str, model: str, version: str) -> ValidationFailed:
    return ValidationFailed(
        "out_of_range",
        f"the cost of this call of {model} at price version {version} {what}; one call may "
        f"cost less than {MAX_EVENT_COST}: correct that price in the catalog, then "
        "`tokenmeter dlq replay --reason out_of_range`")


def _dead(reason: str, detail: str, item: object, raw: bytes | str | None, source: Source,
          now: datetime) -> DeadLetter:
    event_id = tenant_id = None
    if isinstance(item, dict):
        eid, tid = item.get("event_id"), item.get("tenant_id")
        event_id = eid[:256] if isinstance(eid, str) else None
        tenant_id = tid[:256] if isinstance(tid, str) else None
    return DeadLetter(
        reason_code=reason,
        detail=detail[:1000],
        raw=safe_raw(item, raw),
        source_topic=source.topic,
        source_partition=source.partition,
        source_offset=source.offset,
        event_id=event_id,
        tenant_id=tenant_id,
        received_at=now,
    )
