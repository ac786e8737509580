"""The Processor's exactness rules on the in-memory doubles of pipeline/testing.py.

No chDB, no broker: dedup, group commit, acks after durable, moved events and budget
crossings, in milliseconds. The same rules against the real ClickHouse stay in
test_processor.py, test_budgets_processor.py, test_budget_isolation.py and friends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from pipeline.core.budgets import Budget
from pipeline.errors import StoreWriteFailed
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from pipeline.testing import InMemoryLedger, ListForwarder, ListPublisher, SettableClock
from tests.helpers import METER, NOW

# budgets are per day: `make test-clocks` runs these at a month end, a year end, DST days too
pytestmark = pytest.mark.clock
TIMEOUT_S = 10


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


async def ticks(n: int = 10) -> None:
    """Let every task that can run, run (the writer reaches its held insert)."""
    for _ in range(n):
        await asyncio.sleep(0)


class Rig:
    """A Processor on an in-memory ledger, list publishers and a settable clock."""

    def __init__(self, ledger: InMemoryLedger | None = None, *,
                 partition_of: Callable[[str], int] = lambda tenant: 0,
                 forward: ListForwarder | None = None) -> None:
        self.ledger = ledger if ledger is not None else InMemoryLedger()
        self.dlq = ListPublisher()
        self.breaches = ListPublisher()
        self.clock = SettableClock(NOW)
        self.live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7),
                              max_ids=10_000)
        self.live.get(0)  # this worker owns partition 0
        self.proc = Processor(METER, self.ledger, self.ledger, self.live, self.dlq,
                              clock=self.clock, publish_breach=self.breaches,
                              partition_of=partition_of, forward=forward)
        self.offset = 0

    def batch(self, *events: dict[str, Any], partition: int = 0) -> list[RawMessage]:
        out = []
        for e in events:
            out.append(RawMessage(json.dumps(e).encode(), "usage-events", partition,
                                  self.offset))
            self.offset += 1
        return out

    def stored(self) -> list[str]:
        return [r["event_id"] for r in self.ledger.usage]

    def fired(self) -> list[tuple[str, Decimal]]:
        return [(b["budget_id"], Decimal(b["threshold_pct"]))
                for b in (json.loads(v) for _, v in self.breaches.sent)]


def event(event_id: str, *, tenant: str = "acme", tokens: int = 1000,
          ago: timedelta = timedelta(0)) -> dict[str, Any]:
    return {"event_id": event_id, "timestamp": (NOW - ago).isoformat(), "tenant_id": tenant,
            "provider": "openai", "model": "gpt-4o", "input_tokens": tokens,
            "output_tokens": 0}


def day_budget(budget_id: str, limit: str, **kw: Any) -> Budget:
    return Budget.model_validate({"budget_id": budget_id, "tenant_id": "acme",
                                  "limit": limit, "period": "day", **kw})


def test_dedup_within_a_batch_and_across_batches() -> None:
    rig = Rig()
    run(rig.proc.process(rig.batch(event("e1"), event("e2"), event("e1"))))
    run(rig.proc.process(rig.batch(event("e2"), event("e3"))))
    assert rig.stored() == ["e1", "e2", "e3"]
    m = rig.proc.metrics
    assert (m.messages, m.events, m.duplicates) == (5, 3, 2)
    assert rig.ledger.reads["existing_ids"] == 0  # memory covered them: no ledger lookup


def test_dedup_beyond_memory_asks_the_ledger() -> None:
    ledger = InMemoryLedger()
    earlier = Rig(ledger)  # a previous owner of partition 0 stored e-old
    run(earlier.proc.process(earlier.batch(event("e-old", ago=timedelta(hours=2)))))
    rig = Rig(ledger)
    # memory answers only from an hour ago on (as after a rebuild that hit max_ids)
    rig.live.get(0).dedup.watermark = NOW - timedelta(hours=1)
    run(rig.proc.process(rig.batch(event("e-old", ago=timedelta(hours=2)),
                                   event("e-older", ago=timedelta(hours=3)),
                                   event("e-new"))))
    assert rig.stored() == ["e-old", "e-new", "e-older"]  # e-old once; e-older was unknown
    assert ledger.reads["existing_ids"] == 1  # one lookup for both old ids
    assert rig.proc.metrics.duplicates == 1


def test_group_commit_merges_batches_staged_during_a_slow_insert_and_acks_after_durable(
        ) -> None:
    rig = Rig()
    batches = [rig.batch(*(event(f"b{i}-{j}") for j in range(i + 2))) for i in range(4)]
    acked: list[int] = []

    async def scenario() -> None:
        rig.ledger.hold()  # the first insert is slow
        for i, batch in enumerate(batches):
            async def ack(i: int = i) -> None:
                ids = {json.loads(m.value or b"")["event_id"] for m in batches[i]}
                assert ids <= set(rig.stored()), f"batch {i} acked before it was durable"
                acked.append(i)

            await rig.proc.submit(batch, ack)
            await ticks()  # the writer takes what is pending and waits in its insert
            assert acked == [] and rig.stored() == []
        rig.ledger.release()
        await rig.proc.drain()

    run(scenario())
    assert acked == [0, 1, 2, 3]
    # the first batch alone; the three staged while it was being written in one insert
    assert rig.ledger.inserts == [2, 3 + 4 + 5]
    assert rig.proc.metrics.batches == 2 and rig.proc.metrics.events == 14


def test_a_failed_insert_acks_nothing_and_surfaces_the_error() -> None:
    rig = Rig()
    rig.ledger.fail_next(1, terminal=True)
    acked: list[int] = []

    async def ack() -> None:
        acked.append(1)

    async def scenario() -> None:
        await rig.proc.submit(rig.batch(event("e1")), ack)
        with pytest.raises(StoreWriteFailed, match="usage_events for good"):
            await rig.proc.drain()
        with pytest.raises(StoreWriteFailed):  # and the next batch is refused, not staged
            await rig.proc.submit(rig.batch(event("e2")), ack)

    run(scenario())
    assert acked == [] and rig.stored() == []
    assert not rig.ledger.healthy and rig.ledger.failure is not None


def test_a_transient_insert_failure_is_retried_and_a_repeated_insert_is_dropped() -> None:
    rig = Rig()
    rig.ledger.fail_next(2)

    async def scenario() -> None:
        staged = await rig.proc.stage(rig.batch(event("e1"), event("e2")))
        await rig.proc.commit(staged)
        # the same insert again (a retry after a timeout that had landed): its token drops it
        await rig.proc.writer.commit(staged)

    run(scenario())
    assert rig.stored() == ["e1", "e2"]
    assert rig.ledger.failures == 2 and rig.ledger.healthy and rig.ledger.dropped == 1


def test_budget_crossings_fire_each_threshold_once() -> None:
    ledger = InMemoryLedger()
    rig = Rig(ledger)
    b = day_budget("b1", "1")  # $1/day; 100k gpt-4o input tokens cost $0.25
    run(rig.proc.budget_changed("b1", b))
    quarter = [event(f"q{i}", tokens=100_000) for i in range(4)]
    run(rig.proc.process(rig.batch(*quarter[:2])))  # $0.50: 50%
    assert rig.fired() == [("b1", Decimal(50))]
    run(rig.proc.process(rig.batch(quarter[2])))  # $0.75: nothing new
    run(rig.proc.process(rig.batch(quarter[3], *quarter)))  # $1.00 (the replays are dups)
    assert rig.fired() == [("b1", Decimal(50)), ("b1", Decimal(80)), ("b1", Decimal(100))]
    run(rig.proc.budget_changed("b1", b))  # replayed unchanged: nothing
    assert len(ledger.rows("budget_breaches")) == 3
    # a restarted worker catches up from the ledger: what fired is known, nothing repeats
    again = Rig(ledger)
    again.proc.book.put(b)
    run(again.proc.rebuild({0}))
    assert again.fired() == [] and len(ledger.rows("budget_breaches")) == 3
    spent = again.proc.tracker.periods
    assert [ps.spent[""] for ps in spent.values()] == [Decimal("1.00")]


def test_a_failed_budget_is_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.stream.budget_book as budget_book

    real = budget_book.evaluate

    def evaluate(b: Budget, *args: Any, **kwargs: Any) -> Any:
        if b.budget_id == "cursed":
            raise KeyError("fault injected")
        return real(b, *args, **kwargs)

    monkeypatch.setattr(budget_book, "evaluate", evaluate)
    rig = Rig()
    run(rig.proc.budget_changed("cursed", day_budget("cursed", "0.1")))
    run(rig.proc.budget_changed("fine", day_budget("fine", "0.1")))
    run(rig.proc.process(rig.batch(event("e1", tokens=100_000), event("c1", tenant="other"))))
    assert rig.proc.failed_budgets == {"cursed": "evaluation raised KeyError: 'fault injected'"}
    assert [bid for bid, _ in rig.fired()] == ["fine"] * 3
    assert [(r["budget_id"], r["failed"]) for r in rig.ledger.rows("budget_failures")] == [
        ("cursed", True)]
    run(rig.proc.process(rig.batch(event("e2"), event("c2", tenant="other"))))
    assert rig.stored() == ["e1", "c1", "e2", "c2"]  # metering goes on for everyone
    assert [r[0] for r in run(rig.proc.status_rows(NOW))] == ["fine"]


def test_moved_events_are_acked_only_after_the_forward_delivery_resolves() -> None:
    forward = ListForwarder(hold=True)
    rig = Rig(partition_of=lambda tenant: 1 if tenant == "elsewhere" else 0, forward=forward)
    acked: list[int] = []

    async def ack() -> None:
        acked.append(1)

    async def scenario() -> None:
        await rig.proc.submit(rig.batch(event("m1", tenant="elsewhere"), event("k1")), ack)
        await ticks()
        assert [p for p, _, _ in forward.sent] == [1] and forward.pending == 1
        assert acked == [] and rig.stored() == []  # not even written before the re-send
        forward.release()
        await rig.proc.drain()

    run(scenario())
    assert acked == [1]
    assert rig.stored() == ["k1"] and rig.proc.metrics.moved == 1


def test_breaches_are_delivered_before_their_batch_is_acked() -> None:
    rig = Rig()
    run(rig.proc.budget_changed("b1", day_budget("b1", "0.1")))
    rig.breaches.hold()
    acked: list[int] = []

    async def ack() -> None:
        acked.append(1)

    async def scenario() -> None:
        await rig.proc.submit(rig.batch(event("e1", tokens=100_000)), ack)
        await ticks()
        assert len(rig.breaches.sent) == 3 and acked == []  # sent early, not confirmed
        assert rig.ledger.rows("budget_breaches") == []  # mirrored only once delivered
        rig.breaches.release()
        await rig.proc.drain()

    run(scenario())
    assert acked == [1] and len(rig.ledger.rows("budget_breaches")) == 3
