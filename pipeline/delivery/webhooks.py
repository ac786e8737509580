"""Webhook delivery rules (pure): where a breach goes, what is sent, how it is signed, and
which failures are worth another attempt, and how endpoint URLs are shown: ``redact`` (logs:
scheme and host) and ``mask_url`` (the API, the CLI and ``webhook_deliveries``: and the last
4 characters), since a Slack webhook's path is its credential.

Every POST carries ``X-Tokenmeter-Timestamp`` (unix seconds, the sender's wall clock),
``Idempotency-Key: <breach_id>`` and, when a secret is set, ``X-Tokenmeter-Signature:
v2=<hex HMAC-SHA256(secret, f"{timestamp}.{breach_id}.{body}")>``: the signature covers the
key receivers dedupe on, so a replayed request cannot pass as another breach. Only what can
succeed later is retried: connection errors, timeouts, 408, 429 and 5xx, with capped
exponential backoff and jitter; any other answer gives up at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pipeline.core.budget_options import MASK_MARK, WebhookFormat
from pipeline.core.budgets import Budget, BudgetBreach

TIMESTAMP_HEADER = "X-Tokenmeter-Timestamp"
SIGNATURE_HEADER = "X-Tokenmeter-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_VERSION = "v2"  # v1 signed f"{timestamp}.{body}" only


def sign(secret: str, timestamp: int, breach_id: str, body: bytes) -> str:
    """The signature header's value:
    ``v2=<hex HMAC-SHA256(secret, "{timestamp}.{breach_id}.{body}")>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{breach_id}.".encode() + body,
                   hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify(secret: str, timestamp: int, breach_id: str, body: bytes, signature: str,
           now_s: int, tolerance_s: int = 300) -> bool:
    """True when ``signature`` signs ``body`` of breach ``breach_id`` (the Idempotency-Key)
    at ``timestamp`` and the timestamp is within ``tolerance_s`` of ``now_s`` (a receiver's
    check; replays of old requests fail it)."""
    return (abs(now_s - timestamp) <= tolerance_s
            and hmac.compare_digest(sign(secret, timestamp, breach_id, body), signature))


def headers_for(breach_id: str, body: bytes, timestamp: int,
                secret: str | None) -> dict[str, str]:
    """The headers of one attempt (signed when there is a secret)."""
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
               IDEMPOTENCY_HEADER: breach_id, "User-Agent": "tokenmeter-webhooks/1"}
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, breach_id, body)
    return headers


def summary_line(breach: BudgetBreach) -> str:
    """One readable line about a breach (the Slack message)."""
    key = f" [{breach.each}={breach.key}]" if breach.key else ""
    pool = f" pool {breach.pool}" if breach.pool else ""
    head = (f"tokenmeter {breach.severity}: {breach.kind.value} breach of budget "
            f"{breach.budget_id}{key}{pool} (tenant {breach.tenant_id})")
    unit = "" if breach.metric.value == "cost" else f" {breach.metric.value}"
    if breach.kind.value == "anomaly" and breach.observed_rate is not None:
        what = (f"spend rate {breach.observed_rate.normalize():f}{unit}/min over "
                f"{breach.window_seconds}s vs baseline "
                f"{(breach.baseline_rate or 0):f}{unit}/min")
    elif breach.kind.value == "forecast" and breach.predicted_spend is not None:
        what = (f"forecast {breach.predicted_spend.normalize():f} of limit "
                f"{breach.limit.normalize():f}{unit} by {breach.period_end:%Y-%m-%d %H:%M} UTC")
    else:
        what = (f"spent {breach.spent.normalize():f} of {breach.limit.normalize():f}{unit} "
                f"({breach.percent.normalize():f}%, threshold {breach.threshold_pct:f}%)")
    return f"{head}: {what}; action {breach.action}"


