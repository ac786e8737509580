"""The ClickHouse sink: priced events and dead letters to rows, inserted with retry."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pipeline.budgets import BudgetBreach
from pipeline.events import DeadLetter, PricedUsage
from pipeline.store.client import Store

log = logging.getLogger(__name__)

USAGE_COLUMNS = (
    "event_id", "timestamp", "tenant_id", "project_id", "user_id", "feature", "trace_id",
    "attributes", "provider", "model", "priced_model", "input_tokens",
    "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens",
    "reasoning_output_tokens", "task_type", "criticality", "user_tier", "service_tier",
    "cache_hit", "token_source", "input_cost", "cache_read_cost", "cache_write_cost",
    "output_cost", "reasoning_cost", "total_cost", "saved_cost", "currency", "price_version",
    "value_weight", "value_units", "value_tier", "late", "source_partition", "source_offset",
    "ingested_at",
)
BREACH_COLUMNS = (
    "breach_id", "budget_id", "tenant_id", "kind", "threshold_pct", "spent", "limit",
    "percent", "metric", "period_start", "period_end", "pool", "severity", "action", "mode",
    "triggering_event_id", "emitted_at", "predicted_spend", "predicted_lower",
    "predicted_upper", "probability", "projected_crossing_at",
)
STATUS_COLUMNS = ("budget_id", "tenant_id", "period_start", "period_end", "metric", "spent",
                  "limit", "percent", "mode", "updated_at")
DLQ_COLUMNS = (
    "source_topic", "source_partition", "source_offset", "item_index", "reason_code", "detail",
    "raw", "event_id", "tenant_id", "received_at",
)


def usage_row(p: PricedUsage, *, late: bool, partition: int, offset: int,
              ingested_at: datetime) -> list[Any]:
    """One usage_events row, in USAGE_COLUMNS order."""
    return [
        p.event_id, p.timestamp, p.tenant_id, p.project_id or "", p.user_id or "",
        p.feature or "", p.trace_id or "", p.attributes, p.provider, p.model, p.priced_model,
        p.input_tokens, p.cache_read_input_tokens, p.cache_creation_input_tokens,
        p.output_tokens, p.reasoning_output_tokens, p.task_type or "", p.criticality.value,
        p.user_tier or "", p.service_tier.value, p.cache_hit, p.token_source, p.input_cost,
        p.cache_read_cost, p.cache_write_cost, p.output_cost, p.reasoning_cost, p.total_cost,
        p.saved_cost, p.currency, p.price_version, p.value_weight, p.value_units, p.value_tier,
        late, partition, offset, ingested_at,
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
        b.predicted_lower, b.predicted_upper, b.probability, b.projected_crossing_at,
    ]


class Sink:
    """Inserts batches into ClickHouse; retries with capped backoff until durable."""

    def __init__(self, store: Store, *, max_backoff_s: float = 10.0) -> None:
        self.store = store
        self.max_backoff_s = max_backoff_s
        self.rows_written = 0
        self.seconds = 0.0  # time spent in successful inserts (for /metrics and benchmarks)
        self.failures = 0
        self.healthy = True

    async def write(self, usage: Sequence[Sequence[Any]], dlq: Sequence[Sequence[Any]],
                    token: str | None = None) -> None:
        """Write both batches; returns only once they are in ClickHouse.

        ``token`` names the batch: a retry after an insert that did land (timeout after
        commit) is dropped by ClickHouse instead of counted twice in the rollups.
        """
        started = time.perf_counter()
        await self._retry(lambda: self._write_sync(usage, dlq, token))
        self.seconds += time.perf_counter() - started
        self.rows_written += len(usage)

    async def write_rows(self, table: str, rows: Sequence[Sequence[Any]],
                         columns: Sequence[str]) -> None:
        """Insert rows into any ledger table, retrying until durable."""
        await self._retry(lambda: self.store.insert(table, rows, columns))

    async def _retry(self, insert: Any) -> None:
        delay = 0.1
        while True:
            try:
                await asyncio.to_thread(insert)
                self.healthy = True
                return
            except Exception as exc:  # any client error: back off and retry, never drop
                self.failures += 1
                self.healthy = False
                log.warning("ClickHouse insert failed (%s); retrying in %.1fs",
                            str(exc).splitlines()[0][:200], delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.max_backoff_s)

    def _write_sync(self, usage: Sequence[Sequence[Any]], dlq: Sequence[Sequence[Any]],
                    token: str | None) -> None:
        settings = {"insert_deduplication_token": token,
                    "deduplicate_blocks_in_dependent_materialized_views": 1} if token else None
        if usage:
            self.store.insert("usage_events", usage, USAGE_COLUMNS, settings=settings)
        if dlq:
            self.store.insert("dlq_events", dlq, DLQ_COLUMNS)
