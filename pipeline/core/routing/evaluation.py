"""Evaluation math: the cost-quality curve, PGR, APGR, CPT and thresholds.

Conventions: a prompt goes to the strong model when ``p_weak_ok < threshold``; the strong share
is the fraction of requests sent to the strong model (the cost axis); PGR at a strong share is
``(accuracy - weak accuracy) / (strong accuracy - weak accuracy)``, unclipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Curve:
    """Accuracy as a function of the share of strong calls, piecewise linear.

    ``shares[k]``/``accuracy[k]`` are the curve's vertices; between them the curve is the
    expected accuracy when ties in the score are broken at random.
    """

    shares: tuple[float, ...]
    accuracy: tuple[float, ...]
    thresholds: tuple[float, ...]  # threshold that yields each vertex (p < t goes strong)

    def at(self, share: float) -> float:
        """Accuracy at a strong share in [0, 1] (linear between vertices)."""
        return _interp(self.shares, self.accuracy, share)


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    for k in range(1, len(xs)):
        if x <= xs[k]:
            x0, x1 = xs[k - 1], xs[k]
            if x1 == x0:
                return ys[k]
            return ys[k - 1] + (ys[k] - ys[k - 1]) * (x - x0) / (x1 - x0)
    return ys[-1]


def _check(scores: Sequence[float], weak_ok: Sequence[bool], strong_ok: Sequence[bool]) -> int:
    n = len(scores)
    if n == 0 or len(weak_ok) != n or len(strong_ok) != n:
        raise ValueError("scores, weak_ok and strong_ok must be non-empty and of equal length")
    return n


def curve(scores: Sequence[float], weak_ok: Sequence[bool],
          strong_ok: Sequence[bool]) -> Curve:
    """The cost-quality curve of a router that sends the lowest scores to the strong model."""
    n = _check(scores, weak_ok, strong_ok)
    order = sorted(range(n), key=lambda i: scores[i])
    correct = sum(bool(w) for w in weak_ok)
    shares = [0.0]
    acc = [correct / n]
    thresholds = [min(scores)]
    k = 0
    while k < n:
        s = scores[order[k]]
        j = k
        while j < n and scores[order[j]] == s:
            i = order[j]
            correct += int(bool(strong_ok[i])) - int(bool(weak_ok[i]))
            j += 1
        k = j
        shares.append(k / n)
        acc.append(correct / n)
        # smallest threshold that sends exactly this group and all below it to strong
        thresholds.append(scores[order[k]] if k < n else math.nextafter(s, math.inf))
    return Curve(tuple(shares), tuple(acc), tuple(thresholds))


def oracle_scores(weak_ok: Sequence[bool], strong_ok: Sequence[bool]) -> list[float]:
    """Scores of the oracle: strong first where only it is right, last where only weak is."""
    return [(int(bool(w)) - int(bool(s)) + 1) / 2.0 for w, s in zip(weak_ok, strong_ok,
                                                                     strict=True)]


def random_scores(n: int) -> list[float]:
    """Scores of the random router: all tied, so the curve is its expectation (a line)."""
    return [0.5] * n


def pgr_curve(c: Curve, weak_acc: float, strong_acc: float) -> tuple[float, ...]:
    """PGR at each vertex of the curve (unclipped)."""
    gap = strong_acc - weak_acc
    if gap <= 0:
        raise ValueError(f"strong accuracy {strong_acc:.4f} is not above weak accuracy "
                         f"{weak_acc:.4f}: the gap to recover is empty")
    return tuple((a - weak_acc) / gap for a in c.accuracy)


def apgr(c: Curve, weak_acc: float, strong_acc: float) -> float:
    """Average performance gap recovered: area under PGR over strong share 0..1."""
    pgr = pgr_curve(c, weak_acc, strong_acc)
    area = 0.0
    for k in range(1, len(c.shares)):
        area += (c.shares[k] - c.shares[k - 1]) * (pgr[k] + pgr[k - 1]) / 2.0
    return area


def cpt(c: Curve, weak_acc: float, strong_acc: float, target: float) -> float:
    """Smallest strong share whose PGR reaches ``target`` (e.g. 0.5 for CPT(50%))."""
    pgr = pgr_curve(c, weak_acc, strong_acc)
    if pgr[0] >= target:
        return 0.0
    for k in range(1, len(c.shares)):
        if pgr[k] >= target:
            x0, x1 = c.shares[k - 1], c.shares[k]
            y0, y1 = pgr[k - 1], pgr[k]
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return 1.0  # pragma: no cover - pgr[-1] == 1 always reaches a target <= 1


@dataclass(frozen=True, slots=True)
class RouterMetrics:
    """APGR and CPTs of one router on one evaluation set."""

    name: str
    apgr: float
    cpt50: float
    cpt80: float
    curve: Curve

    def summary(self, points: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
                                                 0.9, 1.0)) -> dict[str, Any]:
        """A JSON-able summary: APGR, CPTs and accuracy at fixed strong shares."""
        return {"apgr": self.apgr, "cpt50": self.cpt50, "cpt80": self.cpt80,
                "accuracy_at_strong_share": {f"{p:.2f}": self.curve.at(p) for p in points}}


def metrics(name: str, scores: Sequence[float], weak_ok: Sequence[bool],
            strong_ok: Sequence[bool]) -> RouterMetrics:
    """APGR, CPT(50%), CPT(80%) and the curve of one router's scores."""
    n = _check(scores, weak_ok, strong_ok)
    weak_acc = sum(map(bool, weak_ok)) / n
    strong_acc = sum(map(bool, strong_ok)) / n
    c = curve(scores, weak_ok, strong_ok)
    return RouterMetrics(name, apgr(c, weak_acc, strong_acc),
                         cpt(c, weak_acc, strong_acc, 0.5), cpt(c, weak_acc, strong_acc, 0.8), c)


