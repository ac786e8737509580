"""Budgets: the model, calendar period math and threshold evaluation (pure, time passed in)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from pipeline.events import Money, PricedUsage

MAX_ID = 256


class Period(StrEnum):
    """Calendar period a budget resets on, aligned in the budget's timezone."""

    hour = "hour"
    day = "day"
    week = "week"
    month = "month"
    quarter = "quarter"


class Metric(StrEnum):
    """What a budget limits."""

    cost = "cost"
    tokens = "tokens"
    value_units = "value_units"


class Mode(StrEnum):
    """soft: alert only; hard: alert, and block at 100%."""

    soft = "soft"
    hard = "hard"


class ForecastSettings(BaseModel):
    """Whether to forecast this budget and how sure a forecast alert must be."""

    model_config = ConfigDict(frozen=True)

    enabled: bool = True
    probability: Decimal = Field(default=Decimal("0.8"), gt=0, le=1)


class Budget(BaseModel):
    """A spend limit for a tenant (optionally scoped), per calendar period."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budget_id: Annotated[str, Field(min_length=1, max_length=MAX_ID, pattern=r"^[\w.:@-]+$")]
    tenant_id: Annotated[str, Field(min_length=1, max_length=MAX_ID)]
    project_id: str | None = None
    user_id: str | None = None
    feature: str | None = None
    model: str | None = None
    task_type: str | None = None
    period: Period = Period.month
    timezone: str = "UTC"
    metric: Metric = Metric.cost
    limit: Money = Field(gt=0)
    thresholds: list[Decimal] = Field(
        default_factory=lambda: [Decimal(50), Decimal(80), Decimal(100)]
    )
    mode: Mode = Mode.soft
    pools: dict[str, Decimal] = Field(default_factory=dict)
    forecast: ForecastSettings = Field(default_factory=ForecastSettings)
    currency: str = "USD"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {v!r} (use an IANA name like Europe/Berlin)"
            ) from None
        return v

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: list[Decimal]) -> list[Decimal]:
        if not v:
            raise ValueError("give at least one threshold")
        for t in v:
            if not Decimal(0) < t <= Decimal(1000):
                raise ValueError(
                    f"threshold {t} is out of range: thresholds are percent, 0 < t <= 1000"
                )
        return sorted(set(v))

    @field_validator("pools")
    @classmethod
    def _pools(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        if not v:
            return v
        for name, share in v.items():
            if not Decimal(0) < share <= Decimal(1):
                raise ValueError(f"pool {name!r} share {share} must be in (0, 1]")
        total = sum(v.values(), Decimal(0))
        if abs(total - Decimal(1)) > Decimal("0.000001"):
            raise ValueError(f"pool shares must sum to 1, they sum to {total}")
        return v

    @property
    def tz(self) -> ZoneInfo:
        """The budget's timezone."""
        return ZoneInfo(self.timezone)

    def matches(self, event: PricedUsage) -> bool:
        """True when the event falls in this budget's tenant and scope."""
        return (
            event.tenant_id == self.tenant_id
            and (self.project_id is None or event.project_id == self.project_id)
            and (self.user_id is None or event.user_id == self.user_id)
            and (self.feature is None or event.feature == self.feature)
            and (self.model is None or event.model == self.model
                 or event.priced_model == self.model)
            and (self.task_type is None or event.task_type == self.task_type)
        )

    def measure(self, event: PricedUsage) -> Decimal:
        """The event's amount in this budget's metric."""
        if self.metric is Metric.cost:
            return event.total_cost
        if self.metric is Metric.tokens:
            return Decimal(event.input_tokens + event.output_tokens)
        return event.value_units

    def pool_limit(self, pool: str) -> Decimal:
        """Limit of one pool ("" is the whole budget)."""
        return self.limit if not pool else self.limit * self.pools[pool]


