"""`tokenmeter budget set` flags for templates, runs, anomaly, actions and webhooks."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pipeline.cli import build_parser
from pipeline.cli.budgets import budget_from_args, parse_duration, parse_rate
from pipeline.core.budget_options import WebhookFormat
from pipeline.core.budgets import Period
from pipeline.errors import ConfigError


def budget(*flags: str):  # type: ignore[no-untyped-def]
    args = build_parser().parse_args(["budget", "set", "b1", "--tenant", "acme", *flags])
    return budget_from_args(args)


def test_max_rate_is_per_minute_and_turns_on_anomaly() -> None:
    assert parse_rate("2/min") == Decimal(2)
    assert parse_rate("0.5/s") == Decimal(30)
    assert parse_rate("30/h") == Decimal("0.5")
    assert parse_rate("1/h") == Decimal("0.016667")
    b = budget("--limit", "50", "--max-rate", "2/min")
    assert b.anomaly.enabled and b.anomaly.max_rate == Decimal(2)
    assert budget("--limit", "5", "--anomaly").anomaly.enabled
    assert not budget("--limit", "5").anomaly.enabled
    for bad in ("2", "2/week", "x/min", "-1/s", "0/min"):
        with pytest.raises(ConfigError, match="N/s, N/min or N/h"):
            parse_rate(bad)


def test_each_period_run_and_idle_timeout() -> None:
    b = budget("--limit", "5", "--period", "day", "--each", "user_id")
    assert b.each == "user_id" and b.period is Period.day and b.idle_timeout_s == 1800
    r = budget("--limit", "2", "--period", "run", "--each", "trace_id", "--idle-timeout", "30m")
    assert r.period is Period.run and r.idle_timeout_s == 1800
    assert budget("--limit", "1", "--each", "attributes.api_key").each == "attributes.api_key"
    assert parse_duration("90s") == 90 and parse_duration("2h") == 7200
    assert parse_duration("600") == 600
    with pytest.raises(ConfigError, match="30m"):
        parse_duration("soon")
    with pytest.raises(ConfigError, match="period run needs each"):
        budget("--limit", "2", "--period", "run", "--each", "user_id")
    with pytest.raises(ConfigError, match="is not a key"):
        budget("--limit", "2", "--each", "email")


def test_actions_and_webhooks() -> None:
    b = budget("--limit", "5", "--pool", "critical=0.6", "low=0.4",
               "--action", "anomaly=block", "--action", "forecast=throttle:low",
               "--webhook", "https://hooks.example.com/a",
               "--webhook", "https://hooks.slack.com/services/T/B/x,slack")
    assert b.actions == {"anomaly": "block", "forecast": "throttle:low"}
    assert [(w.url, w.format) for w in b.webhooks] == [
        ("https://hooks.example.com/a", WebhookFormat.json),
        ("https://hooks.slack.com/services/T/B/x", WebhookFormat.slack)]
    with pytest.raises(ConfigError, match="key=value"):
        budget("--limit", "5", "--action", "block")
    with pytest.raises(ConfigError, match="does not have"):
        budget("--limit", "5", "--action", "forecast=throttle:low")


@pytest.mark.parametrize(("url", "why"), [
    ("https://hooks.example.com:99999/services/T0/B0/SECRET", "valid URL"),  # port > 65535
    ("http://hooks.example.com:0/x", "1 to 65535"),
    ("http://hooks.example.com:http/x", "valid URL"),
    ("http://[::1/hook", "valid URL"),
    ("https:///no-host/x", "names a host"),
    ("ftp://files.example.com/x", "http:// or https://"),
    ("https://a.example/x y", "without spaces"),
    ("https://hooks.slack.com/…XXXX", "masked webhook URL"),  # as GET /api/budgets shows it
])
def test_webhook_urls_are_checked_when_set_not_when_delivered(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match="invalid budget") as err:
        budget("--limit", "5", "--webhook", url)
    assert why in str(err.value) and "SECRET" not in str(err.value)


def test_webhook_urls_that_are_fine() -> None:
    urls = ["http://127.0.0.1:8080/hook", "https://[::1]:65535/x?token=abc",
            "https://user:pw@hooks.example.com/a", "http://hooks.example.com:1/x"]
    b = budget("--limit", "5", *[a for u in urls for a in ("--webhook", u)])
    assert [w.url for w in b.webhooks] == urls
