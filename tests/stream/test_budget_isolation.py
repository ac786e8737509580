"""One bad budget value never stops metering for everyone (issue 17), on the real chDB."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from pipeline.core.budgets import MIN_LIMIT, Budget
from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.store.client import Store
from pipeline.store.sink import Sink
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from tests.helpers import NOW

# date-sensitive: `make test-clocks` runs it again at each instant of tests.helpers.CLOCKS
pytestmark = [pytest.mark.integration, pytest.mark.clock]
METER = Meter(load_catalog(), load_policy())
TIMEOUT_S = 30  # the old sink retried an overflowing breach row forever: fail, do not hang


class Harness:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.breaches: list[dict[str, Any]] = []
        self.offset = 0
        self.n = 0

        async def dlq(key: str | None, value: bytes) -> None:
            return None

        async def breach(key: str | None, value: bytes) -> None:
            self.breaches.append(json.loads(value))

        live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=10_000)
        self.proc = Processor(METER, Sink(store, max_backoff_s=0.2), store, live, dlq,
                              publish_breach=breach, clock=lambda: NOW)
        live.get(0)  # this worker owns partition 0, where every tenant lands here

    def run(self, coro: Any) -> Any:
        return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))

    def event(self, tenant: str, tokens: int, model: str = "gpt-4o") -> dict[str, Any]:
        self.n += 1
        return {"event_id": f"iso-{self.n}", "timestamp": NOW.isoformat(),
                "tenant_id": tenant, "provider": "openai", "model": model,
                "input_tokens": tokens, "output_tokens": 0}

    def send(self, *events: dict[str, Any]) -> None:
        msgs = []
        for e in events:
            msgs.append(RawMessage(json.dumps(e).encode(), "usage-events", 0, self.offset))
            self.offset += 1
        self.run(self.proc.process(msgs))

    def put(self, budget: Budget) -> None:
        self.run(self.proc.budget_changed(budget.budget_id, budget))

    def stored(self, tenant: str) -> int:
        return int(self.store.rows(
            f"SELECT count() FROM {self.store.database}.usage_events FINAL "
            "WHERE tenant_id = %(t)s", parameters={"t": tenant})[0][0])

    def failures(self) -> list[tuple[Any, ...]]:
        return self.store.rows(
            f"SELECT budget_id, failed, reason FROM {self.store.database}.budget_failures "
            "FINAL ORDER BY budget_id")


def budget(budget_id: str, limit: str, **kw: Any) -> Budget:
    return Budget.model_validate({"budget_id": budget_id, "tenant_id": "acme",
                                  "limit": limit, "period": "day", **kw})


def test_smallest_limit_against_a_quarter_dollar_call_breaches_and_metering_goes_on(
        store: Store) -> None:
    h = Harness(store)
    h.put(budget("tiny-cost", str(MIN_LIMIT)))
    # 100,000 tokens over a 0.000001-token limit: percent 10^13, past the old Decimal(18, 6)
    h.put(budget("tiny-tokens", str(MIN_LIMIT), metric="tokens"))
    h.send(h.event("acme", 100_000))  # $0.25 on gpt-4o
    h.send(h.event("control", 1000), h.event("acme", 10))
    assert h.stored("acme") == 2 and h.stored("control") == 1
    rows = store.rows(f"SELECT budget_id, threshold_pct, spent, percent FROM "
                      f"{store.database}.budget_breaches FINAL WHERE threshold_pct = 100 "
                      "ORDER BY budget_id")
    assert rows == [("tiny-cost", Decimal(100), Decimal("0.25"), Decimal("25000000")),
                    ("tiny-tokens", Decimal(100), Decimal(100_000), Decimal("10000000000000"))]
    assert h.proc.failed_budgets == {} and h.proc.sink.failure is None


def test_a_budget_whose_evaluation_raises_is_marked_failed_and_the_rest_goes_on(
        store: Store) -> None:
    h = Harness(store)
    # a limit validation refuses (as if mirrored before the bounds existed): its first
    # breach is 2.5 x 10^81 percent, which no column holds and the old code could not
    # even quantize (the agent crash-looped on the same offsets)
    broken = Budget.model_construct(**{**budget("broken", "1").__dict__,
                                       "limit": Decimal("1e-80")})
    h.put(broken)
    h.put(budget("fine", "0.4"))
    assert h.proc.failed_budgets == {}
    h.send(h.event("acme", 100_000), h.event("control", 100))  # $0.25: 62.5% of "fine"
    assert set(h.proc.failed_budgets) == {"broken"}
    assert "does not fit the ledger" in h.proc.failed_budgets["broken"]
    h.send(h.event("acme", 100_000), h.event("control", 100))  # $0.50: 125% of "fine"
    assert h.stored("acme") == 2 and h.stored("control") == 2
    assert [(b["budget_id"], Decimal(b["threshold_pct"])) for b in h.breaches] == [
        ("fine", Decimal(50)), ("fine", Decimal(80)), ("fine", Decimal(100))]
    [(bid, failed, reason)] = h.failures()
    assert (bid, failed) == ("broken", True) and "does not fit the ledger" in reason
    # a new, valid version clears the failure and is evaluated from the ledger
    h.put(budget("broken", "1"))
    assert h.proc.failed_budgets == {}
    assert h.failures() == [("broken", False, "")]
    assert ("broken", Decimal(50)) in [(b["budget_id"], Decimal(b["threshold_pct"]))
                                      for b in h.breaches]


def test_a_faked_evaluate_that_raises_fails_only_its_budget(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.stream.budget_book as budget_state

    real = budget_state.evaluate

    def evaluate(b: Budget, *args: Any, **kwargs: Any) -> Any:
        if b.budget_id == "cursed":
            raise KeyError("fault injected")
        return real(b, *args, **kwargs)

    monkeypatch.setattr(budget_state, "evaluate", evaluate)
    h = Harness(store)
    h.put(budget("cursed", "0.1"))
    h.put(budget("fine", "0.1"))
    h.send(h.event("acme", 100_000), h.event("control", 10))
    assert h.proc.failed_budgets == {"cursed": "evaluation raised KeyError: 'fault injected'"}
    assert [b["budget_id"] for b in h.breaches] == ["fine"] * 3
    h.send(h.event("acme", 10), h.event("control", 10))
    assert h.stored("acme") == 2 and h.stored("control") == 2
    rows = h.run(h.proc.status_rows(NOW))
    assert [r[0] for r in rows] == ["fine"]  # status skips the failed one, too


def test_an_invalid_budget_from_the_topic_or_mirror_is_reported_and_skipped(
        store: Store) -> None:
    from pipeline.stream.budget_feed import parse_budget

    h = Harness(store)
    h.put(budget("b1", "10"))
    raw = json.dumps({"budget_id": "b1", "tenant_id": "acme", "limit": "1e-15"}).encode()
    parsed = parse_budget(b"b1", raw)
    assert parsed is not None and parsed.budget is None and parsed.tenant_id == "acme"
    assert parsed.problem is not None and "limit" in parsed.problem \
        and "out of range" in parsed.problem
    h.run(h.proc.budget_invalid(parsed.budget_id, parsed.tenant_id, parsed.problem))
    assert "b1" not in h.proc.book.budgets and "b1" in h.proc.failed_budgets
    h.send(h.event("acme", 100_000))
    assert h.stored("acme") == 1 and h.breaches == []
    assert [r[:2] for r in h.failures()] == [("b1", True)]


class RefusingStore:
    """The real store, except that ClickHouse refuses every budget_breaches insert for good
    (as it refused the overflowing percent): a terminal error of one table."""

    def __init__(self, real: Store) -> None:
        self.real = real
        self.refused = 0

    def insert(self, table: str, *args: Any, **kwargs: Any) -> None:
        if table == "budget_breaches":
            from clickhouse_connect.driver.exceptions import DatabaseError

            self.refused += 1
            raise DatabaseError("Code: 407. DB::Exception: Decimal convert overflow "
                                "(fault injected). (DECIMAL_OVERFLOW)", code=407,
                                name="DECIMAL_OVERFLOW")
        self.real.insert(table, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_terminal_insert_error_stops_the_writer_at_once_with_the_reason(store: Store) -> None:
    from pipeline.errors import StoreWriteFailed

    refusing = RefusingStore(store)
    h = Harness(store)
    h.proc.sink = Sink(refusing, max_backoff_s=0.2)  # type: ignore[arg-type]
    h.put(budget("fine", "0.1"))
    msgs = [RawMessage(json.dumps(h.event("acme", 100_000)).encode(), "usage-events", 0, 0)]
    acked: list[int] = []

    async def run() -> None:
        async def ack() -> None:
            acked.append(1)

        await h.proc.submit(msgs, ack)
        await h.proc.drain()

    with pytest.raises(StoreWriteFailed, match="budget_breaches for good"):
        h.run(run())
    assert refusing.refused == 1  # no retry loop holding every tenant's metering
    assert acked == []  # the batch's offsets are not committed: a restart replays it
    assert h.proc.sink.failure is not None and "DECIMAL_OVERFLOW" in h.proc.sink.failure
