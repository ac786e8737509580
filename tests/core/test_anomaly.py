"""Spend velocity, pure: bucket windows, robust baselines, verdicts, episodes, the breach."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from pipeline.core.anomaly import (
    BUCKET_S,
    MIN_SPREAD,
    SKEW_S,
    Baseline,
    Cause,
    Episode,
    RateWindow,
    Reading,
    anomaly_breach,
    anomaly_breach_id,
    baseline_of,
    baselines_from,
    bucket_of,
    grain_of,
    judge,
    median,
    pick,
    sample_hours,
    score_of,
    step,
    window_spends,
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


def test_baseline_is_median_and_mad_per_minute() -> None:
    # per 5-minute window spend 1, 2, 3, 4, 100 -> per minute 0.2 .. 20
    b = baseline_of([D(1), D(2), D(3), D(4), D(100)], 300)
    assert b.median == D("0.6")
    assert b.mad == D("0.2")  # |0.2-0.6|, |0.4-0.6|, 0, |0.8-0.6|, big -> median 0.2
    assert b.samples == 5


@pytest.mark.parametrize(("windows", "grain"), [([60, 300], 60), ([45], 45), ([700], 100),
                                                 ([3600], 3600), ([10, 60], 10)])
def test_grain_divides_every_window_and_the_hour(windows: list[int], grain: int) -> None:
    assert grain_of(windows) == grain


def test_sample_hours_are_the_same_hour_of_the_week_before() -> None:
    assert sample_hours(at(1234), 2) == [T0 - timedelta(weeks=1), T0 - timedelta(weeks=2)]


def test_missing_windows_count_as_zero() -> None:
    hours = sample_hours(T0, 4)
    grains = {hours[0] + timedelta(minutes=3): D("1.5")}
    spends = window_spends(grains, hours, 60, 300)
    assert len(spends) == 4 * 12
    assert sorted(spends)[-1] == D("1.5") and sum(spends) == D("1.5")


def test_baselines_from_rows_use_only_the_sampled_hours() -> None:
    hours = sample_hours(T0, 4)
    rows = [(h + timedelta(minutes=m), D("0.10")) for h in hours for m in range(60)]
    rows.append((T0 - timedelta(days=1), D(1000)))  # another hour: not a sample
    got = baselines_from(rows, T0 + timedelta(minutes=20), [60, 300], 4)
    assert got[60] == Baseline(60, D("0.10"), D(0), 240, D("0.10"))
    assert got[300].median == D("0.10") and got[300].samples == 48


@pytest.mark.parametrize(("baseline", "spread"), [
    (Baseline(60, D(1), D("0.5"), 240, D(2)), D("1.4826") * D("0.5")),  # MAD is wider
    (Baseline(60, D(1), D("0.1"), 240, D("3.326")), D(1)),  # the upper tail is wider
    (Baseline(60, D(0), D(0), 240, D(0)), MIN_SPREAD),  # never below the minimum
])
def test_spread_is_mad_or_what_the_upper_tail_implies(baseline: Baseline,
                                                      spread: Decimal) -> None:
    assert baseline.spread == spread


def test_no_history_gives_a_zero_baseline() -> None:
    got = baselines_from([], T0, [60, 300])
    assert got[60] == Baseline(60, D(0), D(0), 240)


# ----- the verdict

USUAL = Baseline(60, D("0.20"), D("0.05"), 240)  # 20 cents a minute, MAD 5 cents
QUIET = Baseline(60, D(0), D(0), 240)


@pytest.mark.parametrize(("spend", "baseline", "settings", "cause"), [
    (D("0.20"), USUAL, ON, None),  # usual
    (D("0.59"), USUAL, ON, None),  # below 3x the median
    (D("0.60"), USUAL, ON, None),  # 3x but z = 0.4/0.0741 = 5.4 < 6
    (D("0.65"), USUAL, ON, Cause.baseline),  # 3.25x and z = 6.07
    (D("2.00"), USUAL, ON, Cause.baseline),  # 10x
    (D("2.00"), None, ON, None),  # no baseline loaded: only max_rate applies
    (D("2.00"), None, ON.model_copy(update={"max_rate": D(1)}), Cause.max_rate),
    (D("1.00"), None, ON.model_copy(update={"max_rate": D(1)}), None),  # not over it
    (D("0.30"), USUAL, ON.model_copy(update={"max_rate": D("0.25")}), Cause.max_rate),
    (D("0.04"), QUIET, ON, None),  # quiet tenant: below the floor, whatever the score
    (D("0.05"), QUIET, ON, Cause.baseline),  # at the floor
    (D("0.65"), USUAL, ON.model_copy(update={"min_ratio": D(4)}), None),
    (D("0.65"), USUAL, ON.model_copy(update={"min_score": D(7)}), None),
    (D("0.65"), USUAL, ON.model_copy(update={"floor": D(1)}), None),
])
def test_judge(spend: Decimal, baseline: Baseline | None, settings: AnomalySettings,
               cause: Cause | None) -> None:
    r = judge(60, spend, settings, baseline)
    assert r.cause is cause
    assert r.rate == spend
    assert (r.score is None) is (baseline is None)


def test_rate_is_per_minute() -> None:
    assert judge(300, D(1), ON, None).rate == D("0.2")


@pytest.mark.parametrize(("baseline", "rate", "score"), [
    (USUAL, D("0.20"), D(0)),
    (Baseline(60, D(1), D(1), 9), D("2.4826"), D(1)),
    (QUIET, D("0.000001"), D("0.000001") / MIN_SPREAD),  # spread never below MIN_SPREAD
])
def test_score_is_a_robust_z(baseline: Baseline, rate: Decimal, score: Decimal) -> None:
    assert score_of(rate, baseline) == score


# ----- episodes

def reading(window_s: int, cause: Cause | None) -> Reading:
    return Reading(window_s, D(1), D(1), USUAL, D(10), cause)


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
    r = judge(60, D("2.00"), ON, USUAL)
    ep = Episode(bucket_of(at(0)), at(0), anomaly_breach_id("b1", 60, bucket_of(at(0))))
    br = anomaly_breach(budget, r, ep, at(0), "ev-9")
    assert br.kind is BreachKind.anomaly and br.breach_id == ep.breach_id
    assert (br.observed_rate, br.baseline_rate, br.window_seconds) == (D("2.00"), D("0.20"), 60)
    assert br.score == ((D("2.00") - D("0.20")) / (D("1.4826") * D("0.05"))).quantize(
        D("0.000001"))
    assert br.spent == D("2.00") and br.percent == D("2.00") and br.action == "block"
    assert br.severity == "warning" and br.triggering_event_id == "ev-9"
    assert br.period_end - br.period_start == timedelta(seconds=60)
    ceiling = anomaly_breach(budget, judge(60, D(5), ON.model_copy(update={"max_rate": D(1)}),
                                           None), ep, at(0), None)
    assert ceiling.severity == "critical" and ceiling.baseline_rate is None
    assert ceiling.score is None
