"""routed_outcomes and the compare/export SQL on real chDB, through the read-only query path."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from pipeline.core.outcomes import OUTCOME_COLUMNS, outcome_row, validate_outcome
from pipeline.store import outcomes as so
from pipeline.store.client import Store
from pipeline.store.queries import run_read_only
from pipeline.store.sink import USAGE_COLUMNS, usage_row
from tests.helpers import METER, NOW

pytestmark = [pytest.mark.integration]
T0 = NOW - timedelta(hours=1)


def routed(event_id: str, tier: str, version: str = "r1-a", tenant: str = "acme") -> list:
    model = {"weak": "gpt-4o-mini", "strong": "gpt-4o"}[tier]
    p = METER.meter_object({
        "event_id": event_id, "timestamp": T0.isoformat(), "tenant_id": tenant,
        "provider": "openai", "model": model, "input_tokens": 1000, "output_tokens": 100,
        "attributes": {"router_version": version, "route_tier": tier,
                       "route_threshold": "0.5", "route_p_weak_ok": "0.4",
                       "route_by": "local"}}, now=NOW)
    return usage_row(p, late=False, partition=0, offset=0, ingested_at=NOW)


def judged(event_id: str, minutes: int = 0, tenant: str = "acme", **signals: object) -> list:
    o = validate_outcome({"event_id": event_id, "tenant_id": tenant,
                          "timestamp": (T0 + timedelta(minutes=minutes)).isoformat(),
                          **signals}, now=NOW)
    return outcome_row(o, NOW)


@pytest.fixture()
def filled(store: Store) -> Store:
    store.insert("usage_events", [routed("w1", "weak"), routed("w2", "weak"),
                                  routed("w3", "weak"), routed("s1", "strong"),
                                  routed("s2", "strong"), routed("o1", "weak", tenant="other"),
                                  # not routed: never in the view
                                  usage_row(METER.meter_object({
                                      "event_id": "plain", "timestamp": T0.isoformat(),
                                      "tenant_id": "acme", "provider": "openai",
                                      "model": "gpt-4o", "input_tokens": 5,
                                      "output_tokens": 5}, now=NOW),
                                      late=False, partition=0, offset=1, ingested_at=NOW)],
                 USAGE_COLUMNS)
    store.insert("usage_outcomes", [
        judged("w1", success=True, score=0.9),
        judged("w2", success=False, score=0.2),
        judged("w2", 5, success=True, source="user"),  # later: w2's success is True
        judged("s1", success=True, feedback="positive"),
        judged("s2", feedback="negative"),
        judged("o1", success=False, tenant="other"),
        judged("never-metered", success=True),  # an outcome without its event: not joined
    ], OUTCOME_COLUMNS)
    return store


def test_the_view_has_every_routed_call_and_its_latest_signals(filled: Store) -> None:
    rows = filled.rows(f"SELECT event_id, route_tier, outcomes, success, score, feedback "
                       f"FROM {filled.database}.routed_outcomes WHERE tenant_id = 'acme' "
                       "ORDER BY event_id")
    assert rows == [("s1", "strong", 1, True, None, "positive"),
                    ("s2", "strong", 1, None, None, "negative"),
                    ("w1", "weak", 1, True, 0.9, None),
                    ("w2", "weak", 2, True, 0.2, None),
                    ("w3", "weak", 0, None, None, None)]


def test_compare_sums_each_variant(filled: Store) -> None:
    result = run_read_only(filled, so.compare_sql(filled.database, ["version", "tier"],
                                                  tenant="acme"))
    got = {t.name: t for t in so.totals(result.rows)}
    assert sorted(got) == ["r1-a/strong", "r1-a/weak"]
    weak, strong = got["r1-a/weak"], got["r1-a/strong"]
    assert (weak.requests, weak.judged, weak.successes, weak.scored) == (3, 2, 2, 2)
    assert weak.score_mean == pytest.approx(0.55)
    assert weak.score_var == pytest.approx(((0.9 - 0.55) ** 2 + (0.2 - 0.55) ** 2) / 1)
    assert (strong.requests, strong.judged, strong.successes, strong.scored) == (2, 1, 1, 0)
    assert strong.score_mean is None and strong.score_var is None
    one = METER.meter_object({"event_id": "x", "timestamp": T0.isoformat(),
                              "tenant_id": "acme", "provider": "openai",
                              "model": "gpt-4o-mini", "input_tokens": 1000,
                              "output_tokens": 100}, now=NOW).total_cost
    assert weak.cost == 3 * one and isinstance(weak.cost, Decimal)


def test_compare_filters_and_groupings(filled: Store) -> None:
    db = filled.database
    everyone = so.totals(run_read_only(filled, so.compare_sql(db, ["tier"])).rows)
    assert {t.name: t.requests for t in everyone} == {"strong": 2, "weak": 4}
    later = run_read_only(filled, so.compare_sql(db, ["version"],
                                                 since=NOW - timedelta(minutes=1)))
    assert later.rows == []
    quoted = run_read_only(filled, so.compare_sql(db, ["version"], tenant="a' OR '1'='1"))
    assert quoted.rows == []
    with pytest.raises(Exception, match="--by"):
        so.variant_expr(["tier", "prompt"])


def test_export_lists_judged_routed_calls(filled: Store) -> None:
    result = run_read_only(filled, so.export_sql(filled.database, tenant="acme"))
    assert tuple(result.columns) == so.EXPORT_COLUMNS
    assert [(r[0], r[4], r[6]) for r in result.rows] == [
        ("s1", "strong", True), ("s2", "strong", None), ("w1", "weak", True),
        ("w2", "weak", True)]
