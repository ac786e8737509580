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
    mask_url,
    payload,
    public_budget,
    redact,
    retry_after_s,
    scrub,
    sign,
    summary_line,
    targets,
    unmask_webhooks,
    verify,
)
from pipeline.store.client import Store
from tests.helpers import NOW

SECRET = "s3cret-for-tests"
FAST = RetryPolicy(max_attempts=4, base_s=0.01, max_backoff_s=0.02)
SIGNED_AT = NOW + timedelta(hours=5)  # "the wall clock", apart from the worker's NOW


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

def test_signature_is_hmac_sha256_of_timestamp_breach_id_and_body() -> None:
    import hashlib
    import hmac

    body = b'{"a":1}'
    bid = "b" * 32
    expected = hmac.new(SECRET.encode(), f"1700000000.{bid}.".encode() + body,
                        hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, bid, body) == f"v2={expected}"
    sig = sign(SECRET, 1700000000, bid, body)
    assert verify(SECRET, 1700000000, bid, body, sig, now_s=1700000100)
    assert not verify(SECRET, 1700000000, bid, body + b" ", sig, now_s=1700000100)
    assert not verify("other", 1700000000, bid, body, sig, now_s=1700000100)
    assert not verify(SECRET, 1700000000, bid, body, sig, now_s=1700001000)  # too old


def test_a_replay_with_another_idempotency_key_fails_verification() -> None:
    # the key receivers dedupe on is signed: a captured request replayed inside the
    # timestamp window under a fresh Idempotency-Key does not verify (slack bodies carry
    # no breach id, so the body alone could not tell)
    b = breach()
    body = payload(b, WebhookFormat.slack)
    h = headers_for(b.breach_id, body, 1700000000, SECRET)
    ts, sig = int(h[TIMESTAMP_HEADER]), h[SIGNATURE_HEADER]
    assert verify(SECRET, ts, h[IDEMPOTENCY_HEADER], body, sig, now_s=ts)
    assert not verify(SECRET, ts, "c" * 32, body, sig, now_s=ts + 10)


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


@pytest.mark.parametrize(("url", "logged", "shown"), [
    ("https://hooks.slack.com/services/T0/B0/SECRETXXXX", "https://hooks.slack.com/…",
     "https://hooks.slack.com/…XXXX"),
    ("https://hooks.slack.com:99999/services/T0/B0/SECRET", "https://hooks.slack.com:?/…",
     "https://hooks.slack.com:?/…CRET"),  # a port out of range: urlsplit().port raises
    ("http://[::1/services/SECRET", "http://?/…", "http://?/…"),  # unparsable
    ("http://[::1]:8080/hook?token=abcdef", "http://[::1]:8080/…", "http://[::1]:8080/…cdef"),
    ("https://user:pw@h.example/x", "https://h.example/…", "https://h.example/…x"),
])
def test_redact_and_mask_never_raise_nor_show_a_secret(url: str, logged: str,
                                                       shown: str) -> None:
    assert (redact(url), mask_url(url)) == (logged, shown)
    error = scrub(f"InvalidUrlClientError: {url}", url)  # an error that quotes the URL
    assert error == f"InvalidUrlClientError: {shown}"
    if "//?/" not in logged:  # an answer that echoes the path of a URL that was sent
        path = "/" + url.split("/", 3)[3]
        assert scrub(f"HTTP 404: no such hook {path}", url) == "HTTP 404: no such hook /…"


