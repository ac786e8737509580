import json
from datetime import datetime, timezone
from typing import Any

import pytest

from pipeline.core.events import MAX_MESSAGE_BYTES
from pipeline.core.validate import Rejected, decode_message, safe_raw, validate_event
from pipeline.errors import ValidationFailed

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
BASE: dict[str, Any] = {
    "event_id": "e-1", "timestamp": "2025-06-01T10:00:00+02:00", "tenant_id": "acme",
    "provider": "openai", "model": "gpt-4o", "input_tokens": 100, "output_tokens": 20,
}


def ev(**changes: Any) -> dict[str, Any]:
    out = {**BASE, **changes}
    return {k: v for k, v in out.items() if v is not ...}


def test_valid_event_normalises_to_utc() -> None:
    e = validate_event(ev(), now=NOW)
    assert e.timestamp == datetime(2025, 6, 1, 8, 0, tzinfo=timezone.utc)
    assert e.timestamp.tzinfo is not None and e.timestamp.utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    "obj, code",
    [
        (ev(event_id=...), "schema"),
        (ev(event_id=""), "schema"),
        (ev(event_id="   "), "schema"),
        (ev(tenant_id=...), "schema"),
        (ev(model=...), "schema"),
        (ev(provider=...), "schema"),
        (ev(tenant_id=5), "schema"),
        (ev(input_tokens="100"), "schema"),
        (ev(input_tokens=1.5), "schema"),
        (ev(input_tokens=True), "schema"),
        (ev(criticality="urgent"), "schema"),
        (ev(service_tier="gold"), "schema"),
        (ev(attributes={"a": 1}), "schema"),
        ([1, 2], "schema"),
        ("text", "schema"),
        (None, "schema"),
        (ev(timestamp=...), "schema"),
        (ev(timestamp="yesterday"), "invalid_timestamp"),
        (ev(timestamp="2025-06-01T10:00:00"), "invalid_timestamp"),
        (ev(timestamp=1717236000), "invalid_timestamp"),
        (ev(timestamp="2031-01-01T00:00:00Z"), "invalid_timestamp"),
        (ev(timestamp="1999-01-01T00:00:00Z"), "invalid_timestamp"),
        # no UTC instant in years 1-9999: once an OverflowError that stopped the batch
        (ev(timestamp="0001-01-01T00:00:00+14:00"), "invalid_timestamp"),
        (ev(timestamp="9999-12-31T23:30:00-01:00"), "invalid_timestamp"),
        (ev(input_tokens=-1), "negative_tokens"),
        (ev(output_tokens=-5), "negative_tokens"),
        (ev(cache_read_input_tokens=-1), "negative_tokens"),
        (ev(reasoning_output_tokens=-1), "negative_tokens"),
        (ev(cache_read_input_tokens=80, cache_creation_input_tokens=30), "inconsistent_counts"),
        (ev(reasoning_output_tokens=21), "inconsistent_counts"),
        (ev(input_tokens=None), "missing_counts"),
        (ev(input_tokens=..., output_tokens=...), "missing_counts"),
        (ev(output_tokens=None), "missing_counts"),
        (ev(input_tokens=10**12), "too_large"),
        (ev(tenant_id="x" * 300), "too_large"),
        (ev(input_text="x" * (600 * 1024), input_tokens=None), "too_large"),
        (ev(attributes={str(i): "v" for i in range(100)}), "too_large"),
    ],
)
def test_reason_codes(obj: Any, code: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_event(obj, now=NOW)
    assert info.value.reason_code == code
    assert info.value.detail  # a human-readable detail is always there


def test_otel_aliases_accepted() -> None:
    obj = {
        "event_id": "o-1", "timestamp": "2025-06-01T00:00:00Z", "tenant_id": "t",
        "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-3-haiku",
        "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cache_read.input_tokens": 3,
        "gen_ai.usage.cache_creation.input_tokens": 2,
        "gen_ai.usage.reasoning.output_tokens": 1,
    }
    e = validate_event(obj, now=NOW)
    assert (e.provider, e.model) == ("anthropic", "claude-3-haiku")
    assert (e.input_tokens, e.output_tokens) == (10, 5)
    assert (e.cache_read_input_tokens, e.cache_creation_input_tokens) == (3, 2)
    assert e.reasoning_output_tokens == 1


def test_text_instead_of_counts_is_valid() -> None:
    e = validate_event(ev(input_tokens=..., output_tokens=..., input_text="hi", output_text="yo"),
                       now=NOW)
    assert e.input_tokens is None and e.input_text == "hi"


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b'{"a": NaN}', "invalid_json"),
        (b'{"a": Infinity}', "invalid_json"),
        (b"[" * 100000 + b"]" * 100000, "invalid_json"),
        (b"[]", "schema"),
        (b'{"event_id": "a", "input_tokens": 1000, "input_tokens": 1}', "invalid_json"),
        (b'[{"a": 1, "a": 2}]', "invalid_json"),
        (json.dumps([BASE] * 1001).encode(), "too_large"),
        (b" " * (MAX_MESSAGE_BYTES + 1), "too_large"),
    ],
)
def test_decode_rejects(raw: bytes, code: str) -> None:
    out = decode_message(raw)
    assert not isinstance(out, list)
    assert out.reason_code == code


