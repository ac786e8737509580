"""The ClickHouse sink: priced events and dead letters to rows, inserted with retry.

usage_events batches go to ClickHouse as columns (store.columnar: an Arrow stream built in
C++), not value by value through clickhouse-connect; the other tables are small and keep
the row path. Only transient errors (network, timeouts, an overloaded server) are retried;
an insert ClickHouse refuses for good (a value that does not fit, a schema mismatch) fails
the worker loudly instead of retrying forever while every tenant's metering waits behind it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from pipeline.core.budgets import BudgetBreach
from pipeline.core.events import DeadLetter, PricedUsage
from pipeline.errors import StoreWriteFailed
from pipeline.store.client import EncodedRows, Store
from pipeline.store.columnar import USAGE_TYPES, ValueNotStorable, encode

log = logging.getLogger(__name__)

USAGE_COLUMNS = (
    "event_id", "timestamp", "tenant_id", "project_id", "user_id", "feature", "trace_id",
    "attributes", "provider", "model", "priced_model", "input_tokens",
    "cache_read_input_tokens", "cache_creation_input_tokens", "cache_creation_1h_input_tokens",
    "output_tokens", "reasoning_output_tokens", "task_type", "criticality", "user_tier",
    "service_tier", "cache_hit", "token_source", "input_cost", "cache_read_cost",
    "cache_write_cost", "output_cost", "reasoning_cost", "total_cost", "saved_cost", "currency",
    "price_version", "value_weight", "value_units", "value_tier", "late", "source_partition",
    "source_offset", "ingested_at", "reservation_id",
)
BREACH_COLUMNS = (
    "breach_id", "budget_id", "tenant_id", "kind", "threshold_pct", "spent", "limit",
    "percent", "metric", "period_start", "period_end", "pool", "severity", "action", "mode",
    "triggering_event_id", "emitted_at", "predicted_spend", "predicted_lower",
    "predicted_upper", "probability", "projected_crossing_at", "each", "key",
    "observed_rate", "baseline_rate", "score", "window_seconds",
)
STATUS_COLUMNS = ("budget_id", "tenant_id", "period_start", "period_end", "metric", "spent",
                  "limit", "percent", "mode", "updated_at")
DLQ_COLUMNS = (
    "source_topic", "source_partition", "source_offset", "item_index", "reason_code", "detail",
    "raw", "event_id", "tenant_id", "received_at",
)


FAILURE_COLUMNS = ("budget_id", "tenant_id", "failed", "reason", "updated_at")


class Fault(StrEnum):
    """transient: the same insert may succeed later; terminal: it never will."""

    transient = "transient"
    terminal = "terminal"


# ClickHouse error codes (src/Common/ErrorCodes.cpp) of a server that is busy, overloaded or
# briefly unreachable: the same insert can succeed later
TRANSIENT_CODES: dict[int, str] = {
    3: "UNEXPECTED_END_OF_FILE", 32: "ATTEMPT_TO_READ_AFTER_EOF", 159: "TIMEOUT_EXCEEDED",
    160: "TOO_SLOW", 201: "QUOTA_EXCEEDED", 202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    203: "NO_FREE_CONNECTION", 209: "SOCKET_TIMEOUT", 210: "NETWORK_ERROR",
    225: "NO_ZOOKEEPER", 236: "ABORTED", 241: "MEMORY_LIMIT_EXCEEDED",
    242: "TABLE_IS_READ_ONLY", 252: "TOO_MANY_PARTS", 285: "TOO_FEW_LIVE_REPLICAS",
    319: "UNKNOWN_STATUS_OF_INSERT", 394: "QUERY_WAS_CANCELLED", 425: "SYSTEM_ERROR",
    439: "CANNOT_SCHEDULE_TASK", 999: "KEEPER_EXCEPTION", 1000: "POCO_EXCEPTION",
}
# codes of an insert that is wrong in itself (its values, types or the schema): retrying
# the same rows fails the same way (listed for the log; any code not transient is terminal)
TERMINAL_CODES: dict[int, str] = {
    6: "CANNOT_PARSE_TEXT", 8: "THERE_IS_NO_COLUMN", 10: "NOT_FOUND_COLUMN_IN_BLOCK",
    16: "NO_SUCH_COLUMN_IN_TABLE", 27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    36: "BAD_ARGUMENTS", 38: "CANNOT_PARSE_DATE", 41: "CANNOT_PARSE_DATETIME",
    43: "ILLEGAL_TYPE_OF_ARGUMENT", 44: "ILLEGAL_COLUMN", 47: "UNKNOWN_IDENTIFIER",
    53: "TYPE_MISMATCH", 60: "UNKNOWN_TABLE", 62: "SYNTAX_ERROR", 69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE", 72: "CANNOT_PARSE_NUMBER", 81: "UNKNOWN_DATABASE",
    117: "INCORRECT_DATA", 131: "TOO_LARGE_STRING_SIZE", 164: "READONLY",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE", 349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    407: "DECIMAL_OVERFLOW", 497: "ACCESS_DENIED", 516: "AUTHENTICATION_FAILED",
}
_TRANSIENT_NAMES = frozenset(TRANSIENT_CODES.values())
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")


def classify_store_error(exc: BaseException) -> Fault:
    """Whether retrying the insert that raised ``exc`` can succeed (pure: inspects only exc).

    A ClickHouse error code decides first; without one, a lost connection or a timeout on
    our side and an HTTP 5xx are transient, while a value the client cannot even serialize
    (clickhouse-connect DataError, struct/overflow errors) and anything unknown are terminal:
    an unknown error retried forever is what stopped metering for everyone.
    """
    if isinstance(exc, ValueNotStorable):
        return Fault.terminal
    code = getattr(exc, "code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        return Fault.transient if code in TRANSIENT_CODES else Fault.terminal
    name = getattr(exc, "name", None)
    if isinstance(name, str) and name:
        return Fault.transient if name in _TRANSIENT_NAMES else Fault.terminal
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return Fault.transient
    if isinstance(exc, OSError):  # sockets, DNS: the network, not the rows
        return Fault.transient
    kind = type(exc).__name__
    status = _HTTP_STATUS.search(str(exc))
    if status is not None:
        return Fault.transient if status.group(1).startswith("5") else Fault.terminal
    if kind in ("OperationalError", "StreamFailureError", "ProtocolError",
                "NewConnectionError", "MaxRetryError", "ReadTimeoutError"):
        # clickhouse-connect's and urllib3's transport failures (no server code)
        return Fault.transient
    return Fault.terminal


def usage_row(p: PricedUsage, *, late: bool, partition: int, offset: int,
              ingested_at: datetime) -> list[Any]:
    """One usage_events row, in USAGE_COLUMNS order."""
    return [
        p.event_id, p.timestamp, p.tenant_id, p.project_id or "", p.user_id or "",
        p.feature or "", p.trace_id or "", p.attributes, p.provider, p.model, p.priced_model,
        p.input_tokens, p.cache_read_input_tokens, p.cache_creation_input_tokens,
        p.cache_creation_1h_input_tokens, p.output_tokens, p.reasoning_output_tokens,
        p.task_type or "", p.criticality.value, p.user_tier or "", p.service_tier.value,
        p.cache_hit, p.token_source, p.input_cost, p.cache_read_cost, p.cache_write_cost,
        p.output_cost, p.reasoning_cost, p.total_cost, p.saved_cost, p.currency,
        p.price_version, p.value_weight, p.value_units, p.value_tier, late, partition, offset,
        ingested_at, p.reservation_id or "",
    ]


def dlq_row(d: DeadLetter, index: int) -> list[Any]:
    """One dlq_events row, in DLQ_COLUMNS order."""
    return [
        d.source_topic, d.source_partition, d.source_offset, index, d.reason_code, d.detail,
        d.raw, d.event_id or "", d.tenant_id or "", d.received_at,
    ]


def breach_row(b: BudgetBreach) -> list[Any]:
    """One budget_breaches row, in BREACH_COLUMNS order."""
    return [
        b.breach_id, b.budget_id, b.tenant_id, b.kind.value, b.threshold_pct, b.spent, b.limit,
        b.percent, b.metric.value, b.period_start, b.period_end, b.pool, b.severity, b.action,
        b.mode.value, b.triggering_event_id or "", b.emitted_at, b.predicted_spend,
        b.predicted_lower, b.predicted_upper, b.probability, b.projected_crossing_at, b.each,
        b.key, b.observed_rate, b.baseline_rate, b.score, b.window_seconds,
    ]


class Sink:
    """Inserts batches into ClickHouse; retries transient errors with capped backoff until
    durable, and raises StoreWriteFailed at once for a terminal one (sets ``failure``)."""

    def __init__(self, store: Store, *, max_backoff_s: float = 10.0) -> None:
        self.store = store
        self.max_backoff_s = max_backoff_s
        self.rows_written = 0
        self.seconds = 0.0  # time spent in successful inserts (for /metrics and benchmarks)
        self.encode_seconds = 0.0  # of which encoding usage rows as columns (GIL held)
        self.encode_cpu_seconds = 0.0  # the same as the sink thread's CPU time
        self.failures = 0
        self.healthy = True
        self.failure: str | None = None  # why an insert failed for good; /health reports it

    async def write(self, usage: Sequence[Sequence[Any]], dlq: Sequence[Sequence[Any]],
                    token: str | None = None) -> None:
        """Write both batches; returns only once they are in ClickHouse.

        ``token`` names the batch: a retry after an insert that did land (timeout after
        commit) is dropped by ClickHouse instead of counted twice in the rollups.
        """
        started = time.perf_counter()
        encoded: list[EncodedRows] = []  # encoded once, in the insert's thread, for all tries

        def insert() -> None:
            if usage and not encoded:
                begun, cpu = time.perf_counter(), time.thread_time()
                encoded.append(encode(usage, USAGE_COLUMNS, USAGE_TYPES, key="event_id",
                                      compression=self.store.arrow_compression))
                self.encode_seconds += time.perf_counter() - begun
                self.encode_cpu_seconds += time.thread_time() - cpu
            self._write_sync(encoded[0] if encoded else None, dlq, token)

        await self._retry(insert, "usage_events")
        self.seconds += time.perf_counter() - started
        self.rows_written += len(usage)

    async def write_rows(self, table: str, rows: Sequence[Sequence[Any]],
                         columns: Sequence[str]) -> None:
        """Insert rows into any ledger table, retrying transient errors until durable."""
        await self._retry(lambda: self.store.insert(table, rows, columns), table)

    async def _retry(self, insert: Callable[[], None], table: str) -> None:
        delay = 0.1
        while True:
            try:
                await asyncio.to_thread(insert)
                self.healthy = True
                return
            except Exception as exc:
                self.failures += 1
                self.healthy = False
                detail = (str(exc).splitlines() or [""])[0][:300]
                if classify_store_error(exc) is Fault.terminal:
                    # never dropped, never retried forever: the worker stops, loudly, and a
                    # restart replays the batch from the committed offsets once it is fixed
                    refused = (f"a value cannot be stored in {table} ({exc})"
                               if isinstance(exc, ValueNotStorable) else
                               f"ClickHouse refused an insert into {table} for good "
                               f"({type(exc).__name__}: {detail})")
                    self.failure = (
                        f"{refused}; retrying cannot fix it: correct the value or the schema, "
                        "then restart the worker (it replays from the committed offsets)")
                    log.error("%s", self.failure)
                    raise StoreWriteFailed(self.failure) from exc
                log.warning("ClickHouse insert into %s failed (%s: %s); retrying in %.1fs",
                            table, type(exc).__name__, detail, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.max_backoff_s)

    def _write_sync(self, usage: EncodedRows | None, dlq: Sequence[Sequence[Any]],
                    token: str | None) -> None:
        settings = {"insert_deduplication_token": token,
                    "deduplicate_blocks_in_dependent_materialized_views": 1} if token else None
        if usage is not None:
            self.store.insert("usage_events", usage, USAGE_COLUMNS, settings=settings)
        if dlq:
            self.store.insert("dlq_events", dlq, DLQ_COLUMNS)
