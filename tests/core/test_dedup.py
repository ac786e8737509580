from datetime import datetime, timedelta, timezone

from pipeline.core.dedup import DedupIndex

T0 = datetime(2025, 6, 10, 12, tzinfo=timezone.utc)


def test_membership_and_coverage() -> None:
    d = DedupIndex(max_ids=1000, horizon=timedelta(days=7))
    assert d.covers(T0 - timedelta(days=100))  # never evicted: memory covers everything
    d.add("a", T0)
    d.add("a", T0)
    assert "a" in d and "b" not in d and len(d) == 1


def test_horizon_expiry_moves_the_watermark() -> None:
    d = DedupIndex(max_ids=1000, horizon=timedelta(days=2))
    for i in range(5):
        d.add(f"e{i}", T0 - timedelta(days=i))
    d.expire(T0)
    assert "e0" in d and "e1" in d and "e2" in d
    assert "e3" not in d and "e4" not in d
    assert not d.covers(T0 - timedelta(days=3)) and d.covers(T0 - timedelta(days=1))


def test_cap_evicts_oldest_days_first() -> None:
    d = DedupIndex(max_ids=3, horizon=timedelta(days=30))
    for i in range(6):
        d.add(f"e{i}", T0 - timedelta(days=5 - i))  # e5 newest
    d.expire(T0)
    assert len(d) <= 3
    assert "e5" in d and "e0" not in d
    assert d.watermark is not None and not d.covers(T0 - timedelta(days=5))