def test_the_api_and_cli_show_budgets_with_masked_webhooks() -> None:
    secret = "https://hooks.slack.com/services/T0/B0/SECRETXXXX"
    b = budget([(secret, "slack"), ("https://a.example/hook", "json")])
    shown = public_budget(b)
    assert [h["url"] for h in shown["webhooks"]] == [
        "https://hooks.slack.com/…XXXX", "https://a.example/…hook"]
    assert "SECRET" not in json.dumps(shown)
    # read, edit and write back: the masked URLs stand for the budget's real ones
    shown["limit"] = "20"
    unmask_webhooks(shown, b)
    again = Budget.model_validate(shown)
    assert [h.url for h in again.webhooks] == [secret, "https://a.example/hook"]
    # a masked URL that is not one of the budget's is refused as such
    with pytest.raises(ValueError, match="masked webhook URL"):
        Budget.model_validate({**public_budget(b), "budget_id": "other"} | {
            "webhooks": [{"url": "https://hooks.slack.com/…YYYY"}]})


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

    base_url: list[str] = []

    async def scenario() -> None:
        runner, base = await serve({"/flaky": recorder("/flaky", [503, 503, 200]),
                                    "/bad": recorder("/bad", [400]),
                                    "/slack": recorder("/slack", [200])})
        base_url.append(base)
        # records by the worker's clock (pinned), signatures by the wall clock (injected)
        sender = WebhookSender(store, secret=SecretStr(SECRET), global_urls=[f"{base}/flaky"],
                               policy=FAST, clock=lambda: NOW, sign_clock=lambda: SIGNED_AT)
        try:
            b = breach()
            hooks = budget([(f"{base}/bad", "json"), (f"{base}/slack", "slack")])
            results = await sender.deliver(b, hooks)
            assert sorted((r.url.rsplit("…", 1)[1], r.status, r.attempts) for r in results) \
                == [("bad", "gave_up", 1), ("lack", "delivered", 1), ("laky", "delivered", 3)]
            # a replay of the same breach: sent again only where it was not delivered
            again = await sender.deliver(b, hooks)
            assert [(r.url.rsplit("…", 1)[1], r.attempts) for r in again] == [("bad", 1)]
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
        assert ts == int(SIGNED_AT.timestamp())  # not the worker's (pinnable) clock
        assert verify(SECRET, ts, b.breach_id, body, headers[SIGNATURE_HEADER], now_s=ts)
        assert json.loads(body)["breach_id"] == b.breach_id
    slack = [json.loads(body) for p, _, body in seen if p == "/slack"]
    assert slack == [{"text": summary_line(b)}]
    assert sum(1 for p, _, _ in seen if p == "/bad") == 2  # once per run, never retried
    rows = delivery_rows(store)
    by_path = {r[0].rsplit("…", 1)[1]: r[1:] for r in rows}
    assert by_path["laky"] == ("delivered", 3, 200, "", True)
    assert by_path["lack"][:3] == ("delivered", 1, 200)
    assert by_path["bad"][:3] == ("gave_up", 1, 400)
    assert "HTTP 400" in by_path["bad"][3]
    # the table holds masked URLs: the part of a path that is a Slack webhook's secret
    # never reaches it (POST /api/query can read it)
    assert {r[0] for r in rows} == {f"{base_url[0]}/…bad", f"{base_url[0]}/…laky",
                                    f"{base_url[0]}/…lack"}


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
    for bad, why in [("ftp://nope", "http:// or https://"),
                     ("https://a.example/x,https://h.example:99999/s/SECRET", "URL 2 of 2"),
                     ("http://[::1/x", "valid URL"), ("http://h.example:0/x", "1 to 65535"),
                     ("https:///no-host", "names a host")]:
        monkeypatch.setenv("TOKENMETER_WEBHOOK_URLS", bad)
        with pytest.raises(ConfigError, match="TOKENMETER_WEBHOOK_URLS") as err:
            load_settings()
        assert why in str(err.value) and "SECRET" not in str(err.value)


def test_an_endpoint_that_fails_oddly_loses_no_record_of_the_others(store: Store) -> None:
    # a budget webhook with a port out of range (accepted before URLs were checked, still
    # on the topic) and one whose delivery raises: every endpoint still gets its row
    from pipeline.core.budget_options import Webhook

    seen: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(status=200)

    async def scenario() -> list[Any]:
        runner, base = await serve({"/global": ok})
        bad = "https://hooks.example.com:99999/services/T0/B0/SECRET"
        hooks = budget([]).model_copy(update={"webhooks": [
            Webhook.model_construct(url=bad, format=WebhookFormat.slack),
            Webhook.model_construct(url=f"{base}/boom", format=WebhookFormat.json)]})
        sender = WebhookSender(store, secret=None, global_urls=[f"{base}/global"],
                               policy=FAST, clock=lambda: NOW)
        real_one = sender._one

        async def one(b: BudgetBreach, target: Any) -> Any:
            if target.url.endswith("/boom"):
                raise RuntimeError(f"unexpected, at {target.url}")
            return await real_one(b, target)

        sender._one = one  # type: ignore[method-assign]
        try:
            await sender.submit(breach(), hooks)
            await sender.close()
        finally:
            await runner.cleanup()
        return delivery_rows(store)

    rows = asyncio.run(scenario())
    assert seen == ["/global"]
    got = {r[0].rsplit("…", 1)[1]: r[1:5] for r in rows}
    assert set(got) == {"obal", "CRET", "boom"}
    assert got["obal"][:3] == ("delivered", 1, 200)
    assert got["CRET"][:3] == ("gave_up", 1, None)  # no retry can help a bad port
    assert got["boom"][:3] == ("gave_up", 0, None)
    assert got["boom"][3].startswith("RuntimeError: unexpected, at http://127.0.0.1:")
    assert not any("SECRET" in str(r) for r in rows)


def test_signatures_take_the_wall_clock_by_default() -> None:
    from pipeline.clock import wall_clock

    sender = WebhookSender(None, secret=None, global_urls=[],  # type: ignore[arg-type]
                           clock=lambda: NOW)
    assert sender.sign_clock is wall_clock and sender.clock() == NOW


def test_a_stopping_worker_records_what_it_could_not_send(store: Store) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)  # an endpoint that hangs: one delivery takes the only slot
        return web.Response(status=200)

    async def scenario() -> int:
        runner, base = await serve({"/slow": slow})
        sender = WebhookSender(store, secret=None, global_urls=[f"{base}/slow"], policy=FAST,
                               clock=lambda: NOW, concurrency=1, timeout_s=60)
        try:
            for i in range(3):
                await sender.submit(breach(breach_id=f"{i}" * 32), None)
            await asyncio.sleep(0.2)  # the first is in flight, two wait
            return await sender.stop(timeout_s=0.2)
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) == 2
    rows = delivery_rows(store)
    assert [(r[1], r[2]) for r in rows] == [("gave_up", 0), ("gave_up", 0)]
    assert all("worker stopped" in r[4] for r in rows)
