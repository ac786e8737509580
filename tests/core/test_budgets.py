from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from pipeline.core.budgets import (
    MIN_LIMIT,
    Budget,
    Period,
    breach_id,
    evaluate,
    percent_of,
    period_bounds,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NY = ZoneInfo("America/New_York")


def u(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


@pytest.mark.parametrize(
    "period, tz, at, start, end",
    [
        (Period.hour, UTC, u(2025, 3, 5, 10, 59), u(2025, 3, 5, 10), u(2025, 3, 5, 11)),
        (Period.day, UTC, u(2025, 3, 5, 23, 59), u(2025, 3, 5), u(2025, 3, 6)),
        # ISO week starts Monday (2025-03-05 is a Wednesday)
        (Period.week, UTC, u(2025, 3, 5, 12), u(2025, 3, 3), u(2025, 3, 10)),
        (Period.week, UTC, u(2025, 3, 9, 23, 59), u(2025, 3, 3), u(2025, 3, 10)),
        (Period.month, UTC, u(2025, 2, 28, 12), u(2025, 2, 1), u(2025, 3, 1)),
        (Period.month, UTC, u(2024, 12, 31, 23), u(2024, 12, 1), u(2025, 1, 1)),
        (Period.quarter, UTC, u(2025, 5, 15), u(2025, 4, 1), u(2025, 7, 1)),
        (Period.quarter, UTC, u(2025, 11, 15), u(2025, 10, 1), u(2026, 1, 1)),
        # local calendar: Berlin day starts 23:00 UTC in winter, 22:00 UTC in summer
        (Period.day, BERLIN, u(2025, 1, 10, 23, 30), u(2025, 1, 10, 23), u(2025, 1, 11, 23)),
        (Period.day, BERLIN, u(2025, 7, 10, 21, 59), u(2025, 7, 9, 22), u(2025, 7, 10, 22)),
        # spring forward (Berlin 2025-03-30): that day has 23 hours
        (Period.day, BERLIN, u(2025, 3, 30, 12), u(2025, 3, 29, 23), u(2025, 3, 30, 22)),
        # fall back (Berlin 2025-10-26): that day has 25 hours
        (Period.day, BERLIN, u(2025, 10, 26, 12), u(2025, 10, 25, 22), u(2025, 10, 26, 23)),
        # New York, both transitions
        (Period.day, NY, u(2025, 3, 9, 12), u(2025, 3, 9, 5), u(2025, 3, 10, 4)),
        (Period.day, NY, u(2025, 11, 2, 12), u(2025, 11, 2, 4), u(2025, 11, 3, 5)),
        # week spanning the fall-back change
        (Period.week, BERLIN, u(2025, 10, 29), u(2025, 10, 26, 23), u(2025, 11, 2, 23)),
        # months across DST: March in Berlin is 31 days minus one hour
        (Period.month, BERLIN, u(2025, 3, 15), u(2025, 2, 28, 23), u(2025, 3, 31, 22)),
        # hour periods in the repeated hour at fall-back are distinct
        (Period.hour, NY, u(2025, 11, 2, 5, 30), u(2025, 11, 2, 5), u(2025, 11, 2, 6)),
        (Period.hour, NY, u(2025, 11, 2, 6, 30), u(2025, 11, 2, 6), u(2025, 11, 2, 7)),
        # half-hour offset zone: local hours are not UTC hours
        (Period.hour, ZoneInfo("Asia/Kolkata"), u(2025, 1, 1, 10, 10), u(2025, 1, 1, 9, 30), u(2025, 1, 1, 10, 30)),
    ],
)
def test_period_bounds(period: Period, tz, at: datetime, start: datetime, end: datetime) -> None:
    assert period_bounds(period, tz, at) == (start, end)


@pytest.mark.parametrize("period", [p for p in Period if p is not Period.run])
@pytest.mark.parametrize("tz", [UTC, BERLIN, NY, ZoneInfo("Australia/Lord_Howe")])
def test_periods_tile_time(period: Period, tz) -> None:
    t = u(2025, 1, 1)
    for _ in range(60):
        start, end = period_bounds(period, tz, t)
        assert start <= t < end
        assert period_bounds(period, tz, end)[0] == end  # next period starts where this ends
        t = end + timedelta(minutes=17)


def budget(**kw) -> Budget:
    base = {"budget_id": "b1", "tenant_id": "acme", "limit": "100"}
    return Budget.model_validate({**base, **kw})


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"limit": "-5"}, "greater than 0"),
        ({"limit": "0"}, "greater than 0"),
        ({"pools": {"critical": "0.5", "low": "0.4"}}, "sum to 1"),
        ({"pools": {"critical": "1.5", "low": "-0.5"}}, "share"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"thresholds": ["0"]}, "out of range"),
        ({"thresholds": ["1001"]}, "out of range"),
        ({"thresholds": []}, "at least one"),
        ({"period": "decade"}, "period"),
        ({"metric": "dollars"}, "metric"),
        ({"budget_id": "has space"}, "budget_id"),
        ({"forecast": {"probability": "1.5"}}, "probability"),
        # a tiny limit made percent overflow its column (1e-15) or quantize (1e-30)
        ({"limit": "1e-15"}, "limit 0.000000000000001 is out of range: give a limit from "
                             "0.000001 to 1,000,000,000,000"),
        ({"limit": "1e-30"}, "is out of range: give a limit from 0.000001"),
        ({"limit": "1e13"}, "is out of range"),
        ({"limit": "0.0000015"}, "more than 6 decimal places"),
        ({"limit": "Infinity"}, "finite"),
        ({"thresholds": ["50.0000001"]}, "more than 6 decimal places"),
        ({"thresholds": [str(i) for i in range(1, 30)]}, "at most 20 thresholds"),
        ({"pools": {"a": "0.3333333", "b": "0.6666667"}}, "more than 6 decimal places"),
        ({"pools": {"x" * 65: "1"}}, "pool name"),
        ({"limit": "0.000001", "pools": {"a": "0.5", "b": "0.5"}},
         "below the smallest limit 0.000001"),
        ({"forecast": {"probability": "0.12345678"}}, "more than 6 decimal places"),
    ],
)
def test_invalid_budgets_refused(kw: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        budget(**kw)
    assert fragment in str(info.value)


def test_thresholds_sorted_unique() -> None:
    assert budget(thresholds=["100", "50", "50"]).thresholds == [D(50), D(100)]


NOW = u(2025, 3, 5, 12)
PERIOD = period_bounds(Period.month, UTC, NOW)


def test_evaluate_fires_each_crossed_threshold_once() -> None:
    b = budget()
    assert evaluate(b, "", PERIOD, D("49.99"), set(), now=NOW) == []
    first = evaluate(b, "", PERIOD, D("90"), set(), now=NOW, triggering_event_id="e9")
    assert [x.threshold_pct for x in first] == [D(50), D(80)]
    assert all(x.triggering_event_id == "e9" for x in first)
    fired = {x.breach_id for x in first}
    assert evaluate(b, "", PERIOD, D("95"), fired, now=NOW) == []
    last = evaluate(b, "", PERIOD, D("100"), fired, now=NOW)
    assert [(x.threshold_pct, x.severity, x.action) for x in last] == [(D(100), "critical", "alert")]


def test_hard_mode_blocks_and_pools_throttle() -> None:
    b = budget(mode="hard", pools={"critical": "0.5", "low": "0.5"})
    whole = evaluate(b, "", PERIOD, D("100"), set(), now=NOW)
    assert whole[-1].action == "block"
    pool = evaluate(b, "low", PERIOD, D("50"), set(), now=NOW)
    assert pool[-1].limit == D(50) and pool[-1].action == "throttle"
    soft = budget(pools={"critical": "0.5", "low": "0.5"})
    assert evaluate(soft, "low", PERIOD, D("50"), set(), now=NOW)[-1].action == "downgrade"


def test_breach_id_deterministic_and_distinct() -> None:
    a = breach_id("b", PERIOD[0], "", "threshold", D(80), D(100))
    assert a == breach_id("b", PERIOD[0], "", "threshold", D("80.0"), D("100.00"))
    others = {
        breach_id("c", PERIOD[0], "", "threshold", D(80), D(100)),
        breach_id("b", PERIOD[1], "", "threshold", D(80), D(100)),
        breach_id("b", PERIOD[0], "low", "threshold", D(80), D(100)),
        breach_id("b", PERIOD[0], "", "forecast", D(80), D(100)),
        breach_id("b", PERIOD[0], "", "threshold", D(50), D(100)),
        breach_id("b", PERIOD[0], "", "threshold", D(80), D(200)),
    }
    assert a not in others and len(others) == 6


def test_raising_limit_rearms() -> None:
    b = budget()
    fired = {x.breach_id for x in evaluate(b, "", PERIOD, D("60"), set(), now=NOW)}
    raised = budget(limit="200")
    assert evaluate(raised, "", PERIOD, D("60"), fired, now=NOW) == []
    again = evaluate(raised, "", PERIOD, D("100"), fired, now=NOW)
    assert [x.threshold_pct for x in again] == [D(50)]


def test_smallest_limit_evaluates_even_at_the_largest_spend_a_column_holds() -> None:
    # spent up to Decimal(38, 12)'s integer part over the smallest limit: 10^34 percent,
    # which the default 28-digit context could not quantize (the agent crash-looped)
    b = budget(limit=str(MIN_LIMIT))
    spent = D("9" * 25 + ".25")
    out = evaluate(b, "", PERIOD, spent, set(), now=NOW)
    assert [x.threshold_pct for x in out] == [D(50), D(80), D(100)]
    assert out[0].percent == D("9" * 25 + ".25") * 10**8
    assert out[0].percent < D(10) ** 34  # inside the widened Decimal(76, 6) column
    assert percent_of(D("0.25"), MIN_LIMIT) == D("25000000.000000")


def test_a_template_may_not_name_a_forecast_action() -> None:
    with pytest.raises(ValidationError, match="no forecast breaches"):
        Budget.model_validate({"budget_id": "r", "tenant_id": "t", "limit": "2",
                               "period": "run", "each": "trace_id",
                               "actions": {"forecast": "block"}})
    Budget.model_validate({"budget_id": "r", "tenant_id": "t", "limit": "2", "period": "run",
                           "each": "trace_id", "actions": {"anomaly": "block"}})
