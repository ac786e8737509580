"""Spend velocity: sliding-window rates, robust same-hour-of-week baselines, episodes (pure).

A budget scope's spend is kept in 5 s event-time buckets for its longest window only; a
window's rate (per minute, in the budget's metric) is compared with the baseline of the same
UTC hour of the week over the last weeks (median and MAD of per-window spend, missing windows
counted as zero). An episode opens at the first anomalous reading (one breach, with an id
derived from the budget, the window and the episode's start bucket, so a replay repeats it)
and ends once no window has been anomalous for the cooldown (docs/budgets.md, "Spend
velocity").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum

from pipeline.core.budget_options import AnomalySettings
from pipeline.core.budgets import BreachKind, Budget, BudgetBreach, percent_of
from pipeline.core.numbers import MAX_AMOUNT

BUCKET_S = 5
HOUR_S = 3600
WEEK_S = 7 * 24 * HOUR_S
WEEKS = 4  # how many past weeks of the same hour make a baseline
COOLDOWN_S = 600  # an episode ends after this long without an anomalous reading
MAD_SCALE = Decimal("1.4826")  # MAD -> standard deviation of a normal distribution
Z99 = Decimal("2.326")  # the 99th percentile of a normal distribution, in deviations
# the smallest spread a score divides by (per minute): a baseline that never varied (a quiet
# tenant, no history) would otherwise score any cent as infinite; the floor still applies
MIN_SPREAD = Decimal("0.000001")
# producers' clocks run ahead of the worker's by seconds (hosts' skew, a worker whose clock
# started a moment later): spend up to this far ahead is real and counts in the current
# bucket; anything later is ignored (one far-future event must not move the window)
SKEW_S = 120
FUTURE_BUCKETS = 0  # buckets ahead of the clock's: none, early events count in its own
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
    """Spend per event-time bucket of one budget scope, bounded to the longest window.

    Only buckets in (head - span, head] are kept, head being the worker clock's bucket; an
    event up to SKEW_S ahead counts in the head bucket: a far-future or long-past event does
    nothing, and memory stays at most span buckets whatever the traffic.
    """

    __slots__ = ("span", "buckets")

    def __init__(self, longest_s: int) -> None:
        self.span = buckets_in(longest_s)
        self.buckets: dict[int, Decimal] = {}

    def add(self, at: datetime, amount: Decimal, now: datetime) -> bool:
        """Count ``amount`` at event time ``at``; False when it falls outside the window."""
        head = bucket_of(now)
        b = bucket_of(at)
        if b > head + buckets_in(SKEW_S) or b <= head - self.span:
            return False
        b = min(b, head)
        self.buckets[b] = self.buckets.get(b, Decimal(0)) + amount
        if len(self.buckets) > self.span + FUTURE_BUCKETS:
            self.trim(now)
        return True

    def trim(self, now: datetime) -> None:
        """Drop buckets older than the longest window."""
        oldest = bucket_of(now) - self.span
        for b in [b for b in self.buckets if b <= oldest]:
            del self.buckets[b]

    def spend(self, window_s: int, now: datetime) -> Decimal:
        """Spend in the window of ``window_s`` ending at ``now``'s bucket (inclusive)."""
        head = bucket_of(now)
        low = head - buckets_in(window_s)
        return sum((v for b, v in self.buckets.items() if low < b <= head), Decimal(0))


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


def quantile(values: Sequence[Decimal], q: Decimal) -> Decimal:
    """The q-quantile by the nearest rank (0 for no values)."""
    if not values:
        return Decimal(0)
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


@dataclass(frozen=True, slots=True)
class Baseline:
    """Usual rate of one window size: median, MAD and the 99th percentile of per-window
    rates (per minute)."""

    window_s: int
    median: Decimal
    mad: Decimal
    samples: int
    upper: Decimal = Decimal(0)

    @property
    def spread(self) -> Decimal:
        """The scale a score divides by: 1.4826 x MAD, or the spread the upper tail implies
        ((p99 - median) / 2.326, what it is for a normal distribution) when that is wider.
        Spend per window is heavy-tailed (one long-context call can be most of a quiet
        minute): MAD alone put a 60 s window over 6 robust z-scores once in a hundred
        ordinary minutes; the 99th percentile of 240 samples ignores the top two, so a
        past runaway in the history does not blunt it."""
        return max(MAD_SCALE * self.mad, (self.upper - self.median) / Z99, MIN_SPREAD)


def baseline_of(window_spends: Sequence[Decimal], window_s: int) -> Baseline:
    """The baseline of a window size from its samples (each one window's spend)."""
    rates = [per_minute(s, window_s) for s in window_spends]
    mid = median(rates)
    return Baseline(window_s, mid, median([abs(r - mid) for r in rates]), len(rates),
                    quantile(rates, Decimal("0.99")))


