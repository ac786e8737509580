"""Route-variant statistics against values computed by hand (and by an independent routine)."""

from __future__ import annotations

import statistics
from decimal import Decimal

import pytest

from pipeline.core import outcome_stats as s
from pipeline.errors import ConfigError


def totals(name: str, scores: list[float] | None = None, **kw: object) -> s.VariantTotals:
    scores = scores or []
    return s.VariantTotals(
        name=name, requests=int(kw.pop("requests", 50)),  # type: ignore[call-overload]
        cost=Decimal(str(kw.pop("cost", "1"))), scored=len(scores),
        score_mean=statistics.fmean(scores) if scores else None,
        score_var=statistics.variance(scores) if len(scores) > 1 else None,
        **kw)  # type: ignore[arg-type]


def test_wilson_interval_of_45_out_of_50() -> None:
    # by hand: p = 0.9, z = 1.959964, z^2 = 3.841459, n = 50
    # denominator 1 + z^2/n = 1.0768292; centre (0.9 + z^2/(2n)) / 1.0768292 = 0.871461
    # half-width z * sqrt(p(1-p)/n + z^2/(4n^2)) / 1.0768292 = 1.959964 * 0.0467349 / 1.0768292
    #            = 0.085063  ->  (0.786398, 0.956524)
    i = s.wilson(45, 50)
    assert i is not None and i.estimate == 0.9
    assert i.low == pytest.approx(0.786398, abs=1e-6)
    assert i.high == pytest.approx(0.956524, abs=1e-6)


def test_wilson_without_judged_calls_is_none_and_all_successes_stay_below_one() -> None:
    assert s.wilson(0, 0) is None
    i = s.wilson(10, 10)
    assert i is not None and i.high == pytest.approx(1.0) and i.low < 1.0


def test_t_interval_of_four_scores() -> None:
    # scores 0.2, 0.4, 0.6, 0.8: mean 0.5, sample variance 0.2/3 = 0.0666667, se = 0.1290994
    # t(0.975, 3 df) = 3.182446 (table): half-width 3.182446 x 0.1290994 = 0.410852
    #   -> (0.089148, 0.910852)
    i = s.mean_interval(4, 0.5, 0.2 / 3)
    assert i is not None
    assert i.low == pytest.approx(0.089148, abs=1e-6)
    assert i.high == pytest.approx(0.910852, abs=1e-6)


def test_one_score_has_a_mean_but_no_interval() -> None:
    assert s.mean_interval(1, 0.7, None) == s.Interval(0.7, None, None)
    assert s.mean_interval(0, None, None) is None


def test_newcombe_difference_of_45_50_and_30_50() -> None:
    # Wilson 45/50 = (0.786398, 0.956524) (above); 30/50: centre 0.592865, half 0.131051
    # -> (0.461814, 0.723916). Newcombe: d = 0.3,
    # low  = d - sqrt((0.9 - 0.786398)^2 + (0.723916 - 0.6)^2)
    #      = 0.3 - sqrt(0.0129055 + 0.0153552) = 0.3 - 0.1681092 = 0.131891
    # high = d + sqrt((0.956524 - 0.9)^2 + (0.6 - 0.461814)^2)
    #      = 0.3 + sqrt(0.0031950 + 0.0190953) = 0.3 + 0.1492993 = 0.449299
    a = totals("a", judged=50, successes=45)
    b = totals("b", judged=50, successes=30)
    d = s.rate_difference(a, b)
    assert d is not None and d.estimate == pytest.approx(0.3)
    assert d.low == pytest.approx(0.131891, abs=1e-6)
    assert d.high == pytest.approx(0.449299, abs=1e-6)
    assert s.rate_difference(a, totals("c")) is None


def test_welch_difference_matches_an_independent_routine() -> None:
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    xa, xb = [0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.35]
    d = s.mean_difference(totals("a", xa), totals("b", xb))
    low, high = CompareMeans(DescrStatsW(xa), DescrStatsW(xb)).tconfint_diff(usevar="unequal")
    assert d is not None and d.estimate == pytest.approx(0.5 - 0.25)
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))


def test_welch_edge_cases() -> None:
    same = totals("a", [0.5, 0.5])
    assert s.mean_difference(same, totals("b", [0.5, 0.5])) == s.Interval(0.0, 0.0, 0.0)
    assert s.mean_difference(same, totals("b", [0.1])) == s.Interval(0.4, None, None)
    assert s.mean_difference(same, totals("b")) is None


def test_cost_per_1000_requests_is_exact() -> None:
    assert s.cost_per_1k(Decimal("0.0123456789"), 7) == Decimal("1.763668")
    assert s.cost_per_1k(Decimal("2.5"), 1000) == Decimal("2.500000")
    assert s.cost_per_1k(Decimal("1"), 0) == Decimal("0")


def test_report_names_variants_and_differences() -> None:
    a = totals("r1/weak", [0.2, 0.4, 0.6, 0.8], requests=50, cost="0.5", judged=50,
               successes=45)
    b = totals("r1/strong", requests=40, cost="4", judged=50, successes=30)
    out = s.report([a, b], [("r1/weak", "r1/strong")])
    first = out["variants"][0]
    assert first["requests"] == 50 and first["cost_per_1k"] == "10.000000"
    assert first["success_rate"] == {"estimate": 0.9, "low": 0.786398, "high": 0.956524}
    assert out["variants"][1]["mean_score"] is None
    diff = out["differences"][0]
    assert diff["cost_per_1k"] == "-90.000000" and diff["mean_score"] is None
    assert diff["success_rate"]["low"] == pytest.approx(0.131891, abs=1e-6)
    with pytest.raises(ConfigError, match="no routed calls for variant"):
        s.report([a], [("r1/weak", "nope")])
