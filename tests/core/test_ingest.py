"""HTTP ingest, the pure part: body parsing, per-item verdicts, envelopes, answers, the gate."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from pipeline.core.events import MAX_BATCH_EVENTS, MAX_MESSAGE_BYTES
from pipeline.core.ingest import (
    MAX_REQUEST_BYTES,
    MAX_REQUEST_ITEMS,
    NDJSON,
    BadItem,
    Gate,
    Refused,
    answer,
    check_items,
    envelopes,
    parse_body,
)
from pipeline.core.validate import decode_message
from tests.helpers import METER, NOW, DefectiveMeter

JSON = "application/json"


def event(i: int, tenant: str = "tenant-00001", **extra: Any) -> dict[str, Any]:
    return {"event_id": f"e-{i}", "timestamp": (NOW - timedelta(seconds=i)).isoformat(),
            "tenant_id": tenant, "provider": "openai", "model": "gpt-4o-mini",
            "input_tokens": 100 + i, "output_tokens": 10, **extra}


def test_one_object_an_array_and_ndjson_give_their_items() -> None:
    assert parse_body(json.dumps(event(1)).encode(), JSON) == [event(1)]
    assert parse_body(json.dumps([event(1), event(2)]).encode(), JSON) == [event(1), event(2)]
    body = (json.dumps(event(1)) + "\n\n" + json.dumps(event(2)) + "\r\n").encode()
    assert parse_body(body, NDJSON) == [event(1), event(2)]


def test_a_bad_ndjson_line_is_one_rejected_item_not_the_whole_request() -> None:
    body = b"\n".join([json.dumps(event(1)).encode(), b"{nope", b"[1, 2]",
                       json.dumps(event(2)).encode()])
    items = parse_body(body, NDJSON)
    assert isinstance(items, list) and len(items) == 4
    assert isinstance(items[1], BadItem) and items[1].reason_code == "invalid_json"
    assert isinstance(items[2], BadItem) and items[2].reason_code == "schema"
    verdicts = check_items(items, METER, now=NOW)
    assert [v.accepted for v in verdicts] == [True, False, False, True]


@pytest.mark.parametrize("body", [
    b'{"event_id": "a", "event_id": "b"}',  # ambiguous: the stream refuses it too
    b'{"input_tokens": NaN}',
    b"{not json",
    b"\xff\xfe",
])
def test_an_undecodable_json_body_is_refused_whole(body: bytes) -> None:
    refused = parse_body(body, JSON)
    assert isinstance(refused, Refused)
    assert (refused.status, refused.reason_code) == (400, "invalid_json")
    # the stream says the same of the same bytes
    stream = decode_message(body)
    assert not isinstance(stream, list) and stream.reason_code == "invalid_json"


def test_limits_of_a_request() -> None:
    big = parse_body(b" " * (MAX_REQUEST_BYTES + 1), JSON)
    assert isinstance(big, Refused) and big.status == 413
    many = parse_body(json.dumps([{}] * (MAX_REQUEST_ITEMS + 1)).encode(), JSON)
    assert isinstance(many, Refused) and many.status == 413
    lines = parse_body(b"{}\n" * (MAX_REQUEST_ITEMS + 1), NDJSON)
    assert isinstance(lines, Refused) and lines.status == 413
    assert parse_body(b"{}\n" * MAX_REQUEST_ITEMS, NDJSON) == [{}] * MAX_REQUEST_ITEMS
    for body, kind in ((b"[]", JSON), (b"\n \n", NDJSON)):
        empty = parse_body(body, kind)
        assert isinstance(empty, Refused) and (empty.status, empty.reason_code) == (400, "schema")
    other = parse_body(b"{}", "text/plain")
    assert isinstance(other, Refused) and other.status == 415


BAD = [
    ("schema", {k: v for k, v in event(1).items() if k != "tenant_id"}),
    ("invalid_timestamp", event(2, timestamp="yesterday")),
    ("negative_tokens", event(3, input_tokens=-1)),
    ("inconsistent_counts", event(4, cache_read_input_tokens=10_000)),
    ("missing_counts", {k: v for k, v in event(5).items() if k != "output_tokens"}),
    ("unknown_model", event(6, model="no-such-model-xyz")),
    ("schema", "not an object"),
]


def test_items_get_the_streams_reason_codes() -> None:
    items = [event(0)] + [obj for _, obj in BAD]
    verdicts = check_items(items, METER, now=NOW)
    assert verdicts[0].accepted and verdicts[0].event_id == "e-0"
    assert [v.reason_code for v in verdicts[1:]] == [code for code, _ in BAD]
    # what the stream's meter dead-letters for the same envelope, reason by reason
    stream = METER.meter_message(json.dumps(items).encode(), now=NOW)
    assert [d.reason_code for d in stream.dead] == [v.reason_code for v in verdicts[1:]]
    assert all(v.detail for v in verdicts[1:])
    assert verdicts[3].event_id == "e-3"  # a rejected item names its event when it can


def test_an_event_too_large_for_one_kafka_message_is_refused_here() -> None:
    # the stream refuses any message over MAX_MESSAGE_BYTES whole; one such event alone in
    # an envelope would be dead-lettered after the client heard "accepted"
    huge = event(1, attributes={f"k{i}": "x" * 1000 for i in range(64)},
                 input_text="y" * (500 * 1024), output_text="z" * (500 * 1024))
    huge.pop("input_tokens")
    huge.pop("output_tokens")
    [verdict] = check_items([huge], METER, now=NOW)
    assert (verdict.reason_code, verdict.event_id) == ("too_large", "e-1")


def test_envelopes_are_per_tenant_within_the_streams_limits() -> None:
    items = [event(i, tenant=f"tenant-{i % 3:05d}") for i in range(2 * MAX_BATCH_EVENTS + 500)]
    items.append(event(99_999, input_tokens=-5))  # rejected: not published
    verdicts = check_items(items, METER, now=NOW)
    out = envelopes(verdicts)
    seen: list[str] = []
    for key, value in out:
        decoded = decode_message(value)
        assert isinstance(decoded, list) and len(decoded) <= MAX_BATCH_EVENTS
        assert len(value) <= MAX_MESSAGE_BYTES
        assert {e["tenant_id"] for e in decoded} == {key.decode()}
        metered = METER.meter_message(value, now=NOW)
        assert not metered.dead  # the stream meters every item of every envelope
        seen += [e["event_id"] for e in decoded]
    assert sorted(seen) == sorted(e["event_id"] for e in items[:-1])


def test_envelopes_split_by_bytes_too() -> None:
    fat = [event(i, input_text="w " * 20_000) for i in range(120)]  # ~40 KB each
    for e in fat:
        e.pop("input_tokens")
    out = envelopes(check_items(fat, METER, now=NOW))
    assert len(out) > 1
    assert all(len(v) <= MAX_MESSAGE_BYTES for _, v in out)
    assert sum(len(json.loads(v)) for _, v in out) == 120


def test_answer_status_and_entries() -> None:
    good = check_items([event(1), event(2)], METER, now=NOW)
    assert answer(good)[0] == 200
    mixed = check_items([event(1), event(2, input_tokens=-1)], METER, now=NOW)
    status, body = answer(mixed)
    assert status == 207
    assert body == {"accepted": 1, "rejected": 1, "results": [
        {"index": 0, "event_id": "e-1", "status": "accepted"},
        {"index": 1, "event_id": "e-2", "status": "rejected", "reason_code": "negative_tokens",
         "detail": mixed[1].detail}]}
    assert answer(check_items([event(2, input_tokens=-1)], METER, now=NOW))[0] == 400


def test_the_gate_bounds_requests_and_bytes() -> None:
    gate = Gate(max_requests=2, max_bytes=100)
    assert gate.admit(60)
    assert not gate.admit(60)  # bytes
    assert gate.admit(40)
    assert not gate.admit(1)  # requests
    gate.release(60)
    gate.release(40)
    assert (gate.requests, gate.bytes) == (0, 0)
    assert gate.admit(500)  # one request always fits, even above the byte bound


def test_an_item_the_meter_fails_on_is_one_rejected_item() -> None:
    good = {"timestamp": NOW.isoformat(), "tenant_id": "acme", "provider": "openai",
            "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}
    items = [{**good, "event_id": "ok"}, {**good, "event_id": "poison"}]
    got = check_items(items, DefectiveMeter(METER.catalog, METER.policy), now=NOW)
    assert [(v.event_id, v.reason_code) for v in got] == [("ok", None), ("poison",
                                                                         "internal_error")]


@pytest.mark.parametrize("body", [b'{"a": "\\udfff"}', b'[{"attributes": {"\\ud800": "x"}}]'])
def test_a_lone_surrogate_is_refused_at_decoding(body: bytes) -> None:
    got = parse_body(body, "application/json")
    assert isinstance(got, Refused) and got.reason_code == "invalid_json"
