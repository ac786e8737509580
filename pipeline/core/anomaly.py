"""Spend velocity: sliding-window call counts and spend, same-hour-of-week baselines (pure).

A budget scope's calls and spend are kept in 5 s event-time buckets for its longest window
only. Each window is judged against the usual traffic of the same UTC hour of the week (the
median over the last weeks of that hour's calls and spend): it is anomalous when its call
count is improbable for a Poisson process at the usual call rate (``score`` = -log10 of the
tail probability), its spend is at least ``min_ratio`` times the usual spend of a window and
its spend rate is at least the ``floor``. The count carries the evidence because spend per
call is heavy-tailed (one long-context call can be most of a quiet minute's spend: a spend
z-score raised 5 to 29 alarms per tenant-week on ordinary traffic); the spend conditions keep
a burst of cheap calls from alarming. An episode opens at the first anomalous reading (one
breach, with an id derived from the budget, the window and the episode's start bucket, so a
replay repeats it) and ends once no window has been anomalous for the cooldown
(docs/budgets.md, "Spend velocity").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum

from pipeline.core.budget_options import AnomalySettings
from pipeline.core.budgets import BreachKind, Budget, BudgetBreach, percent_of
from pipeline.core.numbers import MAX_AMOUNT

BUCKET_S = 5
HOUR_S = 3600
WEEKS = 4  # how many past weeks of the same hour make a baseline
COOLDOWN_S = 600  # an episode ends after this long without an anomalous reading
# the usual call rate is never taken below this (per minute): an hour that had no calls in
# past weeks would otherwise make any call infinitely improbable
MIN_CALLS_PER_MIN = Decimal("0.5")
LEARN_S = 24 * HOUR_S  # history a scope needs before its baseline alarms at all
# producers' clocks run ahead of the worker's by seconds (hosts' skew, a worker whose clock
# started a moment later): spend up to this far ahead is real and counts in the current
# bucket; anything later is ignored (one far-future event must not move the window)
SKEW_S = 120
_RATE_Q = Decimal("0.000000000001")  # budget_breaches rate columns: Decimal(38, 12)
_SCORE_Q = Decimal("0.000001")  # score column: Decimal(38, 6)
MAX_SCORE = Decimal(10) ** 12
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def bucket_of(at: datetime) -> int:
    """Index of the 5 s bucket holding ``at`` (seconds since the epoch // BUCKET_S)."""
    return int((at - _EPOCH).total_seconds() // BUCKET_S)


def bucket_start(bucket: int) -> datetime:
    """UTC start of a bucket."""
    return _EPOCH + timedelta(seconds=bucket * BUCKET_S)


def hour_start(at: datetime) -> datetime:
    """UTC start of the hour holding ``at`` (baselines are per UTC hour of the week)."""
    return at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def buckets_in(window_s: int) -> int:
    """How many buckets a window spans (rounded up)."""
    return math.ceil(window_s / BUCKET_S)


class RateWindow:
    """Calls and spend per event-time bucket of one budget scope, bounded to the longest
    window.

    Only buckets in (head - span, head] are kept, head being the worker clock's bucket; an
    event up to SKEW_S ahead counts in the head bucket: a far-future or long-past event does
    nothing, and memory stays at most span buckets whatever the traffic.
    """

    __slots__ = ("span", "buckets", "calls")

    def __init__(self, longest_s: int) -> None:
        self.span = buckets_in(longest_s)
        self.buckets: dict[int, Decimal] = {}  # spend per bucket
        self.calls: dict[int, int] = {}  # calls per bucket

    def add(self, at: datetime, amount: Decimal, now: datetime) -> bool:
        """Count one call of ``amount`` at event time ``at``; False when outside the window."""
        head = bucket_of(now)
        b = bucket_of(at)
        if b > head + buckets_in(SKEW_S) or b <= head - self.span:
            return False
        b = min(b, head)
        self.buckets[b] = self.buckets.get(b, Decimal(0)) + amount
        self.calls[b] = self.calls.get(b, 0) + 1
        if len(self.buckets) > self.span:
            self.trim(now)
        return True

    def trim(self, now: datetime) -> None:
        """Drop buckets older than the longest window."""
        oldest = bucket_of(now) - self.span
        for b in [b for b in self.buckets if b <= oldest]:
            del self.buckets[b]
            del self.calls[b]

    def spend(self, window_s: int, now: datetime) -> Decimal:
        """Spend in the window of ``window_s`` ending at ``now``'s bucket (inclusive)."""
        head = bucket_of(now)
        low = head - buckets_in(window_s)
        return sum((v for b, v in self.buckets.items() if low < b <= head), Decimal(0))

    def count(self, window_s: int, now: datetime) -> int:
        """Calls in the window of ``window_s`` ending at ``now``'s bucket (inclusive)."""
        head = bucket_of(now)
        low = head - buckets_in(window_s)
        return sum(v for b, v in self.calls.items() if low < b <= head)


MAX_HEAT_KEYS = 100_000  # keys of one template whose recent spend is remembered


class KeyHeat:
    """Recent calls and spend per key of a template, decayed with a half-life: which key an
    anomaly of the template's whole scope is mostly about (its breach names that key, and its
    actions apply to that key only). By calls when the call count fired, by spend when the
    max_rate did: the same evidence that raised the alarm. A float heuristic of attribution,
    never money; bounded: keys cold for eight half-lives are dropped, and over ``max_keys``
    the colder half goes."""

    __slots__ = ("half_life_s", "max_keys", "heat")

    def __init__(self, half_life_s: int, max_keys: int = MAX_HEAT_KEYS) -> None:
        self.half_life_s = half_life_s
        self.max_keys = max_keys
        # key -> (calls, spend, as of epoch seconds)
        self.heat: dict[str, tuple[float, float, float]] = {}

    def _at(self, key: str, t: float) -> tuple[float, float]:
        calls, spend, t0 = self.heat[key]
        f = 2 ** (-(t - t0) / self.half_life_s) if t > t0 else 1.0
        return calls * f, spend * f

    def add(self, key: str, amount: Decimal, at: datetime) -> None:
        """Count one call of ``amount`` of ``key`` at ``at``."""
        t = (at - _EPOCH).total_seconds()
        if key in self.heat:
            (calls, spend), t0 = self._at(key, t), max(t, self.heat[key][2])
        else:
            calls, spend, t0 = 0.0, 0.0, t
        self.heat[key] = (calls + 1.0, spend + float(amount), t0)
        if len(self.heat) > self.max_keys:
            self.prune(at)

    def top(self, now: datetime, by_spend: bool = False) -> str | None:
        """The key with the most recent calls (or spend); None when none is remembered."""
        t = (now - _EPOCH).total_seconds()
        i = 1 if by_spend else 0
        return max(self.heat, key=lambda k: (self._at(k, t)[i], k), default=None)

    def prune(self, now: datetime) -> None:
        """Drop cold keys; over ``max_keys``, the colder half."""
        t = (now - _EPOCH).total_seconds()
        cold = t - 8 * self.half_life_s
        for k in [k for k, (_, _, t0) in self.heat.items() if t0 < cold]:
            del self.heat[k]
        if len(self.heat) > self.max_keys:
            ranked = sorted(self.heat, key=lambda k: self._at(k, t))
            for k in ranked[:len(ranked) - self.max_keys // 2]:
                del self.heat[k]


def per_minute(spend: Decimal, window_s: int) -> Decimal:
    """A window's spend as a rate per minute."""
    return spend * 60 / window_s


def median(values: Sequence[Decimal]) -> Decimal:
    """The median (0 for no values)."""
    if not values:
        return Decimal(0)
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


class Source(StrEnum):
    """Where a baseline came from."""

    same_hour = "same_hour"  # the median of the same UTC hour of the week, past weeks
    busiest_recent_hour = "busiest_recent_hour"  # under a week of history: the past day's peak


@dataclass(frozen=True, slots=True)
class Baseline:
    """The usual traffic of one UTC hour: calls and spend per hour, and where from."""

    calls_per_hour: Decimal
    spend_per_hour: Decimal
    samples: int  # weeks (same_hour) or hours (busiest_recent_hour) it was taken over
    source: Source = Source.same_hour

    def calls_in(self, window_s: int) -> float:
        """Expected calls in a window (never below MIN_CALLS_PER_MIN)."""
        usual = self.calls_per_hour * window_s / HOUR_S
        return float(max(usual, MIN_CALLS_PER_MIN * window_s / 60))

    def spend_rate(self) -> Decimal:
        """Usual spend per minute."""
        return self.spend_per_hour / 60


HourRow = tuple[datetime, Decimal, int]  # (UTC hour start, spend, calls) of one hour


def sample_hours(hour: datetime, weeks: int = WEEKS) -> list[datetime]:
    """The same UTC hour of the week in each of the ``weeks`` weeks before ``hour``."""
    start = hour_start(hour)
    return [start - timedelta(weeks=k) for k in range(1, weeks + 1)]


def baseline_for(rows: Sequence[HourRow], hour: datetime, weeks: int = WEEKS) -> Baseline | None:
    """The baseline of ``hour`` from a scope's hourly (spend, calls) over the past weeks.

    The weeks the scope already existed in (its first hour with calls) give the median of
    the same hour's calls and spend (a week without calls in that hour is a zero: a quiet
    hour is a sample too; a past runaway in one week does not move a median of four).
    Under a week of history, the busiest hour of the past day stands in; under a day, None:
    the scope is still learning and only ``max_rate`` applies.
    """
    start = hour_start(hour)
    hourly: dict[datetime, tuple[Decimal, int]] = {}
    for at, spend, calls in rows:
        key = hour_start(at if at.tzinfo else at.replace(tzinfo=timezone.utc))
        if key < start:
            s, c = hourly.get(key, (Decimal(0), 0))
            hourly[key] = (s + Decimal(spend), c + int(calls))
    if not hourly:
        return None
    first = min(hourly)
    same = [h for h in sample_hours(start, weeks) if h >= first]
    if same:
        got = [hourly.get(h, (Decimal(0), 0)) for h in same]
        return Baseline(median([Decimal(c) for _, c in got]), median([s for s, _ in got]),
                        len(same))
    if start - first < timedelta(seconds=LEARN_S):
        return None
    recent = [v for h, v in hourly.items() if h >= start - timedelta(seconds=LEARN_S)]
    if not recent:
        return None
    return Baseline(Decimal(max(c for _, c in recent)), max(s for s, _ in recent),
                    len(recent), Source.busiest_recent_hour)


def surprise(n: int, lam: float) -> float:
    """-log10 P(X >= n) for X ~ Poisson(lam): how improbable n or more calls are."""
    if n <= 0:
        return 0.0
    if lam <= 0:
        return math.inf
    if n <= lam:  # the tail is at least about a half: sum the head instead
        log_pmf = -lam
        head = 0.0
        for k in range(n):
            head += math.exp(log_pmf)
            log_pmf += math.log(lam) - math.log(k + 1)
        return max(0.0, -math.log10(max(1e-300, 1.0 - head)))
    log_pmf = -lam + n * math.log(lam) - math.lgamma(n + 1)
    term, total, k = 1.0, 1.0, n
    while term > 1e-15 * total:  # converges: lam / k < 1 from here on
        k += 1
        term *= lam / k
        total += term
    return max(0.0, -(log_pmf + math.log(total)) / math.log(10))


class Cause(StrEnum):
    """Why a reading is anomalous."""

    baseline = "baseline"  # far above the usual traffic of this hour of the week
    max_rate = "max_rate"  # over the budget's absolute ceiling


@dataclass(frozen=True, slots=True)
class Reading:
    """One window's calls and spend, the baseline it was judged against, and the verdict."""

    window_s: int
    spend: Decimal
    calls: int
    rate: Decimal
    baseline: Baseline | None
    score: Decimal | None
    cause: Cause | None

    @property
    def anomalous(self) -> bool:
        """True when the reading is over the alert level."""
        return self.cause is not None


def score_of(calls: int, window_s: int, baseline: Baseline) -> Decimal:
    """-log10 of the chance of this many calls or more in the window at the usual rate."""
    s = surprise(calls, baseline.calls_in(window_s))
    return MAX_SCORE if math.isinf(s) else min(MAX_SCORE, Decimal(repr(round(s, 6))))


def judge(window_s: int, spend: Decimal, calls: int, settings: AnomalySettings,
          baseline: Baseline | None) -> Reading:
    """The verdict on one window: over max_rate (always), or, with a baseline, a call count
    ``min_score`` improbable, at least ``min_ratio`` x the usual spend and the floor."""
    rate = per_minute(spend, window_s)
    score = None if baseline is None else score_of(calls, window_s, baseline)
    cause: Cause | None = None
    if settings.max_rate is not None and rate > settings.max_rate:
        cause = Cause.max_rate
    elif (baseline is not None and score is not None and rate >= settings.floor
          and rate >= settings.min_ratio * baseline.spend_rate()
          and score >= settings.min_score):
        cause = Cause.baseline
    return Reading(window_s, spend, calls, rate, baseline, score, cause)


@dataclass(frozen=True, slots=True)
class Episode:
    """A run of anomalous readings of one budget: one breach, then quiet until it clears."""

    start_bucket: int
    last_anomalous: datetime
    breach_id: str


@dataclass(frozen=True, slots=True)
class Step:
    """What one evaluation did: the episode now, the reading to publish, whether it cleared."""

    episode: Episode | None
    fire: Reading | None = None
    cleared: bool = False


def anomaly_breach_id(budget_id: str, window_s: int, start_bucket: int) -> str:
    """Deterministic id of one episode (a replay of the same events repeats it)."""
    parts = [budget_id, BreachKind.anomaly.value, str(window_s),
             bucket_start(start_bucket).isoformat()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def pick(readings: Sequence[Reading]) -> Reading | None:
    """The reading an episode reports: a max_rate crossing first, else the shortest window
    (the one that crosses first), among the anomalous ones."""
    hot = [r for r in readings if r.anomalous]
    if not hot:
        return None
    return min(hot, key=lambda r: (r.cause is not Cause.max_rate, r.window_s))


def step(episode: Episode | None, readings: Sequence[Reading], *, budget_id: str,
         head_bucket: int, now: datetime, cooldown_s: int = COOLDOWN_S) -> Step:
    """Advance a budget's episode by one evaluation at ``now``."""
    hot = pick(readings)
    if hot is not None:
        if episode is None:
            bid = anomaly_breach_id(budget_id, hot.window_s, head_bucket)
            return Step(Episode(head_bucket, now, bid), fire=hot)
        return Step(replace(episode, last_anomalous=now))
    if episode is not None and now - episode.last_anomalous >= timedelta(seconds=cooldown_s):
        return Step(None, cleared=True)
    return Step(episode)


def _column(v: Decimal, quantum: Decimal, cap: Decimal) -> Decimal:
    """A figure as its budget_breaches column holds it (capped, so the row always fits)."""
    return max(min(v, cap), -cap).quantize(quantum)


def anomaly_breach(budget: Budget, reading: Reading, episode: Episode, now: datetime,
                   trigger: str | None, key: str = "") -> BudgetBreach:
    """The breach an episode publishes: the window's spend, rate, baseline and score (and,
    for a template, the key that spent most recently: KeyHeat)."""
    spend = _column(reading.spend, _RATE_Q, MAX_AMOUNT / 1000)
    critical = reading.cause is Cause.max_rate
    return BudgetBreach(
        breach_id=episode.breach_id, budget_id=budget.budget_id, tenant_id=budget.tenant_id,
        kind=BreachKind.anomaly, threshold_pct=Decimal(0), spent=spend, limit=budget.limit,
        percent=percent_of(spend, budget.limit, Decimal("0.01")), metric=budget.metric,
        period_start=now - timedelta(seconds=reading.window_s), period_end=now,
        severity="critical" if critical else "warning",
        action=budget.actions.get(BreachKind.anomaly.value, "alert"), mode=budget.mode,
        triggering_event_id=trigger, emitted_at=now, each=budget.each or "", key=key,
        observed_rate=_column(reading.rate, _RATE_Q, MAX_AMOUNT / 1000),
        baseline_rate=None if reading.baseline is None else _column(
            reading.baseline.spend_rate(), _RATE_Q, MAX_AMOUNT / 1000),
        score=None if reading.score is None else _column(reading.score, _SCORE_Q, MAX_SCORE),
        window_seconds=reading.window_s,
    )
