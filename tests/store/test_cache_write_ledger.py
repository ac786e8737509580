"""5-minute and 1-hour cache writes through the Processor into the real chDB ledger, and
re-pricing that keeps them exact (issue #16). Costs are computed by hand from
claude-sonnet-4-5's list prices per 1M tokens (input 3, output 15, read 0.30, 5m write
3.75, 1h write 6)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal as D

import pytest

from pipeline.core.catalog import Catalog, load_catalog, merge
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.store.client import Store
from pipeline.store.reprice import reprice
from pipeline.store.sink import USAGE_COLUMNS, Sink
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from tests.helpers import NOW

# date-sensitive: `make test-clocks` runs it again at each instant of tests.helpers.CLOCKS
pytestmark = [pytest.mark.integration, pytest.mark.clock]
DAY = NOW - timedelta(days=2)


def ev(event_id: str, minute: int, **counts: object) -> dict:
    return {"event_id": event_id, "timestamp": (DAY + timedelta(minutes=minute)).isoformat(),
            "tenant_id": "tenant-00001", "provider": "anthropic", "model": "claude-sonnet-4-5",
            **counts}


EVENTS = [
    # 60k 5m x 3.75 + 40k 1h x 6 + 1000 out x 15 = 0.225 + 0.24 + 0.015
    ev("split", 1, input_tokens=100_000, output_tokens=1_000,
       cache_creation={"ephemeral_5m_input_tokens": 60_000,
                       "ephemeral_1h_input_tokens": 40_000}),
    # legacy attribute: all 80k writes at 6 = 0.48; 50k x 3 + 20k x 0.30 + 2000 x 15 = 0.186
    ev("legacy", 2, input_tokens=150_000, output_tokens=2_000, cache_read_input_tokens=20_000,
       cache_creation_input_tokens=80_000, attributes={"cache_ttl": "1h"}),
    # no split: 80k x 3.75 = 0.30, + 0.186
    ev("plain", 3, input_tokens=150_000, output_tokens=2_000, cache_read_input_tokens=20_000,
       cache_creation_input_tokens=80_000),
]


def process(store: Store, events: list[dict]) -> None:
    async def publish(key: str | None, value: bytes) -> None:
        raise AssertionError(f"dead letter {value!r}")

    live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=1000)
    proc = Processor(Meter(load_catalog(), load_policy()), Sink(store), store, live, publish,
                     clock=lambda: NOW)
    msgs = [RawMessage(json.dumps(e).encode(), "usage-events", 1, i)
            for i, e in enumerate(events)]
    asyncio.run(proc.process(msgs))


def stored(store: Store) -> dict[str, tuple[int, int, D, D]]:
    rows = store.rows(
        "SELECT event_id, cache_creation_input_tokens, cache_creation_1h_input_tokens, "
        f"cache_write_cost, total_cost FROM {store.database}.usage_events FINAL")
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def rollups_agree(store: Store) -> None:
    db = store.database
    ledger = store.rows(f"SELECT sum(total_cost), sum(cache_creation_input_tokens) "
                        f"FROM {db}.usage_events FINAL")[0]
    for view in ("spend_hourly", "spend_daily"):
        assert store.rows(f"SELECT sum(total_cost), sum(cache_creation_input_tokens) "
                          f"FROM {db}.{view}")[0] == ledger


def correction(cache_write_1h: str) -> Catalog:
    """claude-sonnet-4-5 with another 1-hour write price from the day before the events."""
    current = load_catalog().resolve("claude-sonnet-4-5", "anthropic")
    assert current is not None
    base = current.at(DAY)
    assert base is not None
    fixed = base.model_copy(update={"version": "fix-1h", "effective_from": DAY - timedelta(days=1),
                                    "cache_write_1h": D(cache_write_1h)})
    overlay = Catalog(models=[current.model_copy(update={"versions": [fixed]})])
    return merge(load_catalog(), overlay)


def test_ledger_stores_the_1h_writes_and_prices_them_apart(store: Store) -> None:
    process(store, EVENTS)
    assert stored(store) == {
        "split": (100_000, 40_000, D("0.465"), D("0.48")),
        "legacy": (80_000, 80_000, D("0.48"), D("0.666")),  # resolved, stored as priced
        "plain": (80_000, 0, D("0.30"), D("0.486")),
    }
    rollups_agree(store)


def test_reprice_keeps_1h_writes_exact(store: Store) -> None:
    process(store, EVENTS)
    # a row stored before migration 007 (no 1h column: reads 0) by a meter that ignored
    # attributes.cache_ttl: its writes were billed at the 5-minute rate
    db = store.database
    template = list(store.query(f"SELECT {', '.join(USAGE_COLUMNS)} FROM {db}.usage_events "
                                "FINAL WHERE event_id = 'plain'").result_rows[0])
    old = dict(zip(USAGE_COLUMNS, template, strict=True))
    old.update(event_id="old-legacy", attributes={"cache_ttl": "1h"},
               cache_creation_1h_input_tokens=0)
    store.insert("usage_events", [[old[c] for c in USAGE_COLUMNS]], USAGE_COLUMNS)
    assert stored(store)["old-legacy"] == (80_000, 0, D("0.30"), D("0.486"))

    # same catalog: only the old row changes (its 80k writes are 1-hour writes): 0.666
    done = reprice(store, load_catalog(), DAY - timedelta(days=1), NOW, NOW, dry_run=False)
    assert done["events_repriced"] == 1
    assert stored(store)["old-legacy"] == (80_000, 0, D("0.48"), D("0.666"))
    rollups_agree(store)

    # a correction of the 1-hour write price (6 -> 7.5) re-prices exactly the 1-hour lines:
    # split 40k x 7.5 = 0.30 (+0.225 5m) ; legacy and old-legacy 80k x 7.5 = 0.60
    done = reprice(store, correction("7.5"), DAY - timedelta(days=1), NOW, NOW, dry_run=False)
    assert done["events_repriced"] == 3
    assert stored(store) == {
        "split": (100_000, 40_000, D("0.525"), D("0.54")),
        "legacy": (80_000, 80_000, D("0.60"), D("0.786")),
        "plain": (80_000, 0, D("0.30"), D("0.486")),
        "old-legacy": (80_000, 0, D("0.60"), D("0.786")),
    }
    rollups_agree(store)
    again = reprice(store, correction("7.5"), DAY - timedelta(days=1), NOW, NOW, dry_run=False)
    assert again["events_repriced"] == 0


def test_reprice_keeps_rows_a_price_past_the_ledger_would_overflow(store: Store) -> None:
    process(store, EVENTS)
    before = stored(store)
    # 40k and 80k 1-hour writes at 10^30 per million: costs no Decimal(38, 12) holds; the
    # rows stay as stored (counted unpriced) instead of the rewrite failing for good
    done = reprice(store, correction("1E+30"), DAY - timedelta(days=1), NOW, NOW, dry_run=False)
    assert (done["events_repriced"], done["unpriced"]) == (0, 2)
    assert stored(store) == before
    rollups_agree(store)