def payload(breach: BudgetBreach, fmt: WebhookFormat) -> bytes:
    """The request body: the breach as published (json) or {"text": ...} (slack)."""
    if fmt is WebhookFormat.slack:
        return json.dumps({"text": summary_line(breach)}).encode()
    return breach.model_dump_json().encode()


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint a breach goes to, in one format."""

    url: str
    format: WebhookFormat


def targets(budget: Budget | None, global_urls: list[str],
            global_format: WebhookFormat) -> list[Target]:
    """The global endpoints then the budget's own, each URL once (the first one wins)."""
    out: dict[str, Target] = {}
    for url in global_urls:
        out.setdefault(url, Target(url, global_format))
    for hook in budget.webhooks if budget is not None else []:
        out.setdefault(hook.url, Target(hook.url, hook.format))
    return list(out.values())


class Verdict(StrEnum):
    """What one attempt's answer means."""

    delivered = "delivered"
    retry = "retry"
    give_up = "gave_up"


def classify(status: int | None) -> Verdict:
    """2xx delivered; no answer (connection error, timeout), 408, 429 and 5xx worth a
    retry; anything else (4xx, a redirect, which is not followed) gives up at once."""
    if status is None or status in (408, 429) or 500 <= status <= 599:
        return Verdict.retry
    return Verdict.delivered if 200 <= status <= 299 else Verdict.give_up


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header in seconds (None when absent or an HTTP date, not honoured)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``max_attempts`` attempts; the n-th retry waits base_s x 2^(n-1), capped at
    max_backoff_s, times a jitter factor in [0.5, 1)."""

    max_attempts: int = 5
    base_s: float = 1.0
    max_backoff_s: float = 60.0

    def delay(self, attempt: int, jitter: float, retry_after: float | None = None) -> float:
        """Seconds to wait after attempt number ``attempt`` (1-based) failed; ``jitter`` is
        a random number in [0, 1); a server's Retry-After is honoured up to the cap."""
        capped = min(self.max_backoff_s, self.base_s * 2.0 ** (attempt - 1))
        wait = capped * (0.5 + 0.5 * jitter)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff_s))
        return wait


def _base(url: str) -> str:
    """scheme://host[:port] of a URL, whatever the URL (never raises)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unparsable URL (e.g. a bracket left open): name nothing
        return f"{url.partition(':')[0][:10] or '?'}://?"
    host = parts.hostname or "?"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port out of range or not a number
        port = ":?"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme or '?'}://{host}{port}"


def redact(url: str) -> str:
    """A URL fit for logs: scheme, host and port only (a Slack webhook's path is its
    secret); never raises."""
    return f"{_base(url)}/{MASK_MARK}"


def mask_url(url: str) -> str:
    """A URL fit for the API, the CLI and ``webhook_deliveries``: scheme, host, port and the
    last 4 characters of the path and query, enough to tell endpoints apart (never raises)."""
    try:
        parts = urlsplit(url)
        rest = parts.path + (f"?{parts.query}" if parts.query else "")
    except ValueError:
        rest = ""
    return f"{_base(url)}/{MASK_MARK}{rest.removeprefix('/')[-4:]}"


def scrub(text: str, url: str) -> str:
    """``text`` (an error, an answer's first bytes) with the URL and its path masked."""
    try:
        parts = urlsplit(url)
        secret = [parts.path + (f"?{parts.query}" if parts.query else ""), parts.path]
    except ValueError:
        secret = []
    for part in [url, *secret]:
        if len(part) > 1:  # "/" alone hides nothing
            text = text.replace(part, mask_url(url) if part == url else f"/{MASK_MARK}")
    return text


def public_budget(budget: Budget) -> dict[str, Any]:
    """A budget as JSON for the API and the CLI: its webhook URLs masked."""
    data = budget.model_dump(mode="json")
    for hook in data.get("webhooks", []):
        hook["url"] = mask_url(hook["url"])
    return data


def unmask_webhooks(body: dict[str, Any], current: Budget | None) -> None:
    """Put back the full URLs of a budget's webhooks that a client sent masked (read, edit,
    write back); a mask two current URLs share stays masked and is refused as such."""
    hooks = body.get("webhooks")
    if current is None or not isinstance(hooks, list):
        return
    real: dict[str, str | None] = {}
    for hook in current.webhooks:
        masked = mask_url(hook.url)
        real[masked] = hook.url if masked not in real else None
    for item in hooks:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            full = real.get(item["url"])
            if full is not None:
                item["url"] = full
