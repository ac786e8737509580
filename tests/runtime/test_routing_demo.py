"""The demo's routed traffic on a real worker and broker: the SDK routes each simulated prompt,
the decision API shifts the threshold for a tenant whose budget runs low, and every routed
event carries the route's attributes, read back through the routed_usage view."""

from __future__ import annotations

import re
import signal
import urllib.parse
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.runtime.demo import run_routed
from pipeline.sdk import Router, UsageProducer
from pipeline.settings import Settings
from tests.helpers import get, http, now, query, start_worker, wait_events, wait_ready

pytestmark = [pytest.mark.integration]
DOC = Path(__file__).resolve().parents[2] / "docs" / "routing.md"
TIGHT, FREE = "tenant-00002", "tenant-00000"


def put_budget(settings: Settings, body: dict) -> None:
    status, answer = http(settings, "PUT", f"/api/budgets/{body['budget_id']}", body)
    assert status == 200, answer


def decision(settings: Settings, **params: object) -> tuple[int, dict]:
    return get(settings, f"/api/decision?{urllib.parse.urlencode(params)}")


def test_routed_demo_events_carry_the_route(settings: Settings) -> None:
    proc = start_worker(settings)
    try:
        wait_ready(settings, proc)
        # TIGHT has spent $0.85 of a soft $1 (15% left): its threshold is 0.3 x the router's
        put_budget(settings, {"budget_id": "tight", "tenant_id": TIGHT, "limit": "1",
                              "period": "month"})
        with UsageProducer(settings.kafka_bootstrap, topic=settings.topic("usage-events"),
                           clock=now) as producer:
            producer.record(tenant_id=TIGHT, provider="openai", model="gpt-4o",
                            input_tokens=340_000, output_tokens=0)
        assert wait_events(settings, 1) == 1
        router = Router()
        base = router.artifact.threshold
        verdict = router.route("What is the capital of Peru?").decision_params()
        status, ans = decision(settings, tenant_id=TIGHT, estimated_input_tokens=100,
                               estimated_output_tokens=100, **verdict)
        assert status == 200 and ans["route"]["remaining_share"] == "0.15", ans
        assert ans["route"]["threshold"] == pytest.approx(base * 0.3)
        assert ans["route"]["tightest"] == "tight" and ans["model"] == "gpt-4o-mini"

        result = run_routed(settings, now, calls=40, seed=3, tenants=(TIGHT, FREE))
        assert result.denied == 0 and sum(result.tiers.values()) == 40
        assert wait_events(settings, 41) == 41
        ids = ", ".join(f"'{e}'" for e in result.event_ids)
        rows = query(settings, "SELECT tenant_id, model, router_version, route_tier, "
                     "route_threshold, route_p_weak_ok, route_by, toString(total_cost) "
                     f"FROM tokenmeter.routed_usage WHERE event_id IN ({ids})")
        assert len(rows) == 40
        by_tenant: dict[str, list[list]] = {}
        for tenant, model, version, tier, threshold, p, by, cost in rows:
            by_tenant.setdefault(tenant, []).append([tier, threshold, p, by])
            assert version == router.router_version
            assert model == {"weak": "gpt-4o-mini", "strong": "gpt-4o"}[tier]
            assert by in ("router", "critical") and 0 <= p <= 1 and Decimal(cost) > 0
            if by == "router":  # the tier is the score at the applied threshold
                assert (tier == "strong") == (p < threshold - 1e-6) or abs(p - threshold) < 1e-5
        assert set(by_tenant) == {TIGHT, FREE}
        # no budget: the router's own threshold; 15% left (less as the calls spend): lower
        assert {round(t, 6) for _, t, _, _ in by_tenant[FREE]} == {round(base, 6)}
        assert all(t <= base * 0.3 + 1e-6 for _, t, _, _ in by_tenant[TIGHT])
        assert {tier for tier, *_ in rows_of(by_tenant)} == {"weak", "strong"}

        # the documented queries run unchanged through the analyst query guard
        blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text("utf-8"), re.S)
        assert len(blocks) == 2
        per_tier = query(settings, blocks[0])
        assert {r[1] for r in per_tier} == {"weak", "strong"}
        assert sum(int(r[2]) for r in per_tier) == 40
        cost = {r[1]: Decimal(r[4]) for r in per_tier}
        assert cost["strong"] > cost["weak"]
        (version, requests, *_), = query(settings, blocks[1])
        assert (version, int(requests)) == (router.router_version, 40)

        # routed requests: parameters checked, models known, a reservation holds the route
        status, ans = http(settings, "GET", f"/api/decision?tenant_id={FREE}&p_weak_ok=0.5")
        assert status == 400 and "router_version" in ans["error"], ans
        status, _ = decision(settings, tenant_id=FREE, **{**verdict, "weak_model": "nope"})
        assert status == 404
        status, held = http(settings, "POST", f"/api/reservations?tenant_id={TIGHT}", {
            "tenant_id": TIGHT, "estimated_input_tokens": 100, "estimated_output_tokens": 100,
            **verdict})
        assert status == 200 and held["route"]["final_tier"] == "weak", held
        assert held["model"] == "gpt-4o-mini" and held["reservation_id"]
        assert Decimal(held["remaining"][0]["hold"]) == Decimal(held["estimated_cost"])
        # a plain decision answers as before, without a route
        status, plain = decision(settings, tenant_id=FREE, model="gpt-4o",
                                 estimated_input_tokens=10, estimated_output_tokens=10)
        assert status == 200 and "route" not in plain and plain["decision"] == "allow"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def rows_of(by_tenant: dict[str, list[list]]) -> list[list]:
    return [row for rows in by_tenant.values() for row in rows]
