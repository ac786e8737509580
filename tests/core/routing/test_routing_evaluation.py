"""Evaluation math by hand: curve vertices, APGR, CPT, random and oracle, thresholds."""

from __future__ import annotations

import pytest

from pipeline.core import routing as r

# hand-made evaluation set: weak right on rows 1 and 3, strong on 0, 1 and 2
SCORES = [0.1, 0.2, 0.3, 0.4]
WEAK = [False, True, False, True]
STRONG = [True, True, True, False]


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


def test_apgr_by_group_by_hand() -> None:
    # a: the only-strong-right row ranked first (APGR 0.75); b: strong no better (None);
    # c: the same rows ranked the wrong way round (APGR 0.25)
    scores = [0.1, 0.9, 0.5, 0.5, 0.9, 0.1]
    weak = [False, True, True, True, False, True]
    strong = [True, True, True, False, True, True]
    groups = ["a", "a", "b", "b", "c", "c"]
    got = r.by_group(scores, weak, strong, groups)
    assert [(g.group, g.rows, g.weak_accuracy, g.strong_accuracy) for g in got] == [
        ("a", 2, 0.5, 1.0), ("b", 2, 1.0, 0.5), ("c", 2, 0.5, 1.0)]
    assert [g.apgr for g in got] == [pytest.approx(0.75), None, pytest.approx(0.25)]
    assert r.mean_group_apgr(got) == pytest.approx(0.5)
    assert r.mean_group_apgr([got[1]]) is None
    with pytest.raises(ValueError):
        r.by_group(scores, weak, strong, groups[:-1])
