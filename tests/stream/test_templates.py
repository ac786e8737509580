"""Budget templates (--each KEY) and run budgets (period run) in the Processor, on the
in-memory doubles of pipeline/testing.py (no chDB, no broker; one chDB test at the end for
the keyed ledger queries)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Coroutine
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pipeline.core.budgets import RUN_START, Budget, period_bounds
from pipeline.store.ledger import ClickHouseLedger
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from pipeline.testing import InMemoryLedger, ListPublisher, SettableClock
from tests.helpers import METER

T0 = datetime(2026, 6, 17, 10, 0, tzinfo=timezone.utc)  # a fixed instant, mid-day
M = 1_000_000  # gpt-4o input: $2.50 per million tokens


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


class Rig:
    """A Processor owning partition 0 on an in-memory ledger and a settable clock."""

    def __init__(self, ledger: InMemoryLedger | None = None, at: datetime = T0) -> None:
        self.ledger = ledger if ledger is not None else InMemoryLedger()
        self.breaches = ListPublisher()
        self.clock = SettableClock(at)
        self.live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7),
                              max_ids=100_000)
        self.live.get(0)
        self.proc = Processor(METER, self.ledger, self.ledger, self.live, ListPublisher(),
                              clock=self.clock, publish_breach=self.breaches,
                              partition_of=lambda tenant: 0)
        self.offset = 0
        self.n = 0

    def send(self, *events: dict[str, Any]) -> None:
        batch = []
        for e in events:
            batch.append(RawMessage(json.dumps(e).encode(), "usage-events", 0, self.offset))
            self.offset += 1
        run(self.proc.process(batch))

    def event(self, tokens: int = M, *, event_id: str | None = None,
              at: datetime | None = None, **fields: Any) -> dict[str, Any]:
        self.n += 1
        return {"event_id": event_id or f"e{self.n}", "tenant_id": "acme",
                "timestamp": (at or self.clock.now).isoformat(), "provider": "openai",
                "model": "gpt-4o", "input_tokens": tokens, "output_tokens": 0, **fields}

    def fired(self) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in self.breaches.sent]

    def put(self, budget: Budget) -> None:
        run(self.proc.budget_changed(budget.budget_id, budget))


USERS = Budget(budget_id="users", tenant_id="acme", limit=Decimal(5), period="day",
               each="user_id")
RUNS = Budget(budget_id="runs", tenant_id="acme", limit=Decimal(2), period="run",
              each="trace_id", idle_timeout_s=600, thresholds=[Decimal(50), Decimal(100)])


def crossings(fired: list[dict[str, Any]]) -> list[tuple[str, Decimal]]:
    return sorted((b["key"], Decimal(b["threshold_pct"])) for b in fired)


def test_three_users_each_get_their_own_thresholds_naming_the_user() -> None:
    rig = Rig()
    rig.put(USERS)
    rig.send(rig.event(user_id="ann"), rig.event(user_id="bob"))  # $2.50 each: 50%
    assert Decimal(rig.ledger.usage[0]["total_cost"]) == Decimal("2.5")
    assert crossings(rig.fired()) == [("ann", Decimal(50)), ("bob", Decimal(50))]
    rig.send(rig.event(M * 6 // 10, user_id="ann"), rig.event(M * 4 // 10, user_id="ann"),
             rig.event(user_id="cat"), rig.event(M * 2, user_id="cat"))
    assert crossings(rig.fired()) == [
        ("ann", Decimal(50)), ("ann", Decimal(80)), ("ann", Decimal(100)),
        ("bob", Decimal(50)),
        ("cat", Decimal(50)), ("cat", Decimal(80)), ("cat", Decimal(100))]
    fired = rig.fired()
    assert all(b["each"] == "user_id" and b["budget_id"] == "users" for b in fired)
    assert len({b["breach_id"] for b in fired}) == len(fired)  # the key is in the id
    ann100 = next(b for b in fired if b["key"] == "ann" and b["threshold_pct"] == "100")
    assert Decimal(ann100["spent"]) == Decimal(5) and ann100["limit"] == "5"
    # the mirror carries the key, and the decision API's lookup answers per key
    assert sorted(r["key"] for r in rig.ledger.rows("budget_breaches")) == sorted(
        b["key"] for b in fired)
    spent = run(rig.proc.budgets.spend_for(USERS, "bob", T0))
    assert spent == {"": Decimal("2.5")}
    assert run(rig.proc.budgets.spend_for(USERS, "nobody", T0)) == {"": Decimal(0)}


def test_an_event_without_the_key_does_not_count() -> None:
    rig = Rig()
    rig.put(USERS)
    rig.send(*(rig.event(M * 4) for _ in range(3)))  # $30 without a user: no key, no spend
    rig.send(rig.event(user_id="ann"))
    assert crossings(rig.fired()) == [("ann", Decimal(50))]
    assert run(rig.proc.budgets.spend_for(USERS, "ann", T0)) == {"": Decimal("2.5")}
    assert run(rig.proc.budgets.spend_for(USERS, "", T0)) == {"": Decimal(0)}


def test_keys_load_in_one_query_per_batch_not_per_event() -> None:
    rig = Rig()
    rig.put(USERS)
    rig.send(*(rig.event(1000, user_id=f"u{i % 40}") for i in range(200)))
    assert rig.ledger.reads["key_spend"] == 1
    assert rig.ledger.reads["fired_key_breaches"] == 1
    rig.send(*(rig.event(1000, user_id=f"u{i % 40}") for i in range(200)))  # all tracked
    assert rig.ledger.reads["key_spend"] == 1
    assert rig.proc.tracker.active_keys() == 40


def test_idle_keys_expire_and_reload_exactly_without_a_double_breach() -> None:
    rig = Rig()
    rig.put(USERS)
    rig.send(rig.event(user_id="ann"), rig.event(M // 2, user_id="bob"))  # ann 50%
    rig.clock.advance(USERS.idle_timeout_s + 60)  # both idle past the timeout
    rig.send(rig.event(1000, user_id="cat"))  # the sweep drops ann and bob
    assert rig.proc.tracker.active_keys() == 1
    rig.send(rig.event(M * 6 // 10, user_id="ann"), rig.event(M, user_id="bob"))
    # reloaded from the ledger: ann $2.50 + $1.50 = 80% (her 50% is known, not repeated),
    # bob $1.25 + $2.50 = 75%
    assert crossings(rig.fired()) == [("ann", Decimal(50)), ("ann", Decimal(80)),
                                      ("bob", Decimal(50))]
    assert rig.ledger.reads["key_spend"] == 3  # ann+bob, cat, then ann+bob again
    for user in ("ann", "bob", "cat"):
        truth = sum((Decimal(r["total_cost"]) for r in rig.ledger.usage
                     if r["user_id"] == user), Decimal(0))
        assert run(rig.proc.budgets.spend_for(USERS, user, rig.clock.now)) == {"": truth}


def test_a_rebuilt_worker_counts_on_from_the_ledger() -> None:
    ledger = InMemoryLedger()
    rig = Rig(ledger)
    rig.put(USERS)
    rig.send(rig.event(user_id="ann"), rig.event(M * 6 // 10, user_id="ann"))  # 80%
    again = Rig(ledger)
    again.offset, again.n = rig.offset, rig.n
    again.proc.book.put(USERS)
    run(again.proc.rebuild({0}))
    again.send(rig.event(event_id="e1", user_id="ann"),  # a replay: a duplicate
               again.event(M * 4 // 10, user_id="ann"))  # $5.00: 100%
    assert crossings(again.fired()) == [("ann", Decimal(100))]
    assert len(ledger.rows("budget_breaches")) == 3


def test_a_template_set_mid_period_publishes_what_its_keys_crossed_at_once() -> None:
    rig = Rig()
    rig.send(rig.event(user_id="ann"), rig.event(M * 6 // 10, user_id="ann"),  # $4.00
             rig.event(M // 2, user_id="bob"), rig.event(M * 3, trace_id="old"))
    rig.put(USERS)  # ann is at 80% already: her 50% and 80% now; bob (25%) is not loaded
    assert crossings(rig.fired()) == [("ann", Decimal(50)), ("ann", Decimal(80))]
    assert rig.proc.tracker.active_keys() == 1
    rig.clock.advance(RUNS.idle_timeout_s + 1)
    rig.put(RUNS)  # run "old" is over its limit but closed: not evaluated
    assert len(rig.fired()) == 2
    again = Rig(rig.ledger, at=rig.clock.now)  # a takeover: what fired is known
    again.proc.book.put(USERS)
    run(again.proc.rebuild({0}))
    assert again.fired() == []


def test_a_hundred_keys_under_replays_cross_once_each() -> None:
    rnd = random.Random(7)
    ledger = InMemoryLedger()
    rig = Rig(ledger)
    rig.put(USERS)
    events = [rig.event(rnd.randrange(M // 10, M), user_id=f"u{rnd.randrange(100)}")
              for _ in range(1000)]
    sent: list[dict[str, Any]] = []
    for i in range(0, len(events), 50):
        chunk = events[i:i + 50]
        replay = rnd.sample(sent, min(len(sent), 20))  # redeliveries of earlier events
        rig.send(*chunk, *replay)
        sent.extend(chunk)
        if i % 200 == 0:
            rig.clock.advance(USERS.idle_timeout_s + 1)  # every key idles out and reloads
            rig.send(rig.event(1, user_id="tick", at=rig.clock.now))
    ids = [b["breach_id"] for b in rig.fired()]
    assert len(ids) == len(set(ids))
    spent: dict[str, Decimal] = {}
    for r in ledger.usage:
        spent[r["user_id"]] = spent.get(r["user_id"], Decimal(0)) + Decimal(r["total_cost"])
    want = sorted((u, t) for u, s in spent.items() for t in USERS.thresholds
                  if s * 100 >= t * USERS.limit)
    assert crossings(rig.fired()) == want and len(want) > 100
    for user in ("u1", "u50", "u99"):
        assert run(rig.proc.budgets.spend_for(USERS, user, rig.clock.now)) == {
            "": spent[user]}


def test_a_run_closes_after_idle_and_a_late_event_reloads_it() -> None:
    rig = Rig()
    rig.put(RUNS)
    start = rig.clock.now
    rig.send(rig.event(M * 2 // 5, trace_id="r1"), rig.event(M // 5, trace_id="r2"))
    rig.clock.advance(60)
    rig.send(rig.event(M // 5, trace_id="r1"))  # r1: $1.00 (50%) then $1.50
    assert crossings(rig.fired()) == [("r1", Decimal(50))]
    b50 = rig.fired()[0]
    # a run's breach spans the run: its first event, to when it closes if nothing comes
    assert datetime.fromisoformat(b50["period_start"]) == start
    assert datetime.fromisoformat(b50["period_end"]) == start + timedelta(seconds=600)
    rig.clock.advance(601)  # both runs close
    rig.send(rig.event(1000, trace_id="r3"))
    assert rig.proc.tracker.key("runs", RUN_START, "r1") is None
    rig.send(rig.event(M // 5, trace_id="r1"))  # the same id again: the same run, reloaded
    assert crossings(rig.fired()) == [("r1", Decimal(50)), ("r1", Decimal(100))]
    assert Decimal(rig.fired()[-1]["spent"]) == Decimal(2)
    assert rig.fired()[-1]["period_start"] == b50["period_start"]  # the run's first event
    assert run(rig.proc.budgets.spend_for(RUNS, "r2", rig.clock.now)) == {"": Decimal("0.5")}


def test_status_writes_one_row_per_template() -> None:
    rig = Rig()
    rig.put(USERS)
    rig.put(RUNS)
    rig.send(*(rig.event(M // 10, user_id=f"u{i}", trace_id=f"t{i}") for i in range(50)),
             rig.event(M, user_id="u7", trace_id="t7"))
    rows = run(rig.proc.budgets.status_rows(T0))
    by_id = {r[0]: r for r in rows}
    assert len(rows) == 2
    assert by_id["users"][5] == Decimal("2.75") and by_id["users"][2] == period_bounds(
        USERS.period, USERS.tz, T0)[0]
    assert by_id["runs"][5] == Decimal("2.75") and by_id["runs"][2] == T0


def test_keyed_ledger_queries_on_chdb(store: Any) -> None:
    """key_spend and fired_key_breaches on real ClickHouse answer as the in-memory ledger."""
    memory = InMemoryLedger()
    rig = Rig(memory)
    rig.put(USERS)
    rig.put(RUNS)
    sess = Budget(budget_id="sess", tenant_id="acme", limit=Decimal(1), period="day",
                  each="attributes.api_key")
    rig.put(sess)
    rig.send(*(rig.event(M // 4, user_id=f"u{i % 3}", trace_id=f"t{i % 2}",
                         attributes={"api_key": f"k{i % 2}"} if i % 3 else {})
               for i in range(12)))
    from pipeline.store.sink import BREACH_COLUMNS, USAGE_COLUMNS

    store.insert("usage_events", [[r[c] for c in USAGE_COLUMNS] for r in memory.usage],
                 USAGE_COLUMNS)
    store.insert("budget_breaches", [[r[c] for c in BREACH_COLUMNS]
                                     for r in memory.rows("budget_breaches")], BREACH_COLUMNS)
    real = ClickHouseLedger(store)
    for b, keys in ((USERS, ["u0", "u1", "u2", "nobody"]), (RUNS, ["t0", "t1"]),
                    (sess, ["k0", "k1", ""])):
        start, end = period_bounds(b.period, b.tz, T0)
        assert sorted(real.key_spend(b, start, end, keys)) == sorted(
            memory.key_spend(b, start, end, keys)) != []
        period = None if b.period.value == "run" else start
        assert real.fired_key_breaches(b.budget_id, period, keys) == \
            memory.fired_key_breaches(b.budget_id, period, keys) != set()
        for least, since in ((Decimal("0.5"), None), (Decimal("1.5"), T0),
                             (Decimal("1.5"), T0 + timedelta(seconds=1))):
            assert real.keys_over(b, start, end, least, since, 10) == \
                memory.keys_over(b, start, end, least, since, 10)
        assert real.keys_over(b, start, end, Decimal("0.5"), None, 10) != []
