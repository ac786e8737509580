"""The report's period starts (UTC), at month and year edges and on DST change days."""

from datetime import datetime, timezone

import pytest

from pipeline.errors import ConfigError
from pipeline.store.report import utc_period_start

UTC = timezone.utc


@pytest.mark.parametrize(("period", "now", "start"), [
    ("month", datetime(2027, 1, 1, 0, 5, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    ("day", datetime(2027, 1, 1, 0, 5, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    ("week", datetime(2027, 1, 1, 0, 5, tzinfo=UTC), datetime(2026, 12, 28, tzinfo=UTC)),
    ("month", datetime(2026, 12, 31, 23, 55, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
    ("day", datetime(2026, 3, 8, 7, 30, tzinfo=UTC), datetime(2026, 3, 8, tzinfo=UTC)),
    ("day", datetime(2026, 10, 25, 1, 30, tzinfo=UTC), datetime(2026, 10, 25, tzinfo=UTC)),
    ("week", datetime(2026, 11, 1, 6, 30, tzinfo=UTC), datetime(2026, 10, 26, tzinfo=UTC)),
])
def test_utc_period_start(period: str, now: datetime, start: datetime) -> None:
    assert utc_period_start(period, now) == start


def test_unknown_period_refused() -> None:
    with pytest.raises(ConfigError, match="use day, week or month"):
        utc_period_start("quarter", datetime(2027, 1, 1, tzinfo=UTC))
