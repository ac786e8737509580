"""Hostile input never breaks metering: every message becomes priced events or dead letters."""

import json
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.core.validate import REASON_CODES

METER = Meter(load_catalog(), load_policy())
NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)
VALID = {"event_id": "e", "timestamp": "2025-06-01T00:00:00Z", "tenant_id": "t",
         "provider": "openai", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 5}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
mutations = st.fixed_dictionaries({}, optional={
    k: json_values | st.integers(min_value=-10**15, max_value=10**15) | st.text()
    for k in [*VALID, "cache_read_input_tokens", "cache_creation_input_tokens",
              "reasoning_output_tokens", "input_text", "output_text", "attributes",
              "criticality", "service_tier", "cache_hit", "gen_ai.usage.input_tokens"]
})


def check(raw: bytes) -> None:
    out = METER.meter_message(raw, now=NOW)
    assert out.priced or out.dead
    for d in out.dead:
        assert d.reason_code in REASON_CODES, d.reason_code
        assert d.detail
        assert "\x00" not in d.raw
    for p in out.priced:
        assert p.total_cost >= 0


@settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    check(raw)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(json_values)
def test_arbitrary_json(value) -> None:
    check(json.dumps(value).encode())


@settings(max_examples=3500, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutations, st.booleans())
def test_mutated_events_and_envelopes(change: dict, envelope: bool) -> None:
    event = {**VALID, **change}
    raw = json.dumps([event, VALID] if envelope else event).encode()
    out = METER.meter_message(raw, now=NOW)
    assert len(out.priced) + len(out.dead) == (2 if envelope else 1)
    if envelope:  # the valid neighbour is always priced, whatever its sibling is
        assert any(p.event_id == "e" and p.model == "gpt-4o" for p in out.priced)
    check(raw)


def test_specific_hostile_payloads() -> None:
    for raw in [b"\x00" * 10, b'{"a": NaN}', b'{"event_id": "\\u0000"}', b"[" * 5000,
                b'{"event_id": "a", "event_id": "b"}', "\ud83d".encode("utf-8", "surrogatepass"),
                json.dumps({**VALID, "tenant_id": "\u202etenant\u0000"}).encode(),
                json.dumps({**VALID, "input_tokens": 10**30}).encode(),
                json.dumps({**VALID, "timestamp": "9999-12-31T23:59:59Z"}).encode(),
                json.dumps({**VALID, "timestamp": "0001-01-01T00:00:00Z"}).encode()]:
        check(raw)
