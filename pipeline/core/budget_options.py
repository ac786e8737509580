"""Budget options: template keys (--each), anomaly settings, actions and webhooks (pure)."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.core.events import Money, PricedUsage
from pipeline.core.numbers import MAX_LIMIT, MAX_POOL_NAME, check_number

# --each keys: event fields, two well-known attributes, or any attribute as attributes.NAME
EACH_FIELDS = ("user_id", "project_id", "feature", "trace_id")
EACH_ATTRIBUTES = ("session_id", "run_id")
RUN_KEYS = ("trace_id", "session_id", "run_id")
ATTRIBUTE_PREFIX = "attributes."


def each_value(each: str, event: PricedUsage) -> str | None:
    """The event's value of a template key (None or "" when the event lacks it)."""
    if each in EACH_FIELDS:
        value: str | None = getattr(event, each)
    elif each in EACH_ATTRIBUTES:
        value = event.attributes.get(each)
    else:
        value = event.attributes.get(each.removeprefix(ATTRIBUTE_PREFIX))
    return value or None


def check_each(v: str) -> str:
    """A valid template key, or ValueError saying which keys there are."""
    if v in EACH_FIELDS or v in EACH_ATTRIBUTES:
        return v
    name = v.removeprefix(ATTRIBUTE_PREFIX)
    if v.startswith(ATTRIBUTE_PREFIX) and 0 < len(name) <= MAX_POOL_NAME:
        return v
    raise ValueError(
        f"each {v[:80]!r} is not a key: use one of {', '.join(EACH_FIELDS + EACH_ATTRIBUTES)} "
        f"or {ATTRIBUTE_PREFIX}NAME (an attribute, e.g. {ATTRIBUTE_PREFIX}api_key)")


class AnomalySettings(BaseModel):
    """Spend-velocity alerts: rate over short windows against a robust ledger baseline.

    A window's rate is anomalous when it is at least ``min_ratio`` times the baseline
    median, ``min_score`` robust z-scores (MAD) above it, and above ``floor`` (per minute,
    in the budget's metric; it keeps quiet tenants and tenants without history from alerting
    on noise). ``max_rate`` (per minute) alerts on its own, whatever the baseline says.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    windows_s: list[int] = Field(default_factory=lambda: [60, 300])
    min_score: Decimal = Field(default=Decimal(6), gt=0, le=1000)
    min_ratio: Decimal = Field(default=Decimal(3), ge=1, le=1000)
    floor: Money = Field(default=Decimal("0.05"), ge=0, le=MAX_LIMIT)
    max_rate: Money | None = Field(default=None, gt=0, le=MAX_LIMIT)

    @field_validator("windows_s")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        if not v or len(v) > 4 or any(not 10 <= w <= 3600 for w in v):
            raise ValueError("give 1 to 4 anomaly windows of 10 to 3600 seconds each")
        return sorted(set(v))

    @field_validator("min_score", "min_ratio", "floor", "max_rate")
    @classmethod
    def _numbers(cls, v: Decimal | None) -> Decimal | None:
        if v is not None:
            check_number("anomaly setting", v)
        return v


class Action(StrEnum):
    """What the decision API does while an action is active."""

    alert = "alert"  # nothing beyond the breach
    downgrade = "downgrade"  # answer downgrade to a cheaper model of the same provider
    throttle = "throttle"  # deny the named pool's value tier (throttle:POOL), else downgrade
    block = "block"  # deny every request the budget covers


ACTION_KINDS = ("forecast", "anomaly")


class WebhookFormat(StrEnum):
    """json: the breach as published; slack: a Slack-compatible {"text": ...} message."""

    json = "json"
    slack = "slack"


class Webhook(BaseModel):
    """An endpoint breaches of this budget are POSTed to (signed, retried, recorded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: Annotated[str, Field(min_length=8, max_length=2048, pattern=r"^https?://[^\s]+$")]
    format: WebhookFormat = WebhookFormat.json
