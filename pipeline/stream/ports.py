"""The small interfaces the metering step talks through (ledger reads, ledger writes, Kafka).

The processor never names ClickHouse or Kafka: production passes ``ClickHouseLedger`` and the
``Sink``, unit tests pass ``pipeline.testing.InMemoryLedger`` and list publishers, so the
exactness rules (dedup, group commit, acks after durable, budget crossings) are testable
without a chDB or a broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pipeline.core.budgets import BudgetBreach
from pipeline.core.events import PricedUsage
from pipeline.store.client import Store
from pipeline.store.ledger import ClickHouseLedger

# (key, value) -> delivery future (or None): dead letters and breaches out to Kafka
Publish = Callable[[str | None, bytes], Awaitable[Any]]
# (partition, key, value) -> delivery future: re-sends events to their tenant's partition
Forward = Callable[[int, str, bytes], Awaitable[Any]]


@runtime_checkable
class LedgerReads(Protocol):
    """What the metering step reads from the ledger (blocking calls; run off the loop)."""

    def existing_ids(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (tenant_id, event_id) pairs are stored already."""
        ...

    def period_spend(self, budget: Any, start: datetime, end: datetime) -> dict[str, Any]:
        """A budget's metric in [start, end), by value tier."""
        ...

    def fired_breaches(self, budget_id: str, period_start: datetime) -> set[str]:
        """breach_ids already mirrored for a budget's period."""
        ...

    def key_spend(self, budget: Any, start: datetime, end: datetime,
                  keys: Iterable[str]) -> list[tuple[str, str, Any, datetime, datetime]]:
        """(key, value_tier, amount, first, last event time) of a template's keys."""
        ...

    def fired_key_breaches(self, budget_id: str, period_start: datetime | None,
                           keys: Iterable[str]) -> set[tuple[str, str]]:
        """(key, breach_id) mirrored for a template's keys (None: any period)."""
        ...

    def keys_over(self, budget: Any, start: datetime, end: datetime, least: Any,
                  since: datetime | None, limit: int) -> list[str]:
        """A template's keys spent at least ``least`` (latest event since ``since``)."""
        ...

    def watermarks(self, partitions: Iterable[int]) -> dict[int, datetime]:
        """Latest on-time event time stored per source partition."""
        ...

    def recent_ids(self, partition: int, since: datetime,
                   limit: int) -> list[tuple[str, datetime]]:
        """(event_id, timestamp) of a partition since ``since``, newest first."""
        ...

    def window_sums(self, partition: int | None, kind: str,
                    since: datetime) -> list[tuple[Any, ...]]:
        """(tenant_id, window_start, sums...) per window since ``since``."""
        ...

    def tenant_partitions(self, since: datetime) -> list[tuple[str, int]]:
        """(tenant_id, source_partition) pairs stored since ``since``."""
        ...

    def stored_budgets(self) -> list[tuple[str, str, bool]]:
        """(budget_id, spec JSON, deleted) of the latest version of every mirrored budget."""
        ...


class LedgerWrites(Protocol):
    """What the metering step writes (durable on return) and the health it reports."""

    healthy: bool
    failure: str | None  # why a write failed for good (/health)
    rows_written: int
    seconds: float
    failures: int

    async def write(self, usage: Sequence[Sequence[Any]], dlq: Sequence[Sequence[Any]],
                    token: str | None = None) -> None:
        """Write usage and dead-letter rows; ``token`` drops a repeated insert."""
        ...

    async def write_rows(self, table: str, rows: Sequence[Sequence[Any]],
                         columns: Sequence[str]) -> None:
        """Write rows into any ledger table."""
        ...


def ledger_reads(source: Store | LedgerReads) -> LedgerReads:
    """``source`` itself when it is a LedgerReads, else the ClickHouse ledger over it.

    Stores wrapped by tests (fault injection) are not ``Store`` instances but behave as one,
    so anything that is not a LedgerReads is taken as a store.
    """
    if isinstance(source, LedgerReads):
        return source
    return ClickHouseLedger(source)


class Watcher(Protocol):
    """Sees every batch's fresh events after budgets counted them, under the Processor's
    lock (the spend-velocity watch, reservation holds); returns breaches to publish."""

    async def observe(self, fresh: list[PricedUsage], now: datetime) -> list[BudgetBreach]:
        """React to a batch's fresh (deduplicated, priced) events."""
        ...
