"""The bursty arrival process of the burst benchmark: deterministic, shaped as specified."""

from __future__ import annotations

import statistics
from collections import Counter

from pipeline.benchmark.burst import (
    Profile,
    arrivals,
    assign_tenants,
    steady,
    tenant_weights,
)


def test_same_seed_same_arrivals_and_tenants() -> None:
    p = Profile()
    assert arrivals(p, 7) == arrivals(p, 7)
    assert arrivals(p, 7) != arrivals(p, 8)
    weights = tenant_weights(50)
    assert assign_tenants(1000, weights, 7) == assign_tenants(1000, weights, 7)


def test_total_count_and_span_follow_the_envelope() -> None:
    p = Profile()
    times = arrivals(p, 1)
    assert times == sorted(times)
    assert 0 <= times[0] and times[-1] < p.segments()[-1][1]
    # Gamma(0.5) gaps: count variance 2x Poisson, sd ~ sqrt(2 * 72,250) = 380; allow 3%
    assert abs(len(times) - p.expected()) < 0.03 * p.expected()


def test_peak_is_near_6000_per_second_and_the_base_is_lower() -> None:
    p = Profile()
    per_second = Counter(int(t) for t in arrivals(p, 1))
    start, end = p.burst_window()
    plateau = [per_second[s] for s in range(int(start), int(end))]
    assert 5400 <= max(per_second.values()) <= 6600
    assert 5400 <= statistics.mean(plateau) <= 6600
    tail = [per_second[s] for s in range(int(end) + 2, int(p.segments()[-1][1]))]
    assert statistics.mean(tail) <= p.peak / 2
    assert per_second[int(start) - 2] < per_second[int(start) - 1] < plateau[0]  # the ramp


def test_gaps_are_burstier_than_poisson() -> None:
    times = arrivals(steady(2000.0, 10.0), 3)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    cv = statistics.pstdev(gaps) / statistics.mean(gaps)
    assert 1.3 < cv < 1.55  # Gamma shape 0.5: CV 1.41; Poisson would be 1.0


def test_a_few_tenants_carry_most_of_the_traffic() -> None:
    weights = tenant_weights(50)
    who = Counter(assign_tenants(20_000, weights, 1))
    assert abs(sum(weights) - 1) < 1e-9
    assert sum(n for _, n in who.most_common(5)) > 0.45 * 20_000
    assert who[0] > 10 * who[49]
