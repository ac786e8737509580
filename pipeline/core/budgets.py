"""Budgets: the model, calendar period math and threshold evaluation (pure, time passed in)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from decimal import Decimal, localcontext
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

from pipeline.core.budget_options import (
    ACTION_KINDS,
    RUN_KEYS,
    Action,
    AnomalySettings,
    Webhook,
    check_each,
    each_value,
)
from pipeline.core.events import Money, PricedUsage
from pipeline.core.numbers import (
    MAX_AMOUNT,
    MAX_ID,
    MAX_IDLE_S,
    MAX_LIMIT,
    MAX_PERCENT,
    MAX_POOL_NAME,
    MAX_POOLS,
    MAX_THRESHOLDS,
    MAX_WEBHOOKS,
    MIN_IDLE_S,
    MIN_LIMIT,
    WIDE,
    check_number,
)


def percent_of(spent: Decimal, limit: Decimal, quantum: Decimal = Decimal("0.000001")) -> Decimal:
    """spent as a percentage of limit, rounded to ``quantum`` (never overflows the context)."""
    with localcontext(WIDE):
        return (spent * 100 / limit).quantize(quantum)


class Period(StrEnum):
    """Calendar period a budget resets on, aligned in the budget's timezone."""

    hour = "hour"
    day = "day"
    week = "week"
    month = "month"
    quarter = "quarter"
    # the lifetime of one agent run (a template over trace_id, session_id or run_id): it
    # closes after ``idle_timeout_s`` without events (docs/budgets.md, "Runs")
    run = "run"


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
        check_number("forecast probability", v)
        return v


def measure(metric: Metric, event: PricedUsage) -> Decimal:
    """An event's amount in a metric: its cost, its tokens, or its value units."""
    if metric is Metric.cost:
        return event.total_cost
    if metric is Metric.tokens:
        return Decimal(event.input_tokens + event.output_tokens)
    return event.value_units


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
    # a template: every distinct value of this key gets its own limit and thresholds
    each: str | None = None
    # keys idle this long are dropped from memory; a run closes after it (seconds)
    idle_timeout_s: int = Field(default=1800, ge=MIN_IDLE_S, le=MAX_IDLE_S)
    anomaly: AnomalySettings = Field(default_factory=AnomalySettings)
    # what the decision API does after a breach of that kind: {"anomaly": "block",
    # "forecast": "throttle:low"}, until the condition clears or `budget reset`
    actions: dict[str, str] = Field(default_factory=dict)
    webhooks: list[Webhook] = Field(default_factory=list, max_length=MAX_WEBHOOKS)

    @field_validator("each")
    @classmethod
    def _each(cls, v: str | None) -> str | None:
        return None if v is None else check_each(v)

    @field_validator("actions")
    @classmethod
    def _actions(cls, v: dict[str, str]) -> dict[str, str]:
        for kind, spec in v.items():
            if kind not in ACTION_KINDS:
                raise ValueError(f"actions key {kind[:40]!r} must be one of "
                                 f"{', '.join(ACTION_KINDS)}")
            name, _, pool = spec.partition(":")
            if name not in Action.__members__ or (pool and name != "throttle") or \
                    len(pool) > MAX_POOL_NAME:
                raise ValueError(f"action {spec[:80]!r} must be alert, downgrade, block or "
                                 "throttle[:POOL]")
        return v

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
        check_number("limit", v)
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
            check_number("threshold", t)
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
            check_number(f"pool {name!r} share", share)
        total = sum(v.values(), Decimal(0))
        if abs(total - Decimal(1)) > Decimal("0.000001"):
            raise ValueError(f"pool shares must sum to 1, they sum to {total}")
        return v

    @model_validator(mode="after")
    def _run_needs_key(self) -> Budget:
        if self.period is Period.run and self.each not in RUN_KEYS:
            raise ValueError(f"period run needs each set to one of {', '.join(RUN_KEYS)} "
                             "(which key names the run)")
        if self.each is not None and "forecast" in self.actions:
            # forecasts are per calendar budget: a template's keys are never forecast, so
            # the action could never turn on; refuse it rather than accept a no-op
            raise ValueError("a template (each) gets no forecast breaches: drop actions "
                             "'forecast', or put it on a budget without each")
        for spec in self.actions.values():
            pool = spec.partition(":")[2]
            if pool and pool not in self.pools:
                raise ValueError(f"action {spec!r} names pool {pool!r}, which the budget "
                                 "does not have")
        return self

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

    def key_of(self, event: PricedUsage) -> str | None:
        """The template key value the event counts under ("" for a plain budget; None when
        the budget is a template and the event lacks the key: it does not count)."""
        return "" if self.each is None else each_value(self.each, event)

    def measure(self, event: PricedUsage) -> Decimal:
        """The event's amount in this budget's metric."""
        return measure(self.metric, event)

    def pool_limit(self, pool: str) -> Decimal:
        """Limit of one pool ("" is the whole budget)."""
        return self.limit if not pool else self.limit * self.pools[pool]


RUN_START = datetime(1970, 1, 1, tzinfo=timezone.utc)
RUN_END = datetime(2999, 1, 1, tzinfo=timezone.utc)


def period_bounds(period: Period, tz: ZoneInfo, at: datetime) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the calendar period containing ``at`` in timezone ``tz``
    (a run has no calendar period: its bounds are RUN_START and RUN_END, the run's events
    are told apart by their key)."""
    if period is Period.run:
        return RUN_START, RUN_END
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
    """threshold: actual spend crossed; forecast: predicted to cross; anomaly: spend rate
    far above its baseline (or over the budget's max_rate)."""

    threshold = "threshold"
    forecast = "forecast"
    anomaly = "anomaly"


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
    # templates and runs: which key (each) and which of its values crossed
    each: str = ""
    key: str = ""
    # anomaly breaches: the rates (per minute, in the budget's metric), score and window
    observed_rate: Money | None = None
    baseline_rate: Money | None = None
    score: Money | None = None
    window_seconds: int | None = None


def breach_id(budget_id: str, period_start: datetime, pool: str, kind: str,
              threshold: Decimal, limit: Decimal, key: str = "") -> str:
    """Deterministic id of one crossing (the limit is part of it: a new limit re-arms; a
    template's key value is, so each value crosses on its own)."""
    parts = [budget_id, period_start.astimezone(timezone.utc).isoformat(), pool, kind,
             format(threshold.normalize(), "f"), format(limit.normalize(), "f")]
    if key:
        parts.append(key)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


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
             skip: int = 0, key: str = "") -> list[BudgetBreach]:
    """Threshold breaches newly crossed at ``spent`` (ids in ``already`` are skipped, and
    so are the first ``skip`` thresholds, known to be settled)."""
    limit = budget.pool_limit(pool)
    out = []
    for t in budget.thresholds[skip:]:
        if spent * 100 < t * limit:
            break
        bid = breach_id(budget.budget_id, period[0], pool, "threshold", t, limit, key)
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
            each=budget.each or "", key=key,
        ))
    return out
