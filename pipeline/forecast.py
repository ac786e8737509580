"""Spend forecasting models (the statsmodels job builds on these)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from pipeline.events import Money


class ForecastPoint(BaseModel):
    """Predicted cumulative period spend at one horizon point."""

    model_config = ConfigDict(frozen=True)

    at: AwareDatetime
    p50: Money
    lower: Money
    upper: Money


class Forecast(BaseModel):
    """One forecast run for one budget."""

    model_config = ConfigDict(frozen=True)

    budget_id: str
    tenant_id: str
    run_at: AwareDatetime
    period_start: AwareDatetime
    period_end: AwareDatetime
    model: str = Field(description="model used, or 'none' with a reason")
    reason: str = ""
    history_points: int = 0
    spent: Money = Decimal(0)
    limit: Money = Decimal(0)
    predicted_spend: Money | None = None
    lower: Money | None = None
    upper: Money | None = None
    probability_exceed: Money | None = None
    threshold_probabilities: dict[str, Money] = Field(default_factory=dict)
    crossing_times: dict[str, datetime | None] = Field(default_factory=dict)
    backtest_mape: Money | None = None
    points: list[ForecastPoint] = Field(default_factory=list)