def grain_of(windows_s: Sequence[int]) -> int:
    """The bucket size (seconds) the baseline query groups by: it divides every window and
    the hour, so every window's samples are sums of whole grains."""
    return math.gcd(HOUR_S, *windows_s)


def sample_hours(hour: datetime, weeks: int = WEEKS) -> list[datetime]:
    """The same UTC hour of the week in each of the ``weeks`` weeks before ``hour``."""
    start = hour_start(hour)
    return [start - timedelta(weeks=k) for k in range(1, weeks + 1)]


def window_spends(grains: Mapping[datetime, Decimal], hours: Sequence[datetime], grain_s: int,
                  window_s: int) -> list[Decimal]:
    """Spend of every whole ``window_s`` window of each hour, from per-grain sums (a grain
    with no row is zero spend: a quiet minute is a sample too)."""
    per_window = window_s // grain_s
    out = []
    for h in hours:
        for k in range(HOUR_S // window_s):
            start = h + timedelta(seconds=k * window_s)
            out.append(sum((grains.get(start + timedelta(seconds=j * grain_s), Decimal(0))
                            for j in range(per_window)), Decimal(0)))
    return out


def baselines_from(rows: Sequence[tuple[datetime, Decimal]], hour: datetime,
                   windows_s: Sequence[int], weeks: int = WEEKS) -> dict[int, Baseline]:
    """Every window's baseline for ``hour`` from (grain start, spend) rows of the ledger."""
    grain_s = grain_of(windows_s)
    grains: dict[datetime, Decimal] = {}
    for at, amount in rows:
        key = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(
            timezone.utc)
        grains[key] = grains.get(key, Decimal(0)) + Decimal(amount)
    hours = sample_hours(hour, weeks)
    return {w: baseline_of(window_spends(grains, hours, grain_s, w), w) for w in windows_s}


class Cause(StrEnum):
    """Why a reading is anomalous."""

    baseline = "baseline"  # far above the usual rate of this hour of the week
    max_rate = "max_rate"  # over the budget's absolute ceiling


@dataclass(frozen=True, slots=True)
class Reading:
    """One window's rate, the baseline it was judged against, and the verdict."""

    window_s: int
    spend: Decimal
    rate: Decimal
    baseline: Baseline | None
    score: Decimal | None
    cause: Cause | None

    @property
    def anomalous(self) -> bool:
        """True when the reading is over the alert level."""
        return self.cause is not None


def score_of(rate: Decimal, baseline: Baseline) -> Decimal:
    """Robust z-score: (rate - median) / spread (1.4826 x MAD, or wider: Baseline.spread)."""
    return (rate - baseline.median) / baseline.spread


def judge(window_s: int, spend: Decimal, settings: AnomalySettings,
          baseline: Baseline | None) -> Reading:
    """The verdict on one window: over max_rate (always), or, with a baseline, at least
    min_ratio x its median, min_score robust z above it and at least the floor."""
    rate = per_minute(spend, window_s)
    score = None if baseline is None else score_of(rate, baseline)
    cause: Cause | None = None
    if settings.max_rate is not None and rate > settings.max_rate:
        cause = Cause.max_rate
    elif (baseline is not None and score is not None and rate >= settings.floor
          and rate >= settings.min_ratio * baseline.median and score >= settings.min_score):
        cause = Cause.baseline
    return Reading(window_s, spend, rate, baseline, score, cause)


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
                   trigger: str | None) -> BudgetBreach:
    """The breach an episode publishes: the window's spend, rate, baseline and score."""
    spend = _column(reading.spend, _RATE_Q, MAX_AMOUNT / 1000)
    critical = reading.cause is Cause.max_rate
    return BudgetBreach(
        breach_id=episode.breach_id, budget_id=budget.budget_id, tenant_id=budget.tenant_id,
        kind=BreachKind.anomaly, threshold_pct=Decimal(0), spent=spend, limit=budget.limit,
        percent=percent_of(spend, budget.limit, Decimal("0.01")), metric=budget.metric,
        period_start=now - timedelta(seconds=reading.window_s), period_end=now,
        severity="critical" if critical else "warning",
        action=budget.actions.get(BreachKind.anomaly.value, "alert"), mode=budget.mode,
        triggering_event_id=trigger, emitted_at=now, each=budget.each or "",
        observed_rate=_column(reading.rate, _RATE_Q, MAX_AMOUNT / 1000),
        baseline_rate=None if reading.baseline is None else _column(
            reading.baseline.median, _RATE_Q, MAX_AMOUNT / 1000),
        score=None if reading.score is None else _column(reading.score, _SCORE_Q, MAX_SCORE),
        window_seconds=reading.window_s,
    )
