"""Catalog.price_version finds versions by bisection: the same answer as ModelPrice.at."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from pipeline.core.catalog import Catalog, ModelPrice, PriceVersion, Timeline, load_catalog
from pipeline.errors import PricingError

UTC = timezone.utc
TICK = timedelta(microseconds=1)


def _version(name: str, start: str, end: str | None = None) -> dict:
    return {"version": name, "effective_from": start, "effective_to": end, "input": "1",
            "output": "2"}


# overlaps, a gap, an open end, a tie of dates (the one listed last wins), a bounded
# correction inside an open version, and an offset that is not UTC
TANGLED = ModelPrice.model_validate({"model": "m", "provider": "openai", "versions": [
    _version("a", "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"),
    _version("b", "2024-03-01T00:00:00Z"),
    _version("c", "2024-03-01T00:00:00Z", "2024-04-01T00:00:00+02:00"),
    _version("d", "2024-09-01T00:00:00Z", "2024-10-01T00:00:00Z"),
    _version("e", "2023-01-01T00:00:00Z", "2023-02-01T00:00:00Z"),
]})


def _instants(model: ModelPrice, rng: random.Random) -> list[datetime]:
    points = [p for v in model.versions for p in (v.effective_from, v.effective_to) if p]
    near = [p + d for p in points for d in (-TICK, timedelta(0), TICK)]
    low, high = min(points) - timedelta(days=400), max(points) + timedelta(days=400)
    spread = [low + (high - low) * rng.random() for _ in range(200)]
    return near + spread + [datetime(2019, 1, 1, tzinfo=UTC), datetime(2099, 1, 1, tzinfo=UTC)]


def _name(v: PriceVersion | None) -> str | None:
    return None if v is None else v.version


@pytest.mark.parametrize("model", [TANGLED, *load_catalog().models],
                         ids=lambda m: f"{m.provider}/{m.model}")
def test_timeline_answers_as_at_does(model: ModelPrice) -> None:
    line = Timeline.of(model)
    for when in _instants(model, random.Random(model.model)):
        assert line.at(when) is model.at(when), when


def test_tangled_history_reads_as_specified() -> None:
    line = Timeline.of(TANGLED)
    assert _name(line.at(datetime(2023, 1, 15, tzinfo=UTC))) == "e"
    assert _name(line.at(datetime(2023, 6, 1, tzinfo=UTC))) is None  # the gap
    assert _name(line.at(datetime(2024, 2, 1, tzinfo=UTC))) == "a"
    assert _name(line.at(datetime(2024, 3, 1, tzinfo=UTC))) == "c"  # tie: listed last
    # c ends at 2024-03-31T22:00Z (+02:00); b, open, takes over
    assert _name(line.at(datetime(2024, 3, 31, 21, 59, tzinfo=UTC))) == "c"
    assert _name(line.at(datetime(2024, 3, 31, 22, 0, tzinfo=UTC))) == "b"
    assert _name(line.at(datetime(2024, 9, 15, tzinfo=UTC))) == "d"
    assert _name(line.at(datetime(2030, 1, 1, tzinfo=UTC))) == "b"


def test_price_version_uses_each_catalogs_own_history() -> None:
    old = Catalog(models=[TANGLED])
    newer = TANGLED.model_copy(update={"versions": [*TANGLED.versions,
                                                    PriceVersion.model_validate(_version(
                                                        "f", "2025-01-01T00:00:00Z"))]})
    new = Catalog(models=[newer])
    when = datetime(2025, 6, 1, tzinfo=UTC)
    for _ in range(2):  # second time from the memo
        assert old.price_version("m", when, "openai")[1].version == "b"
        assert new.price_version("m", when, "openai")[1].version == "f"
    with pytest.raises(PricingError, match="no price in force"):
        old.price_version("m", datetime(2023, 6, 1, tzinfo=UTC), "openai")


def test_a_repeated_daylight_saving_hour_keeps_its_boundaries_apart() -> None:
    # New York falls back on 2025-11-02: 01:20 EDT is 05:20Z, 01:20 EST (fold=1) 06:20Z;
    # in one zone the two compare equal by wall clock, as instants they are an hour apart
    ny = ZoneInfo("America/New_York")
    hour = PriceVersion(version="v0", effective_from=datetime(2025, 11, 2, 1, 20, tzinfo=ny),
                        effective_to=datetime(2025, 11, 2, 1, 20, fold=1, tzinfo=ny),
                        input="1", output="2")
    model = ModelPrice(model="m", provider="openai", versions=[hour])
    catalog = Catalog(models=[model])
    for minute in (20, 50):
        when = datetime(2025, 11, 2, 5, minute, tzinfo=UTC)
        assert model.at(when) is hour
        assert catalog.price_version("m", when, "openai")[1] is hour
    assert Timeline.of(model).at(datetime(2025, 11, 2, 6, 20, tzinfo=UTC)) is None
