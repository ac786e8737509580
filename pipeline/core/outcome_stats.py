"""Statistics of route variants: success rates, mean scores, cost, and their differences (pure).

Numbers in, figures out: the CLI's SQL sums each variant up (requests, cost, judged calls,
successes, score count, mean and sample variance) and this module turns the sums into
intervals. Success rates get Wilson score intervals and their difference Newcombe's hybrid
score interval (both statsmodels); mean scores get Student t intervals and their difference
Welch's t interval (unequal variances, Welch-Satterthwaite degrees of freedom).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pipeline.errors import ConfigError

PER = Decimal(1000)
COST_PLACES = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class VariantTotals:
    """What SQL sums up for one variant (one group of routed calls)."""

    name: str
    requests: int
    cost: Decimal
    judged: int = 0  # calls whose outcome says success or failure
    successes: int = 0
    scored: int = 0  # calls with a score
    score_mean: float | None = None
    score_var: float | None = None  # sample variance (n - 1), None below 2 scores


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate and its confidence interval (bounds None when it is undefined)."""

    estimate: float
    low: float | None
    high: float | None

    def as_dict(self, places: int = 6) -> dict[str, float | None]:
        """Rounded for reports."""
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, places)
        return {"estimate": r(self.estimate), "low": r(self.low), "high": r(self.high)}


@dataclass(frozen=True, slots=True)
class VariantFigures:
    """One variant's figures: counts, cost per 1,000 requests, rate and score intervals."""

    name: str
    requests: int
    cost_per_1k: Decimal
    judged: int
    success_rate: Interval | None
    scored: int
    mean_score: Interval | None


@dataclass(frozen=True, slots=True)
class Difference:
    """Variant ``a`` minus variant ``b``: success rate, mean score, cost per 1,000."""

    a: str
    b: str
    success_rate: Interval | None
    mean_score: Interval | None
    cost_per_1k: Decimal


def cost_per_1k(cost: Decimal, requests: int) -> Decimal:
    """Cost per 1,000 requests, exact to 6 decimals (0 without requests)."""
    if requests <= 0:
        return Decimal(0).quantize(COST_PLACES)
    return (cost * PER / requests).quantize(COST_PLACES)


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval | None:
    """The success rate with its Wilson score interval; None without judged calls."""
    if n <= 0:
        return None
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return Interval(successes / n, float(low), float(high))


def _t_quantile(confidence: float, df: float) -> float:
    from scipy import stats  # type: ignore[import-untyped]  # statsmodels' own dependency

    return float(stats.t.ppf(0.5 + confidence / 2, df))


def mean_interval(n: int, mean: float | None, var: float | None,
                  confidence: float = 0.95) -> Interval | None:
    """The mean with its Student t interval (n - 1 degrees of freedom); no bounds below n=2."""
    if n <= 0 or mean is None:
        return None
    if n < 2 or var is None:
        return Interval(mean, None, None)
    half = _t_quantile(confidence, n - 1) * math.sqrt(max(var, 0.0) / n)
    return Interval(mean, mean - half, mean + half)


def rate_difference(a: VariantTotals, b: VariantTotals,
                    confidence: float = 0.95) -> Interval | None:
    """Success rate of a minus b with Newcombe's hybrid score (Wilson) interval."""
    if a.judged <= 0 or b.judged <= 0:
        return None
    from statsmodels.stats.proportion import confint_proportions_2indep

    low, high = confint_proportions_2indep(a.successes, a.judged, b.successes, b.judged,
                                           method="newcomb", compare="diff",
                                           alpha=1 - confidence)
    return Interval(a.successes / a.judged - b.successes / b.judged, float(low), float(high))


def mean_difference(a: VariantTotals, b: VariantTotals,
                    confidence: float = 0.95) -> Interval | None:
    """Mean score of a minus b with Welch's t interval; no bounds below 2 scores a side."""
    if a.scored <= 0 or b.scored <= 0 or a.score_mean is None or b.score_mean is None:
        return None
    diff = a.score_mean - b.score_mean
    if a.scored < 2 or b.scored < 2 or a.score_var is None or b.score_var is None:
        return Interval(diff, None, None)
    va, vb = max(a.score_var, 0.0) / a.scored, max(b.score_var, 0.0) / b.scored
    se2 = va + vb
    if se2 == 0.0:  # every score equal on both sides: no spread to be uncertain about
        return Interval(diff, diff, diff)
    df = se2 ** 2 / (va ** 2 / (a.scored - 1) + vb ** 2 / (b.scored - 1))
    half = _t_quantile(confidence, df) * math.sqrt(se2)
    return Interval(diff, diff - half, diff + half)


def figures(t: VariantTotals, confidence: float = 0.95) -> VariantFigures:
    """One variant's figures from its totals."""
    return VariantFigures(t.name, t.requests, cost_per_1k(t.cost, t.requests), t.judged,
                          wilson(t.successes, t.judged, confidence), t.scored,
                          mean_interval(t.scored, t.score_mean, t.score_var, confidence))


def difference(a: VariantTotals, b: VariantTotals, confidence: float = 0.95) -> Difference:
    """Variant a minus variant b."""
    return Difference(a.name, b.name, rate_difference(a, b, confidence),
                      mean_difference(a, b, confidence),
                      cost_per_1k(a.cost, a.requests) - cost_per_1k(b.cost, b.requests))


def _interval(i: Interval | None) -> dict[str, float | None] | None:
    return None if i is None else i.as_dict()


def report(totals: Sequence[VariantTotals], pairs: Sequence[tuple[str, str]],
           confidence: float = 0.95) -> dict[str, Any]:
    """The compare report as plain data: every variant's figures and the asked differences."""
    by_name = {t.name: t for t in totals}
    missing = sorted({n for pair in pairs for n in pair} - set(by_name))
    if missing:
        raise ConfigError(f"no routed calls for variant(s) {', '.join(missing)}; the "
                          f"variants are: {', '.join(sorted(by_name)) or 'none'}")
    variants = []
    for t in totals:
        f = figures(t, confidence)
        variants.append({"variant": f.name, "requests": f.requests,
                         "cost_per_1k": str(f.cost_per_1k), "judged": f.judged,
                         "success_rate": _interval(f.success_rate), "scored": f.scored,
                         "mean_score": _interval(f.mean_score)})
    diffs = []
    for a, b in pairs:
        d = difference(by_name[a], by_name[b], confidence)
        diffs.append({"a": d.a, "b": d.b, "success_rate": _interval(d.success_rate),
                      "mean_score": _interval(d.mean_score),
                      "cost_per_1k": str(d.cost_per_1k)})
    return {"confidence": confidence, "variants": variants, "differences": diffs}
