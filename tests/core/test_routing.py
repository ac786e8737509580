"""The router's pure core: features, scoring, routing, thresholds, APGR/CPT math, artifacts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from pipeline.core import routing as r
from pipeline.errors import RouterArtifactError, TokenmeterError

ROOT = Path(__file__).resolve().parents[2]
PROMPT = ("Find the degree for the given field extension Q(sqrt(2), sqrt(3)) over Q.\n"
          "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")

# hand-made evaluation set: weak right on rows 1 and 3, strong on 0, 1 and 2
SCORES = [0.1, 0.2, 0.3, 0.4]
WEAK = [False, True, False, True]
STRONG = [True, True, True, False]


def art(threshold: float = 0.5, weights: dict[int, float] | None = None,
        bias: float = 0.0, spec: r.FeatureSpec | None = None) -> r.RouterArtifact:
    return r.build_artifact(spec or r.FeatureSpec(), weights or {}, bias, threshold,
                            {"method": "test"}, {"rows": 0})


# --- features -----------------------------------------------------------------------------


def test_features_use_crc32_buckets_not_pythons_salted_hash() -> None:
    spec = r.FeatureSpec(hash_bits=10, word_ngrams=(1, 1), char_ngrams=(0, 0))
    feats = r.featurize(spec, "hello")
    h = zlib.crc32(b"w:hello")
    assert h % 1024 in feats
    # one unigram: unit length times the word weight
    assert feats[h % 1024] == pytest.approx(spec.word_weight)


def test_features_are_identical_in_processes_with_different_hash_seeds() -> None:
    code = ("import json,sys; from pipeline.core import routing as r; "
            "s=r.FeatureSpec(char_ngrams=(3, 4)); "
            "print(json.dumps(sorted(r.featurize(s, sys.argv[1]).items())))")
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", code, PROMPT], capture_output=True,
                              text=True, env=env, cwd=ROOT, check=True)
        outs.append(json.loads(done.stdout))
    here = [list(p) for p in sorted(r.featurize(r.FeatureSpec(char_ngrams=(3, 4)),
                                                PROMPT).items())]
    assert outs[0] == outs[1] == here


def test_structural_features_see_options_math_and_questions() -> None:
    feats = dict(zip(r.STRUCTURAL, r.structural_features(PROMPT), strict=True))
    assert feats["option_lines"] == 1.0  # four option lines, capped scale /4
    assert feats["compute_words"] > 0  # "find"
    assert feats["digit_share"] > 0
    plain = dict(zip(r.STRUCTURAL, r.structural_features("tell me a story"), strict=True))
    assert plain["option_lines"] == plain["digit_share"] == plain["compute_words"] == 0.0


def test_char_ngrams_add_features_only_when_enabled() -> None:
    words = r.featurize(r.FeatureSpec(char_ngrams=(0, 0)), "photosynthesis")
    both = r.featurize(r.FeatureSpec(char_ngrams=(3, 5)), "photosynthesis")
    assert len(both) > len(words)


def test_empty_text_has_only_structural_features() -> None:
    spec = r.FeatureSpec()
    feats = r.featurize(spec, "")
    assert all(i >= spec.dims for i in feats)


# --- scoring and routing ------------------------------------------------------------------


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


def test_sigmoid_is_stable_at_extremes() -> None:
    assert r.sigmoid(1000.0) == 1.0
    assert r.sigmoid(-1000.0) == 0.0
    assert r.sigmoid(0.0) == 0.5


# --- evaluation math, hand-computed -------------------------------------------------------


def test_curve_vertices_by_hand() -> None:
    c = r.curve(SCORES, WEAK, STRONG)
    assert c.shares == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert c.accuracy == (0.5, 0.75, 0.75, 1.0, 0.75)
    assert c.at(0.125) == pytest.approx(0.625)


def test_apgr_and_cpt_of_a_router_by_hand() -> None:
    m = r.metrics("router", SCORES, WEAK, STRONG)
    # PGR at the vertices: 0, 1, 1, 2, 1 (gap 0.25); trapezoids of width 0.25
    assert m.apgr == pytest.approx(0.125 + 0.25 + 0.375 + 0.375)
    assert m.cpt50 == pytest.approx(0.125)
    assert m.cpt80 == pytest.approx(0.2)


def test_random_router_is_the_straight_line() -> None:
    m = r.compare(SCORES, WEAK, STRONG)["random"]
    assert (m.apgr, m.cpt50, m.cpt80) == pytest.approx((0.5, 0.5, 0.8))


def test_oracle_goes_strong_first_where_only_strong_is_right() -> None:
    assert r.oracle_scores(WEAK, STRONG) == [0.0, 0.5, 0.0, 1.0]
    m = r.compare(SCORES, WEAK, STRONG)["oracle"]
    # vertices (0, 0), (0.5, 2), (0.75, 2), (1, 1) in PGR
    assert m.apgr == pytest.approx(0.5 + 0.5 + 0.375)
    assert m.cpt50 == pytest.approx(0.125)
    assert m.cpt80 == pytest.approx(0.2)


def test_ties_are_broken_in_expectation() -> None:
    c = r.curve([0.3, 0.3], [False, True], [True, True])
    assert c.shares == (0.0, 1.0)
    assert c.at(0.5) == pytest.approx(0.75)


def test_no_gap_to_recover_is_refused() -> None:
    with pytest.raises(ValueError, match="gap"):
        r.metrics("router", [0.1, 0.2], [True, True], [True, False])


# --- thresholds ---------------------------------------------------------------------------


def test_threshold_for_a_strong_share() -> None:
    t = r.threshold_for_strong_share(SCORES, 0.5)
    assert t == 0.3
    assert r.strong_share(SCORES, t) == 0.5
    assert r.strong_share(SCORES, r.threshold_for_strong_share(SCORES, 0.0)) == 0.0
    assert r.strong_share(SCORES, r.threshold_for_strong_share(SCORES, 1.0)) == 1.0


def test_threshold_for_a_quality_target() -> None:
    # 100% of strong accuracy (0.75) is first reached by sending row 0 alone
    t, share = r.threshold_for_quality(SCORES, WEAK, STRONG, 1.0)
    assert (t, share) == (0.2, 0.25)
    assert r.routed_accuracy(SCORES, WEAK, STRONG, t) == 0.75
    # 120% (0.9) needs rows 0-2 strong
    t, share = r.threshold_for_quality(SCORES, WEAK, STRONG, 1.2)
    assert (t, share) == (0.4, 0.75)
    assert r.routed_accuracy(SCORES, WEAK, STRONG, t) == 1.0
    # a target the weak model already meets sends nothing to strong
    t, share = r.threshold_for_quality(SCORES, WEAK, STRONG, 0.5)
    assert share == 0.0 and r.strong_share(SCORES, t) == 0.0


# --- artifacts ----------------------------------------------------------------------------


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


def test_a_very_long_prompt_is_read_through_a_window_but_sized_whole() -> None:
    spec = r.FeatureSpec(max_tokens=16)  # window once the text exceeds 96 characters
    long = "word " * 400 + "\nWhich option is correct?\nA. x\nB. y"
    feats = r.featurize(spec, long)
    log_chars = spec.dims + r.STRUCTURAL.index("log_chars")
    assert feats[log_chars] == pytest.approx(math.log1p(len(long)) / 8.0)
    # the question at the end still counts: its option lines are inside the window
    options = spec.dims + r.STRUCTURAL.index("option_lines")
    assert feats[options] == pytest.approx(0.5)


def test_the_shipped_default_router_loads_and_routes() -> None:
    path = ROOT / "pipeline" / "data" / "router.json"
    a = r.load_artifact(json.loads(path.read_text()))
    assert a.training["rows"] == 7658 and len(a.training["subjects"]) == 29
    assert a.threshold_method["method"] == "target_quality"
    assert path.stat().st_size < 500_000
    assert r.route(a, PROMPT).tier in ("weak", "strong")