def period_bounds(period: Period, tz: ZoneInfo, at: datetime) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the calendar period containing ``at`` in timezone ``tz``."""
    local = at.astimezone(tz)
    if period is Period.hour:
        # astimezone sets fold for the repeated hour, so both 01:00s are distinct periods
        start = local.replace(minute=0, second=0, microsecond=0).astimezone(timezone.utc)
        return start, start + timedelta(hours=1)
    if period is Period.day:
        first = local.date()
        nxt = first + timedelta(days=1)
    elif period is Period.week:
        first = local.date() - timedelta(days=local.weekday())  # ISO weeks start Monday
        nxt = first + timedelta(days=7)
    elif period is Period.month:
        first = local.date().replace(day=1)
        nxt = (first.replace(year=first.year + 1, month=1) if first.month == 12
               else first.replace(month=first.month + 1))
    else:
        q_month = 3 * ((local.month - 1) // 3) + 1
        first = local.date().replace(month=q_month, day=1)
        nxt = (first.replace(year=first.year + 1, month=1) if q_month == 10
               else first.replace(month=q_month + 3))
    start = datetime(first.year, first.month, first.day, tzinfo=tz).astimezone(timezone.utc)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(timezone.utc)
    return start, end


class BreachKind(StrEnum):
    """threshold: actual spend crossed; forecast: predicted to cross."""

    threshold = "threshold"
    forecast = "forecast"


class BudgetBreach(BaseModel):
    """A budget threshold crossed (or forecast to be), published to budget-breaches."""

    model_config = ConfigDict(frozen=True)

    breach_id: str
    budget_id: str
    tenant_id: str
    kind: BreachKind
    threshold_pct: Money
    spent: Money
    limit: Money
    percent: Money
    metric: Metric
    period_start: AwareDatetime
    period_end: AwareDatetime
    pool: str = ""
    severity: str
    action: str
    mode: Mode = Mode.soft
    triggering_event_id: str | None = None
    emitted_at: AwareDatetime
    predicted_spend: Money | None = None
    predicted_lower: Money | None = None
    predicted_upper: Money | None = None
    probability: Money | None = None
    projected_crossing_at: AwareDatetime | None = None


def breach_id(budget_id: str, period_start: datetime, pool: str, kind: str,
              threshold: Decimal, limit: Decimal) -> str:
    """Deterministic id of one crossing (the limit is part of it: a new limit re-arms)."""
    key = "|".join([budget_id, period_start.astimezone(timezone.utc).isoformat(), pool, kind,
                    format(threshold.normalize(), "f"), format(limit.normalize(), "f")])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def severity_for(threshold: Decimal) -> str:
    """info below 80%, warning below 100%, critical at or above."""
    if threshold >= 100:
        return "critical"
    return "warning" if threshold >= 80 else "info"


def action_for(budget: Budget, pool: str, threshold: Decimal) -> str:
    """alert; block at 100% in hard mode; downgrade (soft) / throttle (hard) for a spent pool."""
    if threshold < 100:
        return "alert"
    if pool:
        return "throttle" if budget.mode is Mode.hard else "downgrade"
    return "block" if budget.mode is Mode.hard else "alert"


def evaluate(budget: Budget, pool: str, period: tuple[datetime, datetime], spent: Decimal,
             already: set[str], *, now: datetime, triggering_event_id: str | None = None,
             skip: int = 0) -> list[BudgetBreach]:
    """Threshold breaches newly crossed at ``spent`` (ids in ``already`` are skipped, and
    so are the first ``skip`` thresholds, known to be settled)."""
    limit = budget.pool_limit(pool)
    out = []
    for t in budget.thresholds[skip:]:
        if spent * 100 < t * limit:
            break
        bid = breach_id(budget.budget_id, period[0], pool, "threshold", t, limit)
        if bid in already:
            continue
        out.append(BudgetBreach(
            breach_id=bid, budget_id=budget.budget_id, tenant_id=budget.tenant_id,
            kind=BreachKind.threshold, threshold_pct=t, spent=spent, limit=limit,
            percent=(spent * 100 / limit).quantize(Decimal("0.01")), metric=budget.metric,
            period_start=period[0], period_end=period[1], pool=pool,
            severity=severity_for(t), action=action_for(budget, pool, t), mode=budget.mode,
            triggering_event_id=triggering_event_id, emitted_at=now,
        ))
    return out
