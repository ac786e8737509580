"""The metering step against the real chDB ledger: exact totals under duplicates,
reordering, late data, bad input and a restart with replay."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from pipeline.core.spend import window_start
from pipeline.store.client import Store
from pipeline.store.sink import Sink
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from tests.helpers import HOUR, METER, NOW, make_processor, messages, partition_of, traffic

# date-sensitive: `make test-clocks` runs it again at each instant of tests.helpers.CLOCKS
pytestmark = [pytest.mark.integration, pytest.mark.clock]










def truth(events: list[dict]) -> dict[str, tuple[Decimal, int]]:
    """Per-tenant exact (cost, count) computed with the pure core, independent of the stream."""
    out: dict[str, list] = defaultdict(lambda: [Decimal(0), 0])
    for e in {e["event_id"]: e for e in events}.values():
        p = METER.meter_object(e, now=NOW)
        out[p.tenant_id][0] += p.total_cost
        out[p.tenant_id][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def ledger(store: Store) -> dict[str, tuple[Decimal, int]]:
    rows = store.rows(f"SELECT tenant_id, sum(total_cost), count() FROM {store.database}.usage_events "
                      "FINAL GROUP BY tenant_id")
    return {t: (c, n) for t, c, n in rows}


BAD = [
    b"{not json", b"\xff\xfe", b"[]", b'{"event_id": "x"}',
    json.dumps({"event_id": "u1", "timestamp": NOW.isoformat(), "tenant_id": "tenant-00000",
                "provider": "x", "model": "no-such-model", "input_tokens": 1,
                "output_tokens": 1}).encode(),
    json.dumps({"event_id": "n1", "timestamp": NOW.isoformat(), "tenant_id": "tenant-00000",
                "provider": "openai", "model": "gpt-4o", "input_tokens": -1,
                "output_tokens": 1, "input_text": "SECRET PROMPT"}).encode(),
]


async def run(proc: Processor, msgs: list[RawMessage], size: int = 50) -> None:
    for i in range(0, len(msgs), size):
        await proc.process(msgs[i:i + size])


def test_exact_under_duplicates_shuffle_late_and_bad_input(store: Store) -> None:
    import asyncio

    recent, old = traffic()
    proc, published = make_processor(store)
    # one on-time event per partition first, so watermarks exist before old events arrive
    leaders = list({partition_of(e): e for e in recent}.values())
    rest = recent + old + recent + old  # every event twice
    random.Random(2).shuffle(rest)
    stream = [*leaders, *rest]
    msgs = messages(stream)
    bad = [RawMessage(b, "usage-events", 0, 10_000 + i) for i, b in enumerate(BAD)]
    msgs[len(msgs) // 2:len(msgs) // 2] = bad
    asyncio.run(run(proc, msgs))

    expected = truth(recent + old)
    assert ledger(store) == expected
    m = proc.metrics
    assert m.events == len(recent) + len(old)
    assert m.duplicates == len(stream) - len(recent) - len(old)
    assert len(leaders) == 4
    late = store.rows(f"SELECT count() FROM {store.database}.usage_events FINAL WHERE late")
    assert late == [(len(old),)]
    assert m.late == len(old)

    # dead letters: one per bad payload, reason coded, text never stored or forwarded
    reasons = dict(store.rows(f"SELECT reason_code, count() FROM {store.database}.dlq_events "
                              "FINAL GROUP BY reason_code"))
    assert reasons == {"invalid_json": 2, "schema": 2, "unknown_model": 1, "negative_tokens": 1}
    assert len(published) == 6
    assert all(b"SECRET" not in p for p in published)
    assert store.rows(f"SELECT count() FROM {store.database}.dlq_events WHERE raw LIKE '%SECRET%'") == [(0,)]

    # live windows hold exactly the on-time events, per tenant and window
    for kind in ("hour", "day"):
        want: dict[tuple[str, datetime], Decimal] = defaultdict(Decimal)
        for e in {e["event_id"]: e for e in recent}.values():
            p = METER.meter_object(e, now=NOW)
            want[(p.tenant_id, window_start(kind, p.timestamp))] += p.total_cost
        for (tenant, start), cost in want.items():
            got = proc.live.window(tenant, kind, start)
            assert got is not None and got.cost == cost, (kind, tenant, start)

    # rollups agree with the exact ledger query
    hourly = dict(store.rows(f"SELECT tenant_id, sum(total_cost) FROM {store.database}.usage_hourly GROUP BY tenant_id"))
    daily = dict(store.rows(f"SELECT tenant_id, sum(events) FROM {store.database}.usage_daily GROUP BY tenant_id"))
    assert hourly == {t: c for t, (c, _) in expected.items()}
    assert daily == {t: n for t, (_, n) in expected.items()}

    # restart: fresh live state rebuilt from the ledger, then a full replay changes nothing
    proc2, _ = make_processor(store)
    asyncio.run(proc2.rebuild({0, 1, 2, 3}))
    for kind in ("hour",):
        for tenant in expected:
            a = proc.live.window(tenant, kind, HOUR)
            b = proc2.live.window(tenant, kind, HOUR)
            assert (a.cost if a else None) == (b.cost if b else None)
    asyncio.run(run(proc2, msgs))
    assert proc2.metrics.events == 0
    assert ledger(store) == expected


def test_dedup_beyond_memory_asks_the_ledger(store: Store) -> None:
    import asyncio

    recent, _ = traffic(seed=5, n=300)
    # spread over many days so the tiny index must evict, then replay everything
    for i, e in enumerate(recent):
        e["timestamp"] = (NOW - timedelta(days=i % 6, minutes=i % 50)).isoformat()
    proc, _ = make_processor(store, max_ids=1000)
    proc.live.max_ids = 1000
    msgs = messages(recent)
    asyncio.run(run(proc, msgs))
    for st in proc.live.partitions.values():
        st.dedup.max_ids = 10  # force eviction: memory now covers almost nothing
        st.dedup.expire(NOW)
        assert st.dedup.watermark is not None
    asyncio.run(run(proc, msgs))
    assert proc.metrics.events == len(recent)
    assert ledger(store) == truth(recent)


def test_group_commit_merges_batches_staged_during_an_insert(store: Store) -> None:
    """While one insert runs, the next batches are staged and then written by one insert;
    each batch is acked only once its rows are durable, and in order."""
    import asyncio
    import time as _time

    class SlowStore:
        def __init__(self) -> None:
            self.inserts: list[int] = []

        def insert(self, table: str, rows: list, *args: object, **kwargs: object) -> None:
            if table == "usage_events":
                self.inserts.append(len(rows))
                _time.sleep(0.3)  # a slow insert (runs in the sink's thread)
            store.insert(table, rows, *args, **kwargs)  # type: ignore[arg-type]

        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

    slow = SlowStore()
    live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=100_000)

    async def nowhere(key: str | None, value: bytes) -> None:
        return None

    proc = Processor(METER, Sink(slow), slow, live, nowhere,  # type: ignore[arg-type]
                     clock=lambda: NOW)
    recent, _ = traffic(seed=9, n=300)
    msgs = messages(recent)
    batches = [msgs[i:i + 30] for i in range(0, len(msgs), 30)]
    acked: list[int] = []

    async def run() -> None:
        for i, batch in enumerate(batches):
            async def ack(i: int = i) -> None:
                ids = [json.loads(m.value)["event_id"] for m in batches[i]]
                n = store.rows(f"SELECT count() FROM {store.database}.usage_events "
                               "WHERE event_id IN %(ids)s", parameters={"ids": ids})[0][0]
                assert n == len(set(ids)), "acked before durable"
                acked.append(i)

            await proc.submit(batch, ack)
            await asyncio.sleep(0.01)  # the agent waiting for its next take
        await proc.drain()

    asyncio.run(run())
    assert acked == list(range(len(batches)))
    assert sum(slow.inserts) == len({e["event_id"] for e in recent})
    # the first batch is written alone; the nine staged during its insert share one
    assert slow.inserts[0] == 30 and len(slow.inserts) < len(batches)
    truth = sum((METER.meter_object(e, now=NOW).total_cost for e in recent), Decimal(0))
    assert store.rows(f"SELECT sum(total_cost) FROM {store.database}.usage_hourly") == [(truth,)]
