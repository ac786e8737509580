"""The router artifact: scoring, routing with a shift, JSON round trip, refusals, the default."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.core import routing as r
from pipeline.errors import RouterArtifactError, TokenmeterError

ROOT = Path(__file__).resolve().parents[3]
PROMPT = ("Find the degree for the given field extension Q(sqrt(2), sqrt(3)) over Q.\n"
          "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")


def art(threshold: float = 0.5, weights: dict[int, float] | None = None,
        bias: float = 0.0, spec: r.FeatureSpec | None = None) -> r.RouterArtifact:
    return r.build_artifact(spec or r.FeatureSpec(), weights or {}, bias, threshold,
                            {"method": "test"}, {"rows": 0})


def test_p_weak_ok_is_the_logistic_of_the_linear_score() -> None:
    spec = r.FeatureSpec()
    one = spec.dims + r.STRUCTURAL.index("bias_one")  # always 1.0
    a = art(weights={one: 2.0}, bias=-0.5)
    assert r.p_weak_ok(a, "anything") == pytest.approx(1 / (1 + math.exp(-1.5)))


def test_route_sends_low_scores_to_strong_and_the_shift_moves_toward_weak() -> None:
    a = art(threshold=0.6)  # no weights: p_weak_ok = 0.5 for every prompt
    d = r.route(a, PROMPT)
    assert (d.tier, d.p_weak_ok, d.threshold, d.router_version) == (
        "strong", 0.5, 0.6, a.router_version)
    assert r.route(a, PROMPT, threshold_shift=0.2).tier == "weak"  # threshold 0.4
    assert r.route(a, PROMPT, threshold_shift=-1.0).threshold == 1.0  # clamped
    assert r.route(a, PROMPT, threshold_shift=1.0).threshold == 0.0
    assert r.route(a, PROMPT, threshold_shift=1.0).tier == "weak"
    with pytest.raises(ValueError):
        r.route(a, PROMPT, threshold_shift=math.nan)


def test_artifact_round_trips_through_json() -> None:
    a = art(threshold=0.42, weights={3: 0.1234567891, 70: -2.0, 9: 0.0}, bias=0.25)
    assert 9 not in a.weights  # zeros dropped
    assert a.weights[3] == 0.123457  # 6 significant digits
    data = json.loads(json.dumps(r.artifact_to_dict(a)))
    b = r.load_artifact(data)
    assert b == a
    assert b.router_version.startswith("r1-")
    assert r.p_weak_ok(b, PROMPT) == r.p_weak_ok(a, PROMPT)


def test_router_version_is_a_content_hash() -> None:
    assert art(0.5).router_version == art(0.5).router_version
    assert art(0.5).router_version != art(0.6).router_version


def _dict() -> dict:
    return json.loads(json.dumps(r.artifact_to_dict(art(weights={1: 0.5}))))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
    (lambda d: d.pop("schema_version"), "schema_version None"),
    (lambda d: d.update(kind="pickle"), "not a tokenmeter router artifact"),
    (lambda d: d["model"]["weights"][0].__setitem__(1, 9.0), "does not match its content"),
    (lambda d: d.update(threshold=1.5), "threshold must be in"),
    (lambda d: d["model"].update(bias=float("nan")), "finite number"),
    (lambda d: d["model"]["weights"].append([10 ** 9, 1.0]), "is not [index"),
    (lambda d: d["model"]["weights"].append([1, 1.0]), "twice"),
    (lambda d: d["features"].update(structural=["log_chars"]), "structural"),
    (lambda d: d["features"].update(hash="python"), "crc32"),
    (lambda d: d["features"].update(hash_bits=40), "hash_bits"),
])
def test_bad_artifacts_are_refused_with_a_reason(mutate, message) -> None:
    d = _dict()
    mutate(d)
    with pytest.raises(RouterArtifactError, match=message.replace("[", r"\[")) as info:
        r.load_artifact(d)
    assert "retrain" in str(info.value)
    assert isinstance(info.value, TokenmeterError)


def test_a_non_dict_is_refused() -> None:
    with pytest.raises(RouterArtifactError):
        r.load_artifact([1, 2, 3])


def test_the_shipped_default_router_loads_and_routes() -> None:
    path = ROOT / "pipeline" / "data" / "router.json"
    a = r.load_artifact(json.loads(path.read_text()))
    assert a.training["rows"] == 7658 and len(a.training["subjects"]) == 29
    assert a.threshold_method["method"] == "target_quality"
    assert path.stat().st_size < 500_000
    assert r.route(a, PROMPT).tier in ("weak", "strong")
