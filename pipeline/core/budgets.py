"""Budgets: the model, calendar period math and threshold evaluation (pure, time passed in)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from decimal import Context, Decimal, localcontext
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from pipeline.core.events import Money, PricedUsage

MAX_ID = 256
# Bounds every budget field is validated against. They keep every derived value inside its
# ClickHouse column (sql/006_budget_bounds.sql): limit and pool limits >= MIN_LIMIT with at
# most PLACES decimals fit Decimal(38, 12), and percent = spent * 100 / limit stays below
# 10^34 for any spent a Decimal(38, 12) holds, which Decimal(76, 6) admits.
MIN_LIMIT = Decimal("0.000001")
MAX_LIMIT = Decimal("1000000000000")
PLACES = 6
MAX_THRESHOLDS = 20
MAX_POOLS = 20
MAX_POOL_NAME = 64
# wide enough for any spent * 100 / limit the bounds admit, so quantize never overflows
_WIDE = Context(prec=80)
# what the budget_breaches columns hold: amounts Decimal(38, 12), percent Decimal(76, 6)
MAX_AMOUNT = Decimal(10) ** 26
MAX_PERCENT = Decimal(10) ** 70


def _places(v: Decimal) -> int:
    exponent = v.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def _check_number(what: str, v: Decimal) -> None:
    if not v.is_finite():
        raise ValueError(f"{what} must be a finite number, got {v}")
    if _places(v.normalize()) > PLACES:
        raise ValueError(f"{what} {v} has more than {PLACES} decimal places")


def percent_of(spent: Decimal, limit: Decimal, quantum: Decimal = Decimal("0.000001")) -> Decimal:
    """spent as a percentage of limit, rounded to ``quantum`` (never overflows the context)."""
    with localcontext(_WIDE):
        return (spent * 100 / limit).quantize(quantum)


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

    @field_validator("probability")
    @classmethod
    def _probability(cls, v: Decimal) -> Decimal:
        _check_number("forecast probability", v)
        return v


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
    limit: Money = Field(gt=0)  # bounds: see _limit (one message that says what is allowed)
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

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: Decimal) -> Decimal:
        if not v.is_finite() or not MIN_LIMIT <= v <= MAX_LIMIT:
            raise ValueError(
                f"limit {v:f} is out of range: give a limit from {MIN_LIMIT} to "
                f"{MAX_LIMIT:,f} (dollars, tokens or value units, per the metric)"
            )
        _check_number("limit", v)
        return v

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: list[Decimal]) -> list[Decimal]:
        if not v:
            raise ValueError("give at least one threshold")
        if len(v) > MAX_THRESHOLDS:
            raise ValueError(f"give at most {MAX_THRESHOLDS} thresholds, not {len(v)}")
        for t in v:
            if not t.is_finite() or not Decimal(0) < t <= Decimal(1000):
                raise ValueError(
                    f"threshold {t} is out of range: thresholds are percent, 0 < t <= 1000"
                )
            _check_number("threshold", t)
        return sorted(set(v))

    @field_validator("pools")
    @classmethod
    def _pools(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        if not v:
            return v
        if len(v) > MAX_POOLS:
            raise ValueError(f"give at most {MAX_POOLS} pools, not {len(v)}")
        for name, share in v.items():
            if not name or len(name) > MAX_POOL_NAME:
                raise ValueError(f"pool name {name[:80]!r} must be 1 to {MAX_POOL_NAME} "
                                 "characters")
            if not share.is_finite() or not Decimal(0) < share <= Decimal(1):
                raise ValueError(f"pool {name!r} share {share} must be in (0, 1]")
            _check_number(f"pool {name!r} share", share)
        total = sum(v.values(), Decimal(0))
        if abs(total - Decimal(1)) > Decimal("0.000001"):
            raise ValueError(f"pool shares must sum to 1, they sum to {total}")
        return v

    @model_validator(mode="after")
    def _pool_limits(self) -> Budget:
        # a pool's limit is limit * share: it must be a limit the columns admit, too
        for name, share in self.pools.items():
            if self.limit * share < MIN_LIMIT:
                raise ValueError(
                    f"pool {name!r} gets limit {self.limit} x {share} = "
                    f"{self.limit * share:f}, below the smallest limit {MIN_LIMIT}: raise the "
                    "limit or the pool's share"
                )
        return self

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
        if not (spent < MAX_AMOUNT and limit < MAX_AMOUNT and spent * 100 < MAX_PERCENT * limit):
            # checked here, before the sink: a row ClickHouse must refuse would stop the
            # worker, while this fails only the budget (which the processor then skips)
            raise ValueError(
                f"breach of budget {budget.budget_id!r} does not fit the ledger (spent "
                f"{spent:f} of limit {limit:f}): give the budget a limit from {MIN_LIMIT}")
        percent = percent_of(spent, limit, Decimal("0.01"))
        out.append(BudgetBreach(
            breach_id=bid, budget_id=budget.budget_id, tenant_id=budget.tenant_id,
            kind=BreachKind.threshold, threshold_pct=t, spent=spent, limit=limit,
            percent=percent, metric=budget.metric,
            period_start=period[0], period_end=period[1], pool=pool,
            severity=severity_for(t), action=action_for(budget, pool, t), mode=budget.mode,
            triggering_event_id=triggering_event_id, emitted_at=now,
        ))
    return out
