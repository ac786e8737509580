"""Outcome messages: what validates, and the stable reason code of everything that does not."""

from __future__ import annotations

import json
from datetime import timedelta, timezone
from typing import Any

import pytest

from pipeline.core.outcomes import (
    OUTCOME_REASON_CODES,
    Feedback,
    Origin,
    outcome_row,
    sort_messages,
    validate_outcome,
)
from pipeline.errors import ValidationFailed
from tests.helpers import NOW

# two hours before the pinned now, written with a +02:00 offset
STAMP = (NOW - timedelta(hours=2)).astimezone(timezone(timedelta(hours=2)))
GOOD: dict[str, Any] = {"event_id": "e1", "tenant_id": "acme",
                        "timestamp": STAMP.isoformat(), "success": True}


def test_a_minimal_outcome_validates_with_defaults() -> None:
    o = validate_outcome(GOOD, now=NOW)
    assert o.success is True and o.score is None and o.feedback is None
    assert o.source == "producer" and o.timestamp.utcoffset() is not None
    assert o.timestamp == STAMP and o.timestamp.utcoffset() == timedelta(0)  # in UTC


def test_every_signal_together() -> None:
    o = validate_outcome({**GOOD, "success": False, "score": 0, "feedback": "negative",
                          "source": "grader:v2"}, now=NOW)
    assert (o.success, o.score, o.feedback, o.source) == (False, 0.0, Feedback.negative,
                                                          "grader:v2")
    assert outcome_row(o, NOW)[4:7] == [False, 0.0, "negative"]


@pytest.mark.parametrize(("change", "reason"), [
    ({"success": None}, "no_signal"),
    ({"success": None, "score": None, "feedback": None}, "no_signal"),
    ({"score": 1.5}, "out_of_range"),
    ({"score": -0.01}, "out_of_range"),
    ({"score": 1e400}, "out_of_range"),  # json reads it as infinity
    ({"score": True}, "schema"),
    ({"score": "0.5"}, "schema"),
    ({"success": "yes"}, "schema"),
    ({"success": 1}, "schema"),
    ({"feedback": "great"}, "schema"),
    ({"source": "has space"}, "schema"),
    ({"source": "x" * 65}, "too_large"),
    ({"event_id": "x" * 257}, "too_large"),
    ({"event_id": ""}, "schema"),
    ({"prompt": "never stored"}, "schema"),
    ({"timestamp": STAMP.replace(tzinfo=None).isoformat()}, "invalid_timestamp"),
    ({"timestamp": 1718000000}, "invalid_timestamp"),
    ({"timestamp": "2019-12-31T23:59:59Z"}, "invalid_timestamp"),
    # no UTC instant in years 1-9999 (an OverflowError once: the whole batch failed)
    ({"timestamp": "0001-01-01T00:00:00+01:00"}, "invalid_timestamp"),
    ({"timestamp": "9999-12-31T23:30:00-01:00"}, "invalid_timestamp"),
    ({"timestamp": (NOW + timedelta(days=1, minutes=1)).isoformat()}, "invalid_timestamp"),
])
def test_refusals_have_stable_reasons(change: dict[str, Any], reason: str) -> None:
    obj = {**GOOD, **change}
    with pytest.raises(ValidationFailed) as exc:
        validate_outcome(obj, now=NOW)
    assert exc.value.reason_code == reason and reason in OUTCOME_REASON_CODES


@pytest.mark.parametrize("missing", ["event_id", "tenant_id", "timestamp"])
def test_required_fields(missing: str) -> None:
    obj = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(ValidationFailed) as exc:
        validate_outcome(obj, now=NOW)
    assert exc.value.reason_code == "schema" and missing in exc.value.detail


def test_sort_messages_splits_good_from_dead_letters() -> None:
    where = Origin("outcomes", 3, 17)
    batch = [
        (json.dumps([GOOD, {**GOOD, "success": None}]).encode(), where),
        (b"{not json", Origin("outcomes", 3, 18)),
        (json.dumps({**GOOD, "event_id": "e2"}).encode(), Origin("outcomes", 3, 19)),
        (b"[]", Origin("outcomes", 3, 20)),
    ]
    out = sort_messages(batch, NOW)
    assert [o.event_id for o in out.outcomes] == ["e1", "e2"]
    reasons = [(d.reason_code, d.source_offset, index) for d, index in out.dead]
    assert reasons == [("no_signal", 17, 1), ("invalid_json", 18, 0), ("schema", 20, 0)]
    first = out.dead[0][0]
    assert first.event_id == "e1" and first.tenant_id == "acme"
    assert first.source_topic == "outcomes" and first.received_at == NOW


def test_dead_letters_keep_no_free_text() -> None:
    where = Origin("outcomes", 0, 1)
    secret = "CUSTOMER SSN 123-45-6789"
    batch = [(json.dumps({**GOOD, "prompt": secret, "feedback": secret * 20}).encode(), where),
             (json.dumps([secret]).encode(), where),
             (f"{{not json {secret}".encode(), where)]
    dead = [d for d, _ in sort_messages(batch, NOW).dead]
    assert [d.reason_code for d in dead] == ["schema", "schema", "invalid_json"]
    kept = json.loads(dead[0].raw)
    assert kept["prompt"] == "<removed>" and kept["event_id"] == GOOD["event_id"]
    assert len(kept["feedback"]) == 256  # a known field, capped at an id's length
    assert "123-45-6789" not in dead[1].raw and "123-45-6789" not in dead[2].raw


def test_an_item_validation_fails_on_is_set_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.core.outcomes as outcomes

    real = outcomes.validate_outcome

    def flaky(obj: Any, *, now: Any) -> Any:
        if obj.get("event_id") == "poison":
            raise RuntimeError("boom")
        return real(obj, now=now)

    monkeypatch.setattr(outcomes, "validate_outcome", flaky)
    batch = [(json.dumps([GOOD, {**GOOD, "event_id": "poison"}]).encode(), Origin("o", 0, 1))]
    out = sort_messages(batch, NOW)
    assert [o.event_id for o in out.outcomes] == ["e1"]
    assert [(d.reason_code, d.event_id) for d, _ in out.dead] == [("internal_error", "poison")]


def test_known_fields_keep_only_scalars_in_dead_letters() -> None:
    where = Origin("outcomes", 0, 1)
    bad = {**GOOD, "feedback": {"prompt": "SECRET"}, "score": ["SECRET"]}
    (dead, _), = sort_messages([(json.dumps(bad).encode(), where)], NOW).dead
    kept = json.loads(dead.raw)
    assert kept["feedback"] == kept["score"] == "<removed>" and "SECRET" not in dead.raw
    assert kept["event_id"] == GOOD["event_id"] and kept["success"] == GOOD["success"]