def test_decode_single_and_envelope() -> None:
    assert decode_message(json.dumps(BASE).encode()) == [BASE]
    assert decode_message(json.dumps([BASE, BASE]).encode()) == [BASE, BASE]


def test_safe_raw_removes_text_and_caps() -> None:
    rendered = safe_raw({"input_text": "secret prompt", "output_text": "secret answer", "a": 1})
    assert "secret" not in rendered
    big = safe_raw({"a": "x" * 100_000}, cap=1000)
    assert len(big) < 1100 and "truncated" in big
    assert "\x00" not in safe_raw(None, b"a\x00b")
    assert "secret" not in safe_raw(None, b'{"input_text": "secret", broken')


# --- cache writes by lifetime (issue #16): (cache_creation_input_tokens, ..._1h_...) ---
SPLIT_BASE: dict[str, Any] = {**BASE, "provider": "anthropic", "model": "claude-sonnet-4-5"}


def split(**changes: Any) -> dict[str, Any]:
    return {**SPLIT_BASE, **changes}


def anthropic(five: int | None = None, one: int | None = None) -> dict[str, int]:
    out = {}
    if five is not None:
        out["ephemeral_5m_input_tokens"] = five
    if one is not None:
        out["ephemeral_1h_input_tokens"] = one
    return out


@pytest.mark.parametrize(
    "obj, expected",
    [
        (split(), (0, 0)),
        (split(cache_creation_input_tokens=50), (50, 0)),
        (split(cache_creation_input_tokens=50, cache_creation_1h_input_tokens=20), (50, 20)),
        (split(cache_creation_input_tokens=20, cache_creation_1h_input_tokens=20), (20, 20)),
        # Anthropic's usage.cache_creation: all writes = 5m + 1h when no total is given
        (split(cache_creation=anthropic(30, 20)), (50, 20)),
        (split(cache_creation=anthropic(30, 20), cache_creation_input_tokens=50), (50, 20)),
        (split(cache_creation=anthropic(0, 0), cache_creation_input_tokens=0), (0, 0)),
        (split(cache_creation=anthropic(one=20)), (20, 20)),
        # only the 1-hour part given: the rest of the total are 5-minute writes
        (split(cache_creation=anthropic(one=20), cache_creation_input_tokens=50), (50, 20)),
        (split(cache_creation={}), (0, 0)),
        (split(cache_creation=None, cache_creation_input_tokens=5), (5, 0)),
        # the explicit 5-minute count: total = 5m + 1h
        (split(cache_creation_5m_input_tokens=30, cache_creation_1h_input_tokens=20), (50, 20)),
        (split(cache_creation_5m_input_tokens=30), (30, 0)),
        (split(cache_creation_5m_input_tokens=30, cache_creation_input_tokens=30), (30, 0)),
        # the same lifetime given flat and nested, agreeing
        (split(cache_creation=anthropic(30, 20), cache_creation_1h_input_tokens=20,
               cache_creation_5m_input_tokens=30), (50, 20)),
        # OTel names (the ephemeral_* ones are not standard, see validate.OTEL_ALIASES)
        (split(**{"gen_ai.usage.cache_creation.input_tokens": 50,
                  "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": 20}), (50, 20)),
        (split(**{"gen_ai.usage.cache_creation.ephemeral_5m_input_tokens": 30,
                  "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": 20}), (50, 20)),
        # legacy attribute without a split: validated as sent, resolved by the meter
        (split(cache_creation_input_tokens=50, attributes={"cache_ttl": "1h"}), (50, 0)),
        (split(cache_creation_input_tokens=50, cache_creation_1h_input_tokens=50,
               attributes={"cache_ttl": "1h"}), (50, 50)),
        # an empty or null split is no split: the legacy attribute still decides
        (split(cache_creation_input_tokens=50, cache_creation=None,
               attributes={"cache_ttl": "1h"}), (50, 0)),
        (split(cache_creation_input_tokens=50, cache_creation={},
               attributes={"cache_ttl": "1h"}), (50, 0)),
    ],
)
def test_cache_write_shapes_accepted(obj: dict[str, Any], expected: tuple[int, int]) -> None:
    e = validate_event(obj, now=NOW)
    assert (e.cache_creation_input_tokens, e.cache_creation_1h_input_tokens) == expected


