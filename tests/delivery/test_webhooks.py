"""Webhook delivery: pure rules, and a real local HTTP receiver with a real chDB record."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from pipeline.core.budget_options import WebhookFormat
from pipeline.core.budgets import BreachKind, Budget, BudgetBreach, Metric
from pipeline.delivery.sender import WebhookSender
from pipeline.delivery.webhooks import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RetryPolicy,
    Verdict,
    classify,
    headers_for,
    payload,
    redact,
    retry_after_s,
    sign,
    summary_line,
    targets,
    verify,
)
from pipeline.store.client import Store
from tests.helpers import NOW

SECRET = "s3cret-for-tests"
FAST = RetryPolicy(max_attempts=4, base_s=0.01, max_backoff_s=0.02)


def breach(kind: BreachKind = BreachKind.threshold, **kw: Any) -> BudgetBreach:
    base: dict[str, Any] = dict(
        breach_id="b" * 32, budget_id="team-a", tenant_id="acme", kind=kind,
        threshold_pct=Decimal(80), spent=Decimal("8.5"), limit=Decimal(10),
        percent=Decimal("85.00"), metric=Metric.cost, period_start=NOW.replace(day=1),
        period_end=NOW + timedelta(days=10), severity="warning", action="alert",
        emitted_at=NOW)
    base.update(kw)
    return BudgetBreach(**base)


def budget(urls: list[tuple[str, str]]) -> Budget:
    return Budget.model_validate({"budget_id": "team-a", "tenant_id": "acme", "limit": 10,
                                  "webhooks": [{"url": u, "format": f} for u, f in urls]})


# ---- pure rules ---------------------------------------------------------------------------

def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    body = b'{"a":1}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == f"v1={expected}"
    sig = sign(SECRET, 1700000000, body)
    assert verify(SECRET, 1700000000, body, sig, now_s=1700000100)
    assert not verify(SECRET, 1700000000, body + b" ", sig, now_s=1700000100)
    assert not verify("other", 1700000000, body, sig, now_s=1700000100)
    assert not verify(SECRET, 1700000000, body, sig, now_s=1700001000)  # too old


def test_headers_unsigned_without_secret() -> None:
    h = headers_for("bid", b"{}", 1700000000, None)
    assert SIGNATURE_HEADER not in h
    assert (h[IDEMPOTENCY_HEADER], h[TIMESTAMP_HEADER]) == ("bid", "1700000000")
    assert SIGNATURE_HEADER in headers_for("bid", b"{}", 1700000000, SECRET)


@pytest.mark.parametrize(("status", "verdict"), [
    (None, Verdict.retry), (200, Verdict.delivered), (204, Verdict.delivered),
    (408, Verdict.retry), (429, Verdict.retry), (500, Verdict.retry), (503, Verdict.retry),
    (400, Verdict.give_up), (401, Verdict.give_up), (404, Verdict.give_up),
    (410, Verdict.give_up), (301, Verdict.give_up),
])
def test_only_what_can_succeed_is_retried(status: int | None, verdict: Verdict) -> None:
    assert classify(status) is verdict


def test_backoff_is_exponential_capped_and_jittered() -> None:
    p = RetryPolicy(max_attempts=10, base_s=1.0, max_backoff_s=30.0)
    assert [p.delay(n, 0.999999) for n in (1, 2, 3)] == pytest.approx([1.0, 2.0, 4.0], 1e-4)
    assert p.delay(1, 0.0) == 0.5  # jitter keeps at least half
    assert p.delay(10, 0.999999) == pytest.approx(30.0, 1e-4)  # capped
    assert p.delay(1, 0.0, retry_after=7.0) == 7.0  # the server's Retry-After ...
    assert p.delay(1, 0.0, retry_after=999.0) == 30.0  # ... up to the cap
    assert (retry_after_s("5"), retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT"),
            retry_after_s(None)) == (5.0, None, None)


def test_targets_global_then_budget_each_url_once() -> None:
    b = budget([("http://a.example/x", "slack"), ("http://b.example/y", "json")])
    got = targets(b, ["http://b.example/y", "http://g.example/z"], WebhookFormat.json)
    assert [(t.url, t.format.value) for t in got] == [
        ("http://b.example/y", "json"), ("http://g.example/z", "json"),
        ("http://a.example/x", "slack")]
    assert targets(None, [], WebhookFormat.json) == []


def test_payloads() -> None:
    b = breach(key="run-7", each="trace_id")
    assert json.loads(payload(b, WebhookFormat.json))["breach_id"] == b.breach_id
    slack = json.loads(payload(b, WebhookFormat.slack))
    assert list(slack) == ["text"]
    assert slack["text"] == summary_line(b)
    assert "team-a [trace_id=run-7]" in slack["text"] and "8.5 of 10" in slack["text"]
    anomaly = breach(BreachKind.anomaly, observed_rate=Decimal("2.5"),
                     baseline_rate=Decimal("0.1"), window_seconds=60)
    assert "rate 2.5/min over 60s vs baseline 0.1/min" in summary_line(anomaly)


def test_redact_drops_the_path() -> None:
    assert redact("https://hooks.slack.com/services/T0/B0/XXXX") == "https://hooks.slack.com/…"


# ---- a real receiver ----------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.Response]]


async def serve(routes: dict[str, Handler]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def delivery_rows(store: Store) -> list[tuple[Any, ...]]:
    return store.rows(f"SELECT url, status, attempts, last_status, last_error, signed FROM "
                      f"{store.database}.webhook_deliveries FINAL ORDER BY url")


def test_flaky_receiver_gets_the_breach_once_signed_and_it_is_recorded(store: Store) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    def recorder(path: str, statuses: list[int]) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            seen.append((path, dict(request.headers), await request.read()))
            calls = sum(1 for p, _, _ in seen if p == path)
            return web.Response(status=statuses[min(calls, len(statuses)) - 1], text="nope")
        return handle

    async def scenario() -> None:
        runner, base = await serve({"/flaky": recorder("/flaky", [503, 503, 200]),
                                    "/bad": recorder("/bad", [400]),
                                    "/slack": recorder("/slack", [200])})
        sender = WebhookSender(store, secret=SecretStr(SECRET), global_urls=[f"{base}/flaky"],
                               policy=FAST, clock=lambda: NOW)
        try:
            b = breach()
            hooks = budget([(f"{base}/bad", "json"), (f"{base}/slack", "slack")])
            results = await sender.deliver(b, hooks)
            assert sorted((r.url.rsplit("/", 1)[1], r.status, r.attempts) for r in results) \
                == [("bad", "gave_up", 1), ("flaky", "delivered", 3), ("slack", "delivered", 1)]
            # a replay of the same breach: sent again only where it was not delivered
            again = await sender.deliver(b, hooks)
            assert [(r.url.rsplit("/", 1)[1], r.attempts) for r in again] == [("bad", 1)]
        finally:
            await sender.close()
            await runner.cleanup()

    asyncio.run(scenario())
    flaky = [(h, body) for p, h, body in seen if p == "/flaky"]
    assert len(flaky) == 3  # 503, 503, 200: and not again on the replay
    b = breach()
    for headers, body in flaky:
        assert headers[IDEMPOTENCY_HEADER] == b.breach_id
        ts = int(headers[TIMESTAMP_HEADER])
        assert ts == int(NOW.timestamp())
        assert verify(SECRET, ts, body, headers[SIGNATURE_HEADER], now_s=ts)
        assert json.loads(body)["breach_id"] == b.breach_id
    slack = [json.loads(body) for p, _, body in seen if p == "/slack"]
    assert slack == [{"text": summary_line(b)}]
    assert sum(1 for p, _, _ in seen if p == "/bad") == 2  # once per run, never retried
    rows = delivery_rows(store)
    by_path = {r[0].rsplit("/", 1)[1]: r[1:] for r in rows}
    assert by_path["flaky"] == ("delivered", 3, 200, "", True)
    assert by_path["slack"][:3] == ("delivered", 1, 200)
    assert by_path["bad"][:3] == ("gave_up", 1, 400)
    assert "HTTP 400" in by_path["bad"][3]


def test_dead_endpoint_gives_up_after_the_bound_and_never_raises(store: Store) -> None:
    from tests.helpers import free_port

    url = f"http://127.0.0.1:{free_port()}/gone"  # nobody listens: connection refused

    async def scenario() -> list[Any]:
        sender = WebhookSender(store, secret=None, global_urls=[url], policy=FAST,
                               clock=lambda: NOW)
        await sender.submit(breach(), None)  # in the background, like the worker
        await sender.close()
        return delivery_rows(store)

    rows = asyncio.run(scenario())
    assert [(r[1], r[2], r[3], r[5]) for r in rows] == [("gave_up", FAST.max_attempts, None,
                                                         False)]
    assert "Connect" in rows[0][4]


def test_webhook_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import ConfigError
    from pipeline.settings import load_settings

    monkeypatch.setenv("TOKENMETER_WEBHOOK_URLS", "http://a.example/x, https://b.example/y")
    monkeypatch.setenv("TOKENMETER_WEBHOOK_SECRET", SECRET)
    s = load_settings()
    assert s.webhook_urls == ["http://a.example/x", "https://b.example/y"]
    assert SECRET not in repr(s) and s.webhook_secret is not None
    assert (s.webhook_format, s.actions_refresh_s) == ("json", 2.0)
    monkeypatch.setenv("TOKENMETER_WEBHOOK_URLS", '["http://c.example/z"]')
    assert load_settings().webhook_urls == ["http://c.example/z"]
    monkeypatch.setenv("TOKENMETER_WEBHOOK_URLS", "ftp://nope")
    with pytest.raises(ConfigError, match="TOKENMETER_WEBHOOK_URLS"):
        load_settings()