def compare(scores: Sequence[float], weak_ok: Sequence[bool],
            strong_ok: Sequence[bool]) -> dict[str, RouterMetrics]:
    """Router, random and oracle metrics on the same evaluation set, in one call."""
    n = _check(scores, weak_ok, strong_ok)
    return {"router": metrics("router", scores, weak_ok, strong_ok),
            "random": metrics("random", random_scores(n), weak_ok, strong_ok),
            "oracle": metrics("oracle", oracle_scores(weak_ok, strong_ok), weak_ok, strong_ok)}


# ---------------------------------------------------------------------------------------------
# Thresholds


def threshold_for_strong_share(scores: Sequence[float], share: float) -> float:
    """A threshold sending (at most) ``share`` of these prompts to the strong model."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"strong share must be in [0, 1], got {share}")
    ordered = sorted(scores)
    n = len(ordered)
    if n == 0:
        raise ValueError("no scores to choose a threshold from")
    k = math.floor(share * n + 1e-9)
    if k <= 0:
        return 0.0 if ordered[0] > 0.0 else ordered[0]
    if k >= n:
        return 1.0 if ordered[-1] < 1.0 else math.nextafter(1.0, math.inf)
    # strong is p < t: t = the k-th smallest score sends the k below it (ties stay weak)
    return ordered[k]


def threshold_for_quality(scores: Sequence[float], weak_ok: Sequence[bool],
                          strong_ok: Sequence[bool], quality: float) -> tuple[float, float]:
    """(threshold, strong share) of the cheapest point keeping ``quality`` x strong accuracy."""
    n = _check(scores, weak_ok, strong_ok)
    if not 0.0 < quality <= 1.5:
        raise ValueError(f"target quality must be in (0, 1.5], got {quality}")
    target = quality * sum(map(bool, strong_ok)) / n
    c = curve(scores, weak_ok, strong_ok)
    for share, acc, t in zip(c.shares, c.accuracy, c.thresholds, strict=True):
        if acc >= target - 1e-12:
            return (0.0 if share == 0.0 else t), share
    return c.thresholds[-1], 1.0  # pragma: no cover - acc[-1] is the strong accuracy


def strong_share(scores: Sequence[float], threshold: float) -> float:
    """Share of prompts the threshold sends to the strong model."""
    if not scores:
        raise ValueError("no scores")
    return sum(1 for s in scores if s < threshold) / len(scores)


def routed_accuracy(scores: Sequence[float], weak_ok: Sequence[bool],
                    strong_ok: Sequence[bool], threshold: float) -> float:
    """Accuracy when prompts with p_weak_ok < threshold go to the strong model."""
    n = _check(scores, weak_ok, strong_ok)
    return sum(bool(s_ok) if p < threshold else bool(w_ok)
               for p, w_ok, s_ok in zip(scores, weak_ok, strong_ok, strict=True)) / n


# ---------------------------------------------------------------------------------------------
# Per group (subject, file, source)


@dataclass(frozen=True, slots=True)
class GroupMetrics:
    """One group's size, accuracies and the router's APGR inside it (None: no gap to recover)."""

    group: str
    rows: int
    weak_accuracy: float
    strong_accuracy: float
    apgr: float | None


def by_group(scores: Sequence[float], weak_ok: Sequence[bool], strong_ok: Sequence[bool],
             groups: Sequence[str]) -> list[GroupMetrics]:
    """The router's APGR within each group, in group order.

    A pooled APGR rewards ranking whole groups (a hard subject before an easy one) as much as
    ranking prompts within one; this separates the two. A group where the strong model is not
    more accurate has no gap to recover and gets ``apgr=None``.
    """
    n = _check(scores, weak_ok, strong_ok)
    if len(groups) != n:
        raise ValueError("groups must be as long as the scores")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = []
    for g in sorted(members):
        idx = members[g]
        s = [scores[i] for i in idx]
        w = [bool(weak_ok[i]) for i in idx]
        st = [bool(strong_ok[i]) for i in idx]
        wa, sa = sum(w) / len(idx), sum(st) / len(idx)
        value = apgr(curve(s, w, st), wa, sa) if sa > wa else None
        out.append(GroupMetrics(g, len(idx), wa, sa, value))
    return out


def mean_group_apgr(groups: Sequence[GroupMetrics]) -> float | None:
    """Unweighted mean of the groups' APGR (groups without a gap left out); None if none."""
    values = [g.apgr for g in groups if g.apgr is not None]
    return sum(values) / len(values) if values else None
