"""The budgets feed: every worker reads the whole compacted `budgets` topic."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from pipeline.budgets import Budget
from pipeline.settings import TOPIC_BUDGETS, Settings
from pipeline.store import state as ledger
from pipeline.store.sink import Sink
from pipeline.stream.processor import Processor
from pipeline.stream.topics import kafka_client_options

log = logging.getLogger(__name__)
BUDGET_COLUMNS = ("budget_id", "tenant_id", "spec", "period", "metric", "limit", "mode",
                  "timezone", "deleted", "updated_at")


def budget_row(budget_id: str, budget: Budget | None, at: datetime) -> list[Any]:
    """One row of the ClickHouse `budgets` mirror (a deletion is a row with deleted=1)."""
    if budget is None:
        return [budget_id, "", "", "", "", 0, "", "", True, at]
    return [budget.budget_id, budget.tenant_id, budget.model_dump_json(), budget.period.value,
            budget.metric.value, budget.limit, budget.mode.value, budget.timezone, False, at]


def decode_budget(key: bytes | None, value: bytes | None) -> tuple[str, Budget | None] | None:
    """(budget_id, budget or None for a deletion), or None for an unusable message."""
    if key is None:
        return None
    budget_id = key.decode("utf-8", "replace")
    if value is None:
        return budget_id, None
    try:
        budget = Budget.model_validate_json(value)
    except ValidationError as exc:
        log.warning("ignoring invalid budget %r on the budgets topic: %s", budget_id,
                    str(exc).splitlines()[0])
        return None
    if budget.budget_id != budget_id:
        log.warning("ignoring budget whose key %r differs from its budget_id %r",
                    budget_id, budget.budget_id)
        return None
    return budget_id, budget


async def run_budget_feed(settings: Settings, processor: Processor, sink: Sink,
                          loaded: asyncio.Event) -> None:
    """Load mirrored budgets, then follow the topic from its start; sets ``loaded``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    for budget_id, spec, deleted in await asyncio.to_thread(ledger.stored_budgets,
                                                            processor.store):
        if not deleted:
            await processor.budget_changed(budget_id, Budget.model_validate_json(spec))
    topic = settings.topic(TOPIC_BUDGETS)
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False,
                                **kafka_client_options(settings))
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - first lookup
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            batch = await consumer.getmany(timeout_ms=300)
            rows = []
            for msgs in batch.values():
                for m in msgs:
                    decoded = decode_budget(m.key, m.value)
                    if decoded is None:
                        continue
                    at = datetime.fromtimestamp(m.timestamp / 1000, tz=timezone.utc)
                    await processor.budget_changed(*decoded)
                    rows.append(budget_row(decoded[0], decoded[1], at))
            if rows:
                await sink.write_rows("budgets", rows, BUDGET_COLUMNS)
            if not loaded.is_set():
                positions = {tp: await consumer.position(tp) for tp in tps}
                if not batch or all(positions[tp] >= ends[tp] for tp in tps):
                    loaded.set()
    finally:
        await consumer.stop()
