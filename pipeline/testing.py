"""Test doubles for the metering step: an in-memory ledger, list publishers, a settable clock.

They implement the Protocols of pipeline/stream/ports.py, so a ``Processor`` runs on them with
no chDB and no broker: dedup, group commit, acks after durable and budget crossings get unit
tests that take milliseconds. The in-memory ledger answers the reads the way the ClickHouse
ledger does (FINAL where its SQL says FINAL, the insert dedup token honoured); the real-chDB
integration tests stay the proof for ClickHouse itself.

    ledger = InMemoryLedger()
    proc = Processor(meter, ledger, ledger, live, ListPublisher(), clock=SettableClock(t0))
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pipeline.core.budget_options import ATTRIBUTE_PREFIX, EACH_ATTRIBUTES, EACH_FIELDS
from pipeline.core.spend import WindowKind, window_start
from pipeline.errors import StoreWriteFailed
from pipeline.store.sink import DLQ_COLUMNS, USAGE_COLUMNS

Row = dict[str, Any]
_SUMMED = ("total_cost", "saved_cost", "input_tokens", "cache_read_input_tokens",
           "cache_creation_input_tokens", "output_tokens", "reasoning_output_tokens",
           "value_units")


class SettableClock:
    """A clock (a callable returning now) that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = _aware(start)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by ``seconds``; returns the new now."""
        self.now += timedelta(seconds=seconds)
        return self.now

    def set(self, at: datetime) -> None:
        """Set the clock to ``at`` (timezone-aware)."""
        self.now = _aware(at)


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError(f"the clock needs a timezone-aware instant, not {at.isoformat()}: "
                         "add tzinfo=timezone.utc")
    return at


class _Deliveries:
    """Delivery futures that resolve at once, or when released while held."""

    def __init__(self, *, hold: bool = False) -> None:
        self.held = hold
        self._waiting: list[asyncio.Future[None]] = []

    def _future(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.held:
            self._waiting.append(fut)
        else:
            fut.set_result(None)
        return fut

    def hold(self) -> None:
        """Keep the futures of later sends pending until release()."""
        self.held = True

    def release(self) -> int:
        """Resolve every held delivery (and stop holding); returns how many."""
        self.held = False
        waiting, self._waiting = self._waiting, []
        for fut in waiting:
            if not fut.done():
                fut.set_result(None)
        return len(waiting)

    @property
    def pending(self) -> int:
        """Deliveries held and not yet resolved."""
        return sum(1 for f in self._waiting if not f.done())


class ListPublisher(_Deliveries):
    """A Publish callable that records each (key, value) and returns its delivery future."""

    def __init__(self, *, hold: bool = False) -> None:
        super().__init__(hold=hold)
        self.sent: list[tuple[str | None, bytes]] = []

    async def __call__(self, key: str | None, value: bytes) -> asyncio.Future[None]:
        self.sent.append((key, value))
        return self._future()


class ListForwarder(_Deliveries):
    """A Forward callable that records each (partition, key, value) re-sent."""

    def __init__(self, *, hold: bool = False) -> None:
        super().__init__(hold=hold)
        self.sent: list[tuple[int, str, bytes]] = []

    async def __call__(self, partition: int, key: str, value: bytes) -> asyncio.Future[None]:
        self.sent.append((partition, key, value))
        return self._future()


@dataclass(frozen=True, slots=True)
class _Fault:
    terminal: bool
    table: str | None  # None: the next write to any table


class InMemoryLedger:
    """The ledger in lists: LedgerReads and LedgerWrites for unit tests (no chDB).

    ``usage``, ``dlq`` and ``tables[name]`` hold the rows written, as column -> value dicts.
    ``fail_next`` makes the next writes fail transiently (retried, as the Sink retries) or
    terminally (StoreWriteFailed, ``failure`` set); ``hold`` keeps writes waiting (a slow
    insert) until ``release``. ``inserts`` lists the usage rows of each accepted insert and
    ``reads`` counts the read calls, so a test can see what the processor asked.
    """

    def __init__(self) -> None:
        self.usage: list[Row] = []
        self.dlq: list[Row] = []
        self.tables: dict[str, list[Row]] = {}
        self.inserts: list[int] = []  # usage rows per insert that landed
        self.dropped = 0  # inserts dropped by their dedup token (a retry of one that landed)
        self.reads = Counter[str]()
        self.healthy = True
        self.failure: str | None = None
        self.rows_written = 0
        self.seconds = 0.0
        self.failures = 0
        self._tokens: set[str] = set()
        self._faults: list[_Fault] = []
        self._open: asyncio.Event | None = None  # None: writes go through at once

    # ----- writing (LedgerWrites)

    def fail_next(self, n: int = 1, *, terminal: bool = False, table: str | None = None) -> None:
        """Make the next ``n`` writes (to ``table``, or any) fail."""
        self._faults.extend(_Fault(terminal, table) for _ in range(n))

    def hold(self) -> None:
        """Keep every write waiting (as if the insert were slow) until release()."""
        self._open = asyncio.Event()

    def release(self) -> None:
        """Let held writes go through."""
        if self._open is not None:
            self._open.set()
        self._open = None

    async def write(self, usage: Sequence[Sequence[Any]], dlq: Sequence[Sequence[Any]],
                    token: str | None = None) -> None:
        """Store usage and dead-letter rows; a token seen before drops the usage rows."""
        await self._attempt("usage_events")
        if usage:
            if token is not None and token in self._tokens:
                self.dropped += 1  # as ClickHouse drops a repeated insert_deduplication_token
            else:
                if token is not None:
                    self._tokens.add(token)
                self.usage.extend(dict(zip(USAGE_COLUMNS, r, strict=True)) for r in usage)
                self.inserts.append(len(usage))
        self.dlq.extend(dict(zip(DLQ_COLUMNS, r, strict=True)) for r in dlq)
        self.rows_written += len(usage)

    async def write_rows(self, table: str, rows: Sequence[Sequence[Any]],
                         columns: Sequence[str]) -> None:
        """Store rows of any other table (budget_breaches, budget_failures, budgets, ...)."""
        await self._attempt(table)
        self.tables.setdefault(table, []).extend(
            dict(zip(columns, r, strict=True)) for r in rows)

    def rows(self, table: str) -> list[Row]:
        """The rows written to a table other than usage_events and dlq_events."""
        return list(self.tables.get(table, []))

    async def _attempt(self, table: str) -> None:
        """Wait while held; fail as told (transient faults are retried, like the Sink)."""
        while True:
            if self._open is not None:
                await self._open.wait()
            fault = next((f for f in self._faults if f.table in (None, table)), None)
            if fault is None:
                self.healthy = True
                return
            self._faults.remove(fault)
            self.failures += 1
            self.healthy = False
            if fault.terminal:
                self.failure = (f"the in-memory ledger refused an insert into {table} for good "
                                "(fault injected by fail_next); restart to replay")
                raise StoreWriteFailed(self.failure)
            await asyncio.sleep(0)  # transient: retried, as the Sink retries

    # ----- reading (LedgerReads)

    def _snapshot(self, name: str) -> list[Row]:
        self.reads[name] += 1
        return list(self.usage)  # reads run in a thread while the loop may append

    def _final(self, rows: list[Row]) -> list[Row]:
        """The rows FINAL returns: the last of each (tenant_id, day, event_id)."""
        last: dict[tuple[str, Any, str], Row] = {}
        for r in rows:
            last[(r["tenant_id"], r["timestamp"].date(), r["event_id"])] = r
        return list(last.values())

    def existing_ids(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (tenant_id, event_id) pairs are stored already."""
        stored = {(r["tenant_id"], r["event_id"]) for r in self._snapshot("existing_ids")}
        return stored & set(pairs)

    def period_spend(self, budget: Any, start: datetime, end: datetime) -> dict[str, Any]:
        """A budget's metric in [start, end), by value tier (FINAL)."""
        out: dict[str, Decimal] = {}
        for r in self._final(self._snapshot("period_spend")):
            if not _in_scope(r, budget, start, end):
                continue
            tier = r["value_tier"]
            out[tier] = out.get(tier, Decimal(0)) + _metric(r, budget.metric.value)
        return dict(out)

    def fired_breaches(self, budget_id: str, period_start: datetime) -> set[str]:
        """breach_ids mirrored for a budget's period."""
        self.reads["fired_breaches"] += 1
        return {r["breach_id"] for r in self.rows("budget_breaches")
                if r["budget_id"] == budget_id and r["period_start"] == period_start}

    def key_spend(self, budget: Any, start: datetime, end: datetime,
                  keys: Iterable[str]) -> list[tuple[str, str, Any, datetime, datetime]]:
        """(key, value_tier, amount, first, last event time) of a template's keys (FINAL)."""
        wanted = set(keys)
        acc: dict[tuple[str, str], list[Any]] = {}
        for r in self._final(self._snapshot("key_spend")):
            key = _row_key(r, budget.each)
            if key not in wanted or not _in_scope(r, budget, start, end):
                continue
            ts = r["timestamp"]
            a = acc.setdefault((key, r["value_tier"]), [Decimal(0), ts, ts])
            a[0] += _metric(r, budget.metric.value)
            a[1], a[2] = min(a[1], ts), max(a[2], ts)
        return [(k, tier, a[0], a[1], a[2]) for (k, tier), a in sorted(acc.items())]

    def keys_over(self, budget: Any, start: datetime, end: datetime, least: Any,
                  since: datetime | None, limit: int) -> list[str]:
        """A template's keys spent at least ``least`` in [start, end) (FINAL), sorted."""
        acc: dict[str, list[Any]] = {}
        for r in self._final(self._snapshot("keys_over")):
            key = _row_key(r, budget.each)
            if not key or not _in_scope(r, budget, start, end):
                continue
            a = acc.setdefault(key, [Decimal(0), r["timestamp"]])
            a[0] += _metric(r, budget.metric.value)
            a[1] = max(a[1], r["timestamp"])
        return sorted(k for k, (spent, last) in acc.items()
                      if spent >= least and (since is None or last >= since))[:limit]

    def fired_key_breaches(self, budget_id: str, period_start: datetime | None,
                           keys: Iterable[str]) -> set[tuple[str, str]]:
        """(key, breach_id) mirrored for a template's keys (None: any period)."""
        self.reads["fired_key_breaches"] += 1
        wanted = set(keys)
        return {(r["key"], r["breach_id"]) for r in self.rows("budget_breaches")
                if r["budget_id"] == budget_id and r.get("key", "") in wanted
                and (period_start is None or r["period_start"] == period_start)}

    def watermarks(self, partitions: Iterable[int]) -> dict[int, datetime]:
        """Latest on-time event time stored per source partition."""
        wanted = set(partitions)
        out: dict[int, datetime] = {}
        for r in self._snapshot("watermarks"):
            p = r["source_partition"]
            if p in wanted and not r["late"] and (p not in out or r["timestamp"] > out[p]):
                out[p] = r["timestamp"]
        return out

    def recent_ids(self, partition: int, since: datetime,
                   limit: int) -> list[tuple[str, datetime]]:
        """(event_id, timestamp) of a partition since ``since``, newest first."""
        rows = [r for r in self._snapshot("recent_ids")
                if r["source_partition"] == partition and r["timestamp"] >= since]
        rows.sort(key=lambda r: r["timestamp"], reverse=True)
        return [(r["event_id"], r["timestamp"]) for r in rows[:limit]]

    def window_sums(self, partition: int | None, kind: str,
                    since: datetime) -> list[tuple[Any, ...]]:
        """(tenant_id, window_start, sums..., count) per window since ``since`` (FINAL)."""
        size: WindowKind = "hour" if kind == "hour" else "day"  # as ledger.window_sums reads it
        sums: dict[tuple[str, datetime], list[Any]] = {}
        for r in self._final(self._snapshot("window_sums")):
            if (partition is not None and r["source_partition"] != partition) \
                    or r["timestamp"] < since:
                continue
            key = (r["tenant_id"], window_start(size, r["timestamp"]))
            acc = sums.setdefault(key, [Decimal(0), Decimal(0), 0, 0, 0, 0, 0, Decimal(0), 0])
            for i, col in enumerate(_SUMMED):
                acc[i] += r[col]
            acc[8] += 1
        return [(t, w, *acc) for (t, w), acc in sums.items()]

    def tenant_partitions(self, since: datetime) -> list[tuple[str, int]]:
        """(tenant_id, source_partition) pairs stored since ``since``."""
        return sorted({(r["tenant_id"], r["source_partition"])
                       for r in self._snapshot("tenant_partitions") if r["timestamp"] >= since})

    def stored_budgets(self) -> list[tuple[str, str, bool]]:
        """(budget_id, spec, deleted) of each mirrored budget's latest version."""
        self.reads["stored_budgets"] += 1
        latest: dict[str, Row] = {}
        for r in self.rows("budgets"):  # ReplacingMergeTree(updated_at): the newest wins
            old = latest.get(r["budget_id"])
            if old is None or r["updated_at"] >= old["updated_at"]:
                latest[r["budget_id"]] = r
        return [(b, r["spec"], bool(r["deleted"])) for b, r in latest.items()]


def _in_scope(r: Row, budget: Any, start: datetime, end: datetime) -> bool:
    """The rows ledger.scope_where selects for a budget in [start, end)."""
    if r["tenant_id"] != budget.tenant_id or not start <= r["timestamp"] < end:
        return False
    for field in ("project_id", "user_id", "feature", "task_type"):
        value = getattr(budget, field)
        if value is not None and r[field] != value:
            return False
    return budget.model is None or budget.model in (r["model"], r["priced_model"])


def _row_key(r: Row, each: str) -> str:
    """A stored row's value of a template key, as ledger.key_column reads it ("" if none)."""
    if each in EACH_FIELDS:
        return str(r[each] or "")
    name = each if each in EACH_ATTRIBUTES else each.removeprefix(ATTRIBUTE_PREFIX)
    return str((r["attributes"] or {}).get(name, ""))


def _metric(r: Row, metric: str) -> Decimal:
    """A row's amount of a budget metric (ledger.METRIC_SQL)."""
    if metric == "tokens":
        return Decimal(r["input_tokens"] + r["output_tokens"])
    return Decimal(r["total_cost"] if metric == "cost" else r["value_units"])
