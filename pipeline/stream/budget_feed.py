"""The budgets feed: every worker reads the whole compacted `budgets` topic."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from pipeline.core.budgets import Budget
from pipeline.delivery.webhooks import public_budget
from pipeline.settings import TOPIC_BUDGETS, Settings
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
    # analysts read the mirror (POST /api/query): webhook URLs masked, a Slack path is a
    # credential; the workers take budgets from the topic, never from this column
    spec = json.dumps(public_budget(budget), separators=(",", ":"))
    return [budget.budget_id, budget.tenant_id, spec, budget.period.value,
            budget.metric.value, budget.limit, budget.mode.value, budget.timezone, False, at]


@dataclass(frozen=True, slots=True)
class Parsed:
    """One budgets-topic message: a budget, a deletion (budget None) or a problem."""

    budget_id: str
    budget: Budget | None
    problem: str | None = None  # why the message is not a usable budget
    tenant_id: str = ""  # as far as the message says, for reporting a problem


def problems(exc: ValidationError) -> str:
    """One readable line per validation problem: `field: what is wrong`."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'budget'}: {e['msg']}"
                     for e in exc.errors())[:500]


def _tenant_of(value: bytes | str) -> str:
    try:
        tenant = json.loads(value).get("tenant_id", "")
    except (ValueError, AttributeError):
        return ""
    return tenant[:256] if isinstance(tenant, str) else ""


def parse_budget(key: bytes | None, value: bytes | None) -> Parsed | None:
    """The message as a budget, a deletion or a problem; None without a key (no budget)."""
    if key is None:
        return None
    budget_id = key.decode("utf-8", "replace")
    if value is None:
        return Parsed(budget_id, None)
    try:
        budget = Budget.model_validate_json(value)
    except ValidationError as exc:
        return Parsed(budget_id, None, f"invalid budget: {problems(exc)}", _tenant_of(value))
    if budget.budget_id != budget_id:
        return Parsed(budget_id, None, f"the message key {budget_id!r} differs from its "
                      f"budget_id {budget.budget_id!r}", budget.tenant_id)
    return Parsed(budget_id, budget)


def decode_budget(key: bytes | None, value: bytes | None) -> tuple[str, Budget | None] | None:
    """(budget_id, budget or None for a deletion), or None for an unusable message."""
    parsed = parse_budget(key, value)
    if parsed is None:
        return None
    if parsed.problem is not None:
        log.warning("ignoring budget %r on the budgets topic: %s", parsed.budget_id,
                    parsed.problem)
        return None
    return parsed.budget_id, parsed.budget


async def run_budget_feed(settings: Settings, processor: Processor, sink: Sink,
                          loaded: asyncio.Event) -> None:
    """Load mirrored budgets, then follow the topic from its start; sets ``loaded``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    for budget_id, spec, deleted in await asyncio.to_thread(processor.ledger.stored_budgets):
        if deleted:
            continue
        try:
            budget = Budget.model_validate_json(spec)
        except ValidationError as exc:
            # mirrored before today's bounds: report and skip it, never crash the feed
            await processor.budget_invalid(budget_id, _tenant_of(spec),
                                           f"invalid budget in the mirror: {problems(exc)}")
            continue
        await processor.budget_changed(budget_id, budget)
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
                    parsed = parse_budget(m.key, m.value)
                    if parsed is None:
                        continue
                    if parsed.problem is not None:
                        # reported and skipped: the compacted topic replays it on every
                        # start, and it must not stop the feed (or metering) then either
                        await processor.budget_invalid(parsed.budget_id, parsed.tenant_id,
                                                       parsed.problem)
                        continue
                    at = datetime.fromtimestamp(m.timestamp / 1000, tz=timezone.utc)
                    await processor.budget_changed(parsed.budget_id, parsed.budget)
                    rows.append(budget_row(parsed.budget_id, parsed.budget, at))
            if rows:
                await sink.write_rows("budgets", rows, BUDGET_COLUMNS)
            if not loaded.is_set():
                positions = {tp: await consumer.position(tp) for tp in tps}
                if not batch or all(positions[tp] >= ends[tp] for tp in tps):
                    loaded.set()
    finally:
        await consumer.stop()
