"""Reservations hold a hard limit under concurrency (issue #18), on a real worker and broker.

50 clients reserve at once against a hard $1 budget, then spend (a usage event carrying the
reservation_id, through the SDK) what they were allowed: the ledger ends at or under $1 plus
one request's estimation error, no client is denied while its estimate still fitted, every
hold is settled by its event (not by the TTL), and leaving ``reserve`` without an event
releases the hold. The same worker shows the routes' refusals (JSON only, Host and Origin
guards, bad bodies).
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import threading
import time
import urllib.request
from decimal import Decimal
from typing import Any

import pytest

from pipeline.sdk import UsageProducer
from pipeline.settings import Settings
from tests.helpers import now, query, start_worker, wait_events, wait_ready

pytestmark = [pytest.mark.integration]

TENANT = "res-acme"
CLIENTS = 50


def put_budget(settings: Settings, budget_id: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(f"{settings.web_url}/api/budgets/{budget_id}", method="PUT",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def spend(settings: Settings) -> Decimal:
    rows = query(settings, "SELECT toString(sum(total_cost)) FROM tokenmeter.usage_events "
                 f"FINAL WHERE tenant_id = '{TENANT}'")
    return Decimal(rows[0][0])


def raw_call(settings: Settings, method: str, path: str, body: bytes,
             headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """One request with exactly these headers (Host included)."""
    conn = http.client.HTTPConnection("127.0.0.1", settings.web_port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def check_refusals(settings: Settings) -> None:
    """Mutations need JSON, the Host guard covers these routes, bad bodies say why."""
    host = {"Host": f"127.0.0.1:{settings.web_port}"}
    as_json = host | {"Content-Type": "application/json"}
    good = json.dumps({"tenant_id": TENANT, "model": "deepseek-chat",
                       "estimated_input_tokens": 10, "estimated_output_tokens": 0}).encode()
    cases = [
        ("POST", "/api/reservations", good, host | {"Content-Type": "text/plain"}, 415, "JSON"),
        ("POST", "/api/reservations", good, host, 415, "JSON"),
        ("DELETE", "/api/reservations/x", b"", host, 415, "JSON"),
        ("POST", "/api/reservations", good, as_json | {"Host": "evil.example:80"}, 403,
         "DNS rebinding"),
        ("DELETE", "/api/reservations/x", b"", as_json | {"Host": "evil.example"}, 403,
         "DNS rebinding"),
        ("POST", "/api/reservations", good, as_json | {"Origin": "http://evil.example"},
         403, "cross-origin"),
        ("POST", "/api/reservations", b"[1]", as_json, 400, "JSON object"),
        ("POST", "/api/reservations", b"{", as_json, 400, "JSON object"),
        ("POST", "/api/reservations?tenant_id=other", good, as_json, 400, "another tenant"),
        ("POST", "/api/reservations", json.dumps({**json.loads(good), "ttl_s": 10**6}).encode(),
         as_json, 400, "ttl_s"),
        ("POST", "/api/reservations", json.dumps({**json.loads(good), "model": "nope"}).encode(),
         as_json, 404, "not in the price catalog"),
        ("DELETE", "/api/reservations/none-such", b"", as_json, 404, "no open reservation"),
    ]
    for method, path, body, headers, status, words in cases:
        got, answer = raw_call(settings, method, path, body, headers)
        assert got == status and words in answer.get("error", ""), (method, path, headers,
                                                                     got, answer)


def whole(answer: dict[str, Any]) -> dict[str, Any]:
    rooms: list[dict[str, Any]] = answer["remaining"]
    return next(r for r in rooms if r["budget_id"] == "hard-1" and r["pool"] == "")


def test_fifty_concurrent_clients_hold_a_hard_dollar(settings: Settings) -> None:
    proc = start_worker(settings)
    meter = None
    try:
        wait_ready(settings, proc)
        put_budget(settings, "hard-1", {"tenant_id": TENANT, "limit": "1", "period": "day",
                                        "mode": "hard", "metric": "cost"})
        meter = UsageProducer(settings.kafka_bootstrap, topic=settings.topic("usage-events"),
                              clock=now, api_url=settings.web_url, linger_ms=5)
        rng = random.Random(18)
        # deepseek-chat has no cheaper sibling (no downgrade: allow or deny); every tenth
        # client asks for gpt-4o, which downgrades once it no longer fits
        plans = []
        for i in range(CLIENTS):
            if i % 10 == 0:
                plans.append(("openai", "gpt-4o", 20_000, 2_000))
            else:
                plans.append(("deepseek", "deepseek-chat", 150_000 + 2_000 * i, 20_000))
        shares = [rng.uniform(0.8, 1.0) for _ in range(CLIENTS)]  # actual output / estimate
        answers: list[dict[str, Any]] = [{} for _ in range(CLIENTS)]
        barrier = threading.Barrier(CLIENTS)
        errors: list[BaseException] = []

        def client(i: int) -> None:
            provider, model, inp, out = plans[i]
            try:
                barrier.wait(30)
                with meter.reserve(tenant_id=TENANT, model=model, estimated_input_tokens=inp,
                                   estimated_output_tokens=out) as r:
                    answers[i] = r.answer
                    if r.decision == "deny":
                        return
                    used_provider = provider if r.model == model else "openai"
                    meter.record(tenant_id=TENANT, provider=used_provider, model=r.model,
                                 input_tokens=inp, output_tokens=int(out * shares[i]),
                                 event_id=f"res-{i}")
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        meter.flush()
        reserved_s = time.monotonic() - started

        allowed = [a for a in answers if a["decision"] != "deny"]
        denied = [a for a in answers if a["decision"] == "deny"]
        assert allowed and denied, [a["decision"] for a in answers]
        assert all(a["reservation_id"] for a in allowed)
        assert all(a["reservation_id"] is None and a["expires_at"] is None for a in denied)
        # no client denied while room was left: at its turn, the room after holds was below
        # its estimate
        for a in denied:
            assert Decimal(whole(a)["remaining"]) < Decimal(a["estimated_cost"]), a
        assert wait_events(settings, len(allowed), timeout=30) == len(allowed)
        total = spend(settings)
        # every client spent at most its estimate (output 80-100% of it): one request's
        # estimation error is 0 here, so the ledger holds at most the limit
        assert total <= Decimal(1), total
        assert total > Decimal("0.9"), total  # the budget was used, not refused wholesale

        # every hold was settled by its event (the TTL is 120 s): a zero-token
        # reservation sees the ledger's spend and nothing held
        with meter.reserve(tenant_id=TENANT, model="deepseek-chat", estimated_input_tokens=0,
                           estimated_output_tokens=0) as probe:
            room = whole(probe.answer)
        assert Decimal(room["held"]) == 0 and Decimal(room["spent"]) == total, room
        # leaving reserve without an event releases the hold
        with meter.reserve(tenant_id=TENANT, model="deepseek-chat",
                           estimated_input_tokens=1000, estimated_output_tokens=0) as r:
            assert r.decision == "allow" and Decimal(whole(r.answer)["hold"]) > 0
            inside = meter.reserve(tenant_id=TENANT, model="deepseek-chat",
                                   estimated_input_tokens=0, estimated_output_tokens=0)
            assert Decimal(whole(inside.answer)["held"]) == Decimal(whole(r.answer)["hold"])
        after = meter.reserve(tenant_id=TENANT, model="deepseek-chat",
                              estimated_input_tokens=0, estimated_output_tokens=0)
        assert Decimal(whole(after.answer)["held"]) == 0
        # GET /api/decision answers after holds too, and takes the new parameters
        status, answer = raw_call(
            settings, "GET", f"/api/decision?tenant_id={TENANT}&model=deepseek-chat"
            "&estimated_input_tokens=10&estimated_cache_read_tokens=5&service_tier=standard"
            "&criticality=high&attr.api_key=k1&run_id=r1", b"",
            {"Host": f"127.0.0.1:{settings.web_port}"})
        assert status == 200 and Decimal(whole(answer)["spent"]) == total, answer
        check_refusals(settings)
        print(f"{len(allowed)} allowed ({sum(a['decision'] == 'downgrade' for a in allowed)} "
              f"downgraded), {len(denied)} denied, ledger {total} USD, reserve+record "
              f"{reserved_s:.2f}s")
    finally:
        if meter is not None:
            meter.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
