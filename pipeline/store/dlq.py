"""Dead-letter operations: counts by reason, and replay of those that now validate."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from pipeline.core.meter import Meter
from pipeline.errors import ValidationFailed
from pipeline.store.client import Store

REPLAY_COLUMNS = ("source_topic", "source_partition", "source_offset", "item_index",
                  "event_id", "replayed_at")
_KEY = "source_topic, source_partition, source_offset, item_index"
_PENDING = f"({_KEY}) NOT IN (SELECT {_KEY} FROM {{db}}.dlq_replays)"


def dlq_summary(store: Store, examples: int = 2) -> dict[str, Any]:
    """Dead letters not yet replayed: count and examples per reason code."""
    db = store.database
    rows = store.rows(
        f"SELECT reason_code, count(), groupArray({int(examples)})(detail) "
        f"FROM {db}.dlq_events FINAL WHERE {_PENDING.format(db=db)} "
        "GROUP BY reason_code ORDER BY count() DESC")
    reasons = [{"reason_code": r, "count": int(n), "examples": list(ex)} for r, n, ex in rows]
    return {"total": sum(r["count"] for r in reasons), "by_reason": reasons}


async def replay(store: Store, meter: Meter, publish: Callable[[str, bytes], Awaitable[Any]],
                 now: datetime, reason: str | None = None) -> dict[str, Any]:
    """Re-publish dead letters that validate now (e.g. after a catalog fix); record them.

    Payloads whose text was removed and that have no counts cannot be replayed: their text
    was never stored. Replayed events go through dedup again, so a replay is idempotent.
    """
    import asyncio

    db = store.database
    where = _PENDING.format(db=db)
    params: dict[str, Any] = {}
    if reason:
        where += " AND reason_code = %(reason)s"
        params["reason"] = reason
    rows = await asyncio.to_thread(
        store.rows,
        f"SELECT source_topic, source_partition, source_offset, item_index, raw "
        f"FROM {db}.dlq_events FINAL WHERE {where}", params)
    replayed: list[list[Any]] = []
    still: Counter[str] = Counter()
    for topic, partition, offset, index, raw in rows:
        try:
            item = json.loads(raw)
        except ValueError:
            still["invalid_json"] += 1
            continue
        if not isinstance(item, dict):
            still["schema"] += 1
            continue
        if "<removed>" in (item.get("input_text"), item.get("output_text")):
            still["text_removed"] += 1
            continue
        try:
            meter.meter_object(item, now=now)
        except ValidationFailed as exc:
            still[exc.reason_code] += 1
            continue
        except MemoryError:
            raise
        except Exception:  # a defect on one dead letter must not block the rest
            still["internal_error"] += 1
            continue
        await publish(str(item["tenant_id"]), json.dumps(item).encode())
        replayed.append([topic, partition, offset, index, str(item["event_id"]), now])
    if replayed:
        await asyncio.to_thread(store.insert, "dlq_replays", replayed, REPLAY_COLUMNS)
    return {"replayed": len(replayed), "still_invalid": dict(still)}
