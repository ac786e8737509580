"""Budget options: template keys (--each), anomaly settings, actions and webhooks (pure)."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

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
    """Spend-velocity alerts: calls and spend over short windows against a ledger baseline.

    A window is anomalous when its call count is ``min_score`` improbable at the usual call
    rate of this hour of the week (-log10 of the Poisson tail: 6 is one chance in a
    million), its spend is at least ``min_ratio`` times the usual spend of a window, and its
    rate is at least ``floor`` (per minute, in the budget's metric; it keeps quiet hours from
    alerting on cents). ``max_rate`` (per minute) alerts on its own, whatever the baseline.
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


MASK_MARK = "…"  # stands for the hidden part of a webhook URL as the API and CLI show it


def check_webhook_url(url: str) -> str:
    """A URL a webhook can be POSTed to (http or https, a host, a port in 1-65535), else
    ValueError; checked here so that a bad URL is refused when set, not when delivered."""
    if not 8 <= len(url) <= 2048 or any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("a webhook URL is 8 to 2048 characters, without spaces or control "
                         "characters")
    if MASK_MARK in url:
        raise ValueError(f"{url[:80]!r} is a masked webhook URL (as the API and CLI show "
                         "them): give the full URL")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number in 0-65535
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"a webhook URL must be a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("a webhook URL starts with http:// or https://")
    if not host:
        raise ValueError("a webhook URL names a host, e.g. https://hooks.example.com/x")
    if port == 0:
        raise ValueError("a webhook URL's port is 1 to 65535")
    return url


class Webhook(BaseModel):
    """An endpoint breaches of this budget are POSTed to (signed, retried, recorded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: Annotated[str, Field(min_length=8, max_length=2048)]
    format: WebhookFormat = WebhookFormat.json

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_webhook_url(v)
