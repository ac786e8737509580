"""Spend velocity, pure: bucket windows, same-hour baselines, Poisson scores, verdicts, episodes,
the breach."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from pipeline.core.anomaly import (
    BUCKET_S,
    SKEW_S,
    Baseline,
    Cause,
    Episode,
    KeyHeat,
    RateWindow,
    Reading,
    Source,
    anomaly_breach,
    anomaly_breach_id,
    baseline_for,
    bucket_of,
    judge,
    median,
    pick,
    sample_hours,
    score_of,
    step,
    surprise,
)
from pipeline.core.budget_options import AnomalySettings
from pipeline.core.budgets import BreachKind, Budget

T0 = datetime(2026, 3, 10, 14, 0, 0, tzinfo=timezone.utc)  # a Tuesday, 14:00 UTC
D = Decimal
ON = AnomalySettings(enabled=True)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ----- the bucket window

def test_window_sums_the_buckets_of_each_window() -> None:
    w = RateWindow(300)
    now = at(600)
    for s in range(0, 300, 10):  # one cent every 10 s for the last 5 minutes
        assert w.add(now - timedelta(seconds=s), D("0.01"), now)
    assert w.spend(60, now) == D("0.06")
    assert w.spend(300, now) == D("0.30")
    assert (w.count(60, now), w.count(300, now)) == (6, 30)


@pytest.mark.parametrize(("offset_s", "counted"), [
    (0, True),  # now
    (-295, True),  # inside the longest window (its oldest bucket)
    (-300, False),  # one window ago: out
    (-86400, False),  # a late event
    (BUCKET_S, True),  # a producer's clock a little ahead: counts now
    (SKEW_S, True),  # up to the tolerated skew (a worker whose clock started a moment late)
    (SKEW_S + 2 * BUCKET_S, False),  # later than that: ignored
    (86400 * 365, False),  # far future: does nothing
])
def test_window_bounds_events_by_the_worker_clock(offset_s: int, counted: bool) -> None:
    w = RateWindow(300)
    now = at(1000)
    event = now + timedelta(seconds=offset_s)
    assert w.add(event, D(5), now) is counted
    # early events count in the clock's own bucket: the rate shows them at once
    assert (w.spend(300, now) == D(5)) is counted


def test_a_far_future_event_never_counts_later_either() -> None:
    w = RateWindow(60)
    now = at(0)
    w.add(at(3600), D(100), now)
    assert w.spend(60, at(3600)) == 0


def test_window_memory_is_bounded_to_the_longest_window() -> None:
    w = RateWindow(300)
    for s in range(0, 24 * 3600, 3):  # a day of events, one every 3 s
        w.add(at(s), D(1), at(s))
    assert len(w.buckets) <= 300 // BUCKET_S + 1


# ----- baselines

@pytest.mark.parametrize(("values", "expected"), [
    ([], D(0)), ([D(3)], D(3)), ([D(1), D(3)], D(2)), ([D(5), D(1), D(3)], D(3)),
    ([D(0), D(0), D(0), D(9)], D(0)),
])
def test_median(values: list[Decimal], expected: Decimal) -> None:
    assert median(values) == expected


def test_sample_hours_are_the_same_hour_of_the_week_before() -> None:
    assert sample_hours(at(1234), 2) == [T0 - timedelta(weeks=1), T0 - timedelta(weeks=2)]


def weeks_of(calls: list[int], spend: Decimal = D("0.01")) -> list[tuple[datetime, Decimal, int]]:
    """The same hour in the weeks before T0 (newest first) with these calls, each ``spend``."""
    return [(T0 - timedelta(weeks=k + 1), spend * c, c) for k, c in enumerate(calls)]


def test_baseline_is_the_median_of_the_same_hour_over_past_weeks() -> None:
    rows = weeks_of([100, 120, 80, 1000])  # one week held a runaway: the median ignores it
    rows.append((T0 - timedelta(hours=1), D(500), 50_000))  # another hour: not a sample
    got = baseline_for(rows, T0 + timedelta(minutes=20))
    assert got == Baseline(D(110), D("1.10"), 4, Source.same_hour)


def test_a_week_without_calls_in_that_hour_counts_as_zero() -> None:
    rows = [*weeks_of([100]), (T0 - timedelta(weeks=4, hours=1), D(1), 1)]  # 4 weeks of history
    assert baseline_for(rows, T0) == Baseline(D(0), D(0), 4)


def test_only_weeks_the_scope_existed_in_are_samples() -> None:
    rows = weeks_of([100, 120])  # history starts two weeks ago
    assert baseline_for(rows, T0) == Baseline(D(110), D("1.10"), 2)


def test_under_a_week_of_history_the_busiest_recent_hour_stands_in() -> None:
    rows = [(T0 - timedelta(hours=h), D("0.01") * c, c) for h, c in
            [(30, 40), (20, 90), (5, 60), (1, 30)]]  # first seen 30 h ago
    got = baseline_for(rows, T0)
    assert got == Baseline(D(90), D("0.90"), 3, Source.busiest_recent_hour)  # within 24 h


@pytest.mark.parametrize("rows", [
    [],  # no history at all
    [(T0 - timedelta(hours=23), D(1), 10)],  # under a day: still learning
    [(T0, D(1), 10), (T0 + timedelta(hours=1), D(1), 10)],  # only this hour and later
])
def test_no_baseline_while_learning(rows: list[tuple[datetime, Decimal, int]]) -> None:
    assert baseline_for(rows, T0) is None


def test_naive_timestamps_are_utc() -> None:
    rows = [(h.replace(tzinfo=None), s, c) for h, s, c in weeks_of([10])]
    assert baseline_for(rows, T0) == Baseline(D(10), D("0.10"), 1)


@pytest.mark.parametrize(("calls_per_hour", "window_s", "expected"), [
    (D(600), 60, 10.0), (D(600), 300, 50.0),
    (D(0), 60, 0.5), (D(6), 300, 2.5),  # never below MIN_CALLS_PER_MIN
])
def test_expected_calls_in_a_window(calls_per_hour: Decimal, window_s: int,
                                    expected: float) -> None:
    assert Baseline(calls_per_hour, D(0), 4).calls_in(window_s) == pytest.approx(expected)


# ----- the Poisson score

def poisson_tail(n: int, lam: float) -> float:
    """P(X >= n) by summing the pmf directly (the reference the score is checked against)."""
    return 1.0 - sum(math.exp(-lam) * lam ** k / math.factorial(k) for k in range(n))


@pytest.mark.parametrize(("n", "lam"), [(1, 0.5), (3, 1.0), (5, 2.0), (10, 2.0), (12, 3.0),
                                        (20, 10.0), (2, 5.0), (10, 10.0), (40, 20.0)])
def test_surprise_is_minus_log10_of_the_poisson_tail(n: int, lam: float) -> None:
    assert surprise(n, lam) == pytest.approx(-math.log10(poisson_tail(n, lam)), rel=1e-6,
                                             abs=1e-9)


@pytest.mark.parametrize(("n", "lam", "expected"), [(0, 3.0, 0.0), (5, 0.0, math.inf)])
def test_surprise_edges(n: int, lam: float, expected: float) -> None:
    assert surprise(n, lam) == expected


def test_surprise_of_a_huge_burst_is_finite_and_large() -> None:
    assert 1000 < surprise(2000, 10.0) < math.inf


# ----- the verdict

USUAL = Baseline(D(600), D(12), 4)  # 10 calls and 20 cents a minute
QUIET = Baseline(D(0), D(0), 4)  # an hour that had no calls
# P(X >= 22 | 10) = 5.6e-4 -> 3.25; P(X >= 26 | 10) = 1.6e-5 -> 4.8; >= 28: 1.6e-6 -> 5.8;
# >= 29: 4.9e-7 -> 6.3
LOUD = 29


@pytest.mark.parametrize(("spend", "calls", "baseline", "settings", "cause"), [
    (D("0.20"), 10, USUAL, ON, None),  # usual
    (D("0.59"), LOUD, USUAL, ON, None),  # improbable count, spend below 3x the usual
    (D("0.60"), 28, USUAL, ON, None),  # 3x the spend, count 5.8 < 6
    (D("0.60"), LOUD, USUAL, ON, Cause.baseline),  # 3x and 6.3
    (D("2.00"), 100, USUAL, ON, Cause.baseline),  # 10x
    (D("2.00"), 100, None, ON, None),  # no baseline: only max_rate applies
    (D("2.00"), 100, None, ON.model_copy(update={"max_rate": D(1)}), Cause.max_rate),
    (D("1.00"), 100, None, ON.model_copy(update={"max_rate": D(1)}), None),  # not over it
    (D("0.30"), 10, USUAL, ON.model_copy(update={"max_rate": D("0.25")}), Cause.max_rate),
    (D("0.04"), 20, QUIET, ON, None),  # quiet hour: below the floor, whatever the score
    (D("0.05"), 20, QUIET, ON, Cause.baseline),  # at the floor, 20 calls where 0.5 are usual
    (D("0.05"), 1, QUIET, ON, None),  # one call is never improbable
    (D("0.60"), LOUD, USUAL, ON.model_copy(update={"min_ratio": D(4)}), None),
    (D("0.60"), LOUD, USUAL, ON.model_copy(update={"min_score": D(7)}), None),
    (D("0.60"), LOUD, USUAL, ON.model_copy(update={"floor": D(1)}), None),
])
def test_judge(spend: Decimal, calls: int, baseline: Baseline | None,
               settings: AnomalySettings, cause: Cause | None) -> None:
    r = judge(60, spend, calls, settings, baseline)
    assert r.cause is cause
    assert r.rate == spend and r.calls == calls
    assert (r.score is None) is (baseline is None)


def test_rate_is_per_minute() -> None:
    assert judge(300, D(1), 1, ON, None).rate == D("0.2")


def test_score_is_the_surprise_of_the_count_at_the_usual_rate() -> None:
    assert score_of(LOUD, 60, USUAL) == Decimal(repr(round(surprise(LOUD, 10.0), 6)))
    assert score_of(0, 60, USUAL) == 0
    assert score_of(10, 300, USUAL) == 0  # 10 calls in 5 minutes where 50 are usual


def test_a_baseline_of_the_five_minute_window_expects_five_times_the_calls() -> None:
    assert score_of(LOUD, 300, USUAL) < D("0.001")  # 29 of 50 usual: nothing improbable
    assert score_of(LOUD, 60, USUAL) > 6


# ----- episodes

def reading(window_s: int, cause: Cause | None) -> Reading:
    return Reading(window_s, D(1), 30, D(1), USUAL, D(10), cause)


HOT = [reading(60, Cause.baseline), reading(300, None)]
COLD = [reading(60, None), reading(300, None)]


def test_an_episode_fires_once_then_stays_quiet() -> None:
    s1 = step(None, HOT, budget_id="b", head_bucket=100, now=at(0))
    assert s1.fire is HOT[0] and s1.episode is not None
    assert s1.episode.breach_id == anomaly_breach_id("b", 60, 100)
    s2 = step(s1.episode, HOT, budget_id="b", head_bucket=130, now=at(150))
    assert s2.fire is None and s2.episode is not None
    assert s2.episode.breach_id == s1.episode.breach_id
    assert s2.episode.last_anomalous == at(150)


@pytest.mark.parametrize(("quiet_s", "cleared"), [(0, False), (599, False), (600, True),
                                                  (3600, True)])
def test_an_episode_clears_after_the_cooldown(quiet_s: int, cleared: bool) -> None:
    ep = Episode(100, at(0), "x")
    s = step(ep, COLD, budget_id="b", head_bucket=200, now=at(quiet_s), cooldown_s=600)
    assert s.cleared is cleared
    assert (s.episode is None) is cleared
    assert s.fire is None


def test_a_new_episode_after_clearing_has_a_new_id() -> None:
    first = step(None, HOT, budget_id="b", head_bucket=100, now=at(0)).episode
    assert first is not None
    gone = step(first, COLD, budget_id="b", head_bucket=300, now=at(700))
    again = step(gone.episode, HOT, budget_id="b", head_bucket=400, now=at(2000))
    assert gone.cleared and again.fire is not None and again.episode is not None
    assert again.episode.breach_id != first.breach_id


def test_no_episode_without_an_anomalous_reading() -> None:
    assert step(None, COLD, budget_id="b", head_bucket=1, now=at(0)) == step(
        None, [], budget_id="b", head_bucket=1, now=at(0))


def test_pick_prefers_max_rate_then_the_shortest_window() -> None:
    assert pick([reading(300, Cause.baseline), reading(60, Cause.baseline)]).window_s == 60
    assert pick([reading(60, Cause.baseline), reading(300, Cause.max_rate)]).window_s == 300
    assert pick(COLD) is None


@pytest.mark.parametrize(("a", "b"), [(("b", 60, 1), ("b", 60, 2)), (("b", 60, 1), ("b", 300, 1)),
                                      (("b", 60, 1), ("c", 60, 1))])
def test_breach_id_is_deterministic_and_distinct(a: tuple, b: tuple) -> None:
    assert anomaly_breach_id(*a) == anomaly_breach_id(*a)
    assert anomaly_breach_id(*a) != anomaly_breach_id(*b)


def test_the_breach_carries_rate_baseline_score_and_window() -> None:
    budget = Budget(budget_id="b1", tenant_id="t", limit=D(100), anomaly=ON,
                    actions={"anomaly": "block"})
    r = judge(60, D("2.00"), 100, ON, USUAL)
    ep = Episode(bucket_of(at(0)), at(0), anomaly_breach_id("b1", 60, bucket_of(at(0))))
    br = anomaly_breach(budget, r, ep, at(0), "ev-9")
    assert br.kind is BreachKind.anomaly and br.breach_id == ep.breach_id
    assert (br.observed_rate, br.baseline_rate, br.window_seconds) == (D("2.00"), D("0.20"), 60)
    assert br.score == score_of(100, 60, USUAL)
    assert br.spent == D("2.00") and br.percent == D("2.00") and br.action == "block"
    assert br.severity == "warning" and br.triggering_event_id == "ev-9"
    assert br.period_end - br.period_start == timedelta(seconds=60)
    ceiling = anomaly_breach(budget, judge(60, D(5), 3, ON.model_copy(
        update={"max_rate": D(1)}), None), ep, at(0), None)
    assert ceiling.severity == "critical" and ceiling.baseline_rate is None
    assert ceiling.score is None


# ----- which key of a template

def test_key_heat_names_the_key_with_the_most_recent_calls_or_spend() -> None:
    heat = KeyHeat(60)
    for s in range(0, 40, 2):  # many calls, but ten minutes ago: 2**-10 of them are left
        heat.add("run-old", D(1), at(s))
    for s in range(560, 600, 2):  # the loop: 20 cheap calls in the last 40 s
        heat.add("run-loop", D("0.002"), at(s))
    heat.add("run-big", D("0.80"), at(595))  # one expensive call
    assert heat.top(at(600)) == "run-loop"  # by calls: what the count score saw
    assert heat.top(at(600), by_spend=True) == "run-big"  # by spend: what max_rate saw
    assert KeyHeat(60).top(at(0)) is None


def test_key_heat_is_bounded() -> None:
    heat = KeyHeat(60, max_keys=100)
    for i in range(1000):
        heat.add(f"k{i}", D(1), at(i))
    assert len(heat.heat) <= 100
    assert heat.top(at(1000)) == "k999"
    heat.prune(at(1000 + 8 * 60 + 1))  # eight half-lives later: all cold
    assert heat.heat == {}


def test_a_template_breach_names_its_key() -> None:
    budget = Budget(budget_id="runs", tenant_id="t", limit=D(2), period="run", each="trace_id",
                    anomaly=ON)
    ep = Episode(bucket_of(at(0)), at(0), "x")
    br = anomaly_breach(budget, judge(60, D(2), 100, ON, USUAL), ep, at(0), None, "run-loop")
    assert (br.each, br.key) == ("trace_id", "run-loop")