@pytest.mark.parametrize(
    "obj, code",
    [
        (split(cache_creation_input_tokens=50, cache_creation_1h_input_tokens=51),
         "inconsistent_counts"),
        (split(cache_creation_1h_input_tokens=20), "inconsistent_counts"),  # total 0 < 20
        (split(cache_creation=anthropic(30, 20), cache_creation_input_tokens=40),
         "inconsistent_counts"),
        (split(cache_creation=anthropic(30, 20), cache_creation_input_tokens=60),
         "inconsistent_counts"),
        (split(cache_creation=anthropic(one=60), cache_creation_input_tokens=50),
         "inconsistent_counts"),
        (split(cache_creation_5m_input_tokens=30, cache_creation_input_tokens=40),
         "inconsistent_counts"),
        (split(cache_creation=anthropic(one=20), cache_creation_1h_input_tokens=25),
         "inconsistent_counts"),
        (split(cache_creation=anthropic(five=30), cache_creation_5m_input_tokens=31),
         "inconsistent_counts"),
        (split(**{"gen_ai.usage.cache_creation.input_tokens": 40,
                  "gen_ai.usage.cache_creation.ephemeral_5m_input_tokens": 30,
                  "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": 20}),
         "inconsistent_counts"),
        # the split is inside input_tokens like every cached token
        (split(cache_creation=anthropic(80, 30)), "inconsistent_counts"),
        # legacy "all 1-hour" contradicted by an explicit split without 1-hour writes
        (split(cache_creation_5m_input_tokens=30, attributes={"cache_ttl": "1h"}),
         "inconsistent_counts"),
        (split(cache_creation=anthropic(30, 0), attributes={"cache_ttl": "1h"}),
         "inconsistent_counts"),
        (split(cache_creation_input_tokens=30, cache_creation_1h_input_tokens=0,
               attributes={"cache_ttl": "1h"}), "inconsistent_counts"),
        # a lifetime tokenmeter cannot price must not vanish from the bill
        (split(cache_creation={"ephemeral_30m_input_tokens": 5}), "schema"),
        (split(cache_creation=5), "schema"),
        (split(cache_creation=[5]), "schema"),
        (split(cache_creation=anthropic(one="20")), "schema"),
        (split(cache_creation=anthropic(one=True)), "schema"),
        (split(cache_creation_5m_input_tokens=1.5), "schema"),
        (split(cache_creation_1h_input_tokens="3"), "schema"),
        (split(cache_creation=anthropic(one=-1)), "negative_tokens"),
        (split(cache_creation_5m_input_tokens=-1), "negative_tokens"),
        (split(cache_creation_1h_input_tokens=-1, cache_creation_input_tokens=5),
         "negative_tokens"),
        (split(cache_creation=anthropic(five=10**12)), "too_large"),
        (split(cache_creation_1h_input_tokens=10**12), "too_large"),
    ],
)
def test_cache_write_shapes_refused(obj: dict[str, Any], code: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_event(obj, now=NOW)
    assert info.value.reason_code == code
    assert info.value.detail


@pytest.mark.parametrize("raw", [
    b'{"event_id": "\\ud800"}',                  # a lone high surrogate
    b'{"attributes": {"\\udfff": "x"}}',          # in a key, which no field constrains
    b'[{"a": "\\uDC00 and more"}]',
    '{"a": "\udfff"}',                           # a str holding one
])
def test_a_lone_surrogate_is_invalid_json(raw: bytes | str) -> None:
    got = decode_message(raw)
    assert isinstance(got, Rejected) and got.reason_code == "invalid_json", got


def test_a_surrogate_pair_is_text() -> None:
    assert decode_message(b'{"a": "\\ud83d\\ude00"}') == [{"a": "\U0001F600"}]


def test_a_dead_letter_escapes_what_utf8_cannot_carry() -> None:
    assert safe_raw(None, '{"a": "\udfff"}') == '{"a": "\\udfff"}'


def test_attribute_keys_are_bounded() -> None:
    with pytest.raises(ValidationFailed) as exc:
        validate_event({**ev(), "attributes": {"k" * 257: "v"}}, now=NOW)
    assert exc.value.reason_code == "too_large"
    assert validate_event({**ev(), "attributes": {"k" * 256: "v"}}, now=NOW)
