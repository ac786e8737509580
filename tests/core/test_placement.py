"""Splitting a message by the partition of each event's tenant (pure)."""

from __future__ import annotations

import json

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.placement import place
from pipeline.core.scoring import load_policy
from tests.helpers import NOW, DefectiveMeter

pytestmark = pytest.mark.clock  # `make test-clocks` runs it at each pinned instant
METER = Meter(load_catalog(), load_policy())
PARTS = {"a": 0, "b": 1, "c": 2}


def of(tenant: str) -> int:
    return PARTS[tenant]


def ev(i: int, tenant: str) -> dict:
    return {"event_id": f"e{i}", "timestamp": NOW.isoformat(), "tenant_id": tenant,
            "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 10,
            "output_tokens": 1}


def test_everything_here_stays_as_sent() -> None:
    raw = json.dumps([ev(1, "a"), ev(2, "a")]).encode()
    placed = place(METER, raw, 0, of, NOW)
    assert placed.keep == raw and placed.moves == []


def test_mixed_envelope_split_by_tenant_partition() -> None:
    raw = json.dumps([ev(1, "a"), ev(2, "b"), ev(3, "c"), ev(4, "b"), ev(5, "a")]).encode()
    placed = place(METER, raw, 0, of, NOW)
    assert [e["event_id"] for e in json.loads(placed.keep or b"")] == ["e1", "e5"]
    assert [(m.partition, m.key, m.events) for m in placed.moves] == [(1, "b", 2), (2, "c", 1)]
    assert [e["event_id"] for e in json.loads(placed.moves[0].value)] == ["e2", "e4"]


def test_single_event_elsewhere_moves_whole() -> None:
    placed = place(METER, json.dumps(ev(1, "c")).encode(), 1, of, NOW)
    assert placed.keep is None
    assert [(m.partition, m.key) for m in placed.moves] == [(2, "c")]


def test_padded_tenant_goes_where_the_trimmed_tenant_lives() -> None:
    """The validator trims tenants; placement uses the trimmed one (a padded key is wrong)."""
    e = ev(1, "b")
    e["tenant_id"] = "  b "
    placed = place(METER, json.dumps(e).encode(), 0, of, NOW)
    assert placed.keep is None and [(m.partition, m.key) for m in placed.moves] == [(1, "b")]


@pytest.mark.parametrize("raw", [b"not json", b"[]", json.dumps({"tenant_id": "b"}).encode()])
def test_invalid_messages_stay_to_be_dead_lettered_here(raw: bytes) -> None:
    placed = place(METER, raw, 0, of, NOW)
    assert placed.keep == raw and placed.moves == []


def test_invalid_items_stay_valid_ones_move() -> None:
    bad = {"event_id": "x", "tenant_id": "b"}
    placed = place(METER, json.dumps([bad, ev(2, "b")]).encode(), 0, of, NOW)
    assert json.loads(placed.keep or b"") == [bad]
    assert [m.partition for m in placed.moves] == [1]


def test_an_item_json_cannot_carry_keeps_the_message_whole() -> None:
    """1e999 decodes to inf: re-encoded it would be Infinity, which the target refuses as
    invalid_json for the whole moved envelope, neighbours included."""
    odd = {**ev(1, "b"), "extra": 1}
    raw = json.dumps([odd, ev(2, "b")]).encode().replace(b'"extra": 1', b'"extra": 1e999')
    placed = place(METER, raw, 0, of, NOW)
    assert placed.keep == raw and placed.moves == []


def test_moved_items_keep_their_fields() -> None:
    e = {**ev(1, "b"), "attributes": {"k": "v"}, "feature": "chat"}
    placed = place(METER, json.dumps([e, ev(2, "a")]).encode(), 0, of, NOW)
    assert json.loads(placed.moves[0].value) == [e]


def test_an_item_the_meter_fails_on_stays_here() -> None:
    items = [{"event_id": "poison", "timestamp": NOW.isoformat(), "tenant_id": "acme",
              "provider": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}]
    raw = json.dumps(items).encode()
    meter = DefectiveMeter(load_catalog(), load_policy())
    assert place(meter, raw, 3, lambda tenant: 0, NOW).keep == raw
