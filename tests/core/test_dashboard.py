"""Dashboard shaping: status precedence, burn-down points, the per-minute rate series."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from pipeline.core.budgets import Budget
from pipeline.core.dashboard import (
    ForecastLine,
    Status,
    budget_status,
    burn_down,
    cumulative,
    key_views,
    near_limits,
    per_minute,
)

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
H = timedelta(hours=1)


def budget(**kw: object) -> Budget:
    return Budget.model_validate({"budget_id": "b", "tenant_id": "t", "limit": "100", **kw})


@pytest.mark.parametrize(("spent", "prob", "extra", "expected"), [
    ("0", None, {}, Status.ok),
    ("49.99", None, {}, Status.ok),
    ("50", None, {}, Status.warning),  # the first threshold below 100 %
    ("99.99", None, {}, Status.warning),
    ("100", None, {}, Status.breached),
    ("250", "0.1", {}, Status.breached),  # actuals beat any forecast
    ("10", "0.8", {}, Status.forecast),  # at the budget's probability (default 0.8)
    ("10", "0.79", {}, Status.ok),
    ("60", "0.9", {}, Status.forecast),  # a predicted overrun outranks a warning
    ("10", "0.9", {"forecast": {"enabled": False}}, Status.ok),
    ("10", "0.5", {"forecast": {"probability": "0.5"}}, Status.forecast),
    ("75", None, {"thresholds": [80, 100]}, Status.ok),
    ("80", None, {"thresholds": [80, 100]}, Status.warning),
    ("99", None, {"thresholds": [100]}, Status.ok),  # no threshold below 100: never warning
    ("100", None, {"thresholds": [120]}, Status.breached),  # the limit itself, whatever the list
])
def test_status(spent: str, prob: str | None, extra: dict, expected: Status) -> None:
    assert budget_status(budget(**extra), D(spent), None if prob is None else D(prob)) == expected


@pytest.mark.parametrize(("buckets", "now", "expected"), [
    ([], T0 + 3 * H, [(T0, "0"), (T0 + 3 * H, "0")]),
    ([(T0, "1.5"), (T0 + H, "2")], T0 + 2 * H,
     [(T0, "0"), (T0 + H, "1.5"), (T0 + 2 * H, "3.5")]),
    # a gap stays flat: 0 until the 02:00 bucket starts
    ([(T0 + 2 * H, "4")], T0 + 5 * H,
     [(T0, "0"), (T0 + 2 * H, "0"), (T0 + 3 * H, "4"), (T0 + 5 * H, "4")]),
    # the current bucket ends at now, not at its full length
    ([(T0, "1"), (T0 + H, "1")], T0 + H + timedelta(minutes=20),
     [(T0, "0"), (T0 + H, "1"), (T0 + H + timedelta(minutes=20), "2")]),
    # a UTC day bucket that began before a local-midnight period start is clipped to it
    ([(T0 - 2 * H, "3")], T0 + 30 * H, [(T0, "0"), (T0 + 22 * H, "3"), (T0 + 30 * H, "3")]),
])
def test_cumulative(buckets: list, now: datetime, expected: list) -> None:
    step = timedelta(days=1) if buckets and buckets[0][0] < T0 else H
    got = cumulative([(ts, D(a)) for ts, a in buckets], T0, step, now)
    assert got == [(ts, D(a)) for ts, a in expected]


def test_cumulative_is_monotonic_and_ends_at_total() -> None:
    buckets = [(T0 + i * H, D(i % 5)) for i in range(0, 48, 3)]
    pts = cumulative(buckets, T0, H, T0 + 50 * H)
    assert [p[0] for p in pts] == sorted(p[0] for p in pts)
    assert all(a[1] <= b[1] for a, b in zip(pts, pts[1:], strict=False))
    assert pts[-1] == (T0 + 50 * H, sum(a for _, a in buckets))


def test_per_minute_fills_gaps_and_ends_with_the_current_minute() -> None:
    now = T0 + timedelta(minutes=10, seconds=42)
    rows = [(T0 + timedelta(minutes=10), 3, D("0.3")), (T0 + timedelta(minutes=7), 1, D("1")),
            (T0 + timedelta(minutes=-5), 9, D("9"))]  # outside the window: ignored
    got = per_minute(rows, now, minutes=5)
    assert [(ts.minute, n, c) for ts, n, c in got] == [
        (6, 0, D(0)), (7, 1, D(1)), (8, 0, D(0)), (9, 0, D(0)), (10, 3, D("0.3"))]


def test_burn_down_json() -> None:
    b = budget(thresholds=[50, 100])
    fc = ForecastLine("ets_damped", "", T0, D("30"), D("120"), D("90"), D("150"), D("0.83"),
                      [(T0 + H, D("60"), D("55"), D("65"))])
    out = burn_down(b, T0, T0 + 24 * H, D("40"), [(T0, D(0)), (T0 + H, D("40"))], fc)
    assert out["status"] == "forecast" and out["percent"] == "40"
    assert out["thresholds"] == [{"percent": "50", "level": "50"},
                                 {"percent": "100", "level": "100"}]
    assert out["actual"][1] == [int((T0 + H).timestamp() * 1000), "40"]
    assert out["forecast"]["points"] == [[int((T0 + H).timestamp() * 1000), "60", "55", "65"]]
    assert out["forecast"]["probability_exceed"] == "0.83"
    assert (out["forecast"]["run_at_ms"], out["forecast"]["spent_at_run"]) == (
        int(T0.timestamp() * 1000), "30")
    none = burn_down(b, T0, T0 + 24 * H, D("0"), [], None)
    assert none["forecast"] is None and none["status"] == "ok"


RUNS = Budget(budget_id="runs", tenant_id="t", limit=D(2), period="run", each="trace_id",
              idle_timeout_s=600, mode="hard")
USERS = Budget(budget_id="users", tenant_id="t", limit=D(5), period="day", each="user_id")
TK = datetime(2026, 6, 17, 10, 0, tzinfo=timezone.utc)


def test_key_views_rank_keys_by_percent_and_close_idle_runs() -> None:
    rows = [("run-a", D("0.50"), TK), ("run-b", D("2.10"), TK - timedelta(minutes=11)),
            ("run-c", D("1.70"), TK - timedelta(minutes=1))]
    views = key_views(RUNS, rows, TK)
    assert [(v["key"], v["percent"], v["status"]) for v in views] == [
        ("run-b", "105", "closed"),  # over its limit, but idle past 600 s: the run is over
        ("run-c", "85", "warning"),
        ("run-a", "25", "ok"),
    ]
    assert views[1]["idle_until"] == (TK + timedelta(minutes=9)).isoformat()


def test_template_keys_do_not_close_and_near_limits_keeps_the_nearest() -> None:
    views = key_views(USERS, [("u1", D(5), TK - timedelta(days=1)), ("u2", D("2.49"), TK),
                              ("u3", D("2.5"), TK)], TK)
    assert [(v["key"], v["status"]) for v in views] == [
        ("u1", "breached"), ("u3", "warning"), ("u2", "ok")]  # 100%, 50%, 49.8%
    assert [v["key"] for v in near_limits(views)] == ["u1", "u3"]  # 100%, 50%; 49.8% is not
    assert [v["key"] for v in near_limits(views, top=1)] == ["u1"]
