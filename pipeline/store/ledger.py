"""Ledger reads that rebuild a worker's live state (dedup ids, windows, watermarks)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from pipeline.core.budget_options import ATTRIBUTE_PREFIX, EACH_ATTRIBUTES, EACH_FIELDS
from pipeline.store.client import Store

_SUMS = (
    "sum(total_cost), sum(saved_cost), sum(input_tokens), sum(cache_read_input_tokens), "
    "sum(cache_creation_input_tokens), sum(output_tokens), sum(reasoning_output_tokens), "
    "sum(value_units), count()"
)


def _in(values: Iterable[int]) -> str:
    return "(" + ",".join(str(int(v)) for v in values) + ")"


def watermarks(store: Store, partitions: Iterable[int]) -> dict[int, datetime]:
    """Latest on-time event time stored per source partition."""
    rows = store.rows(
        f"SELECT source_partition, max(timestamp) FROM {store.database}.usage_events "
        f"WHERE source_partition IN {_in(partitions)} AND NOT late GROUP BY source_partition"
    )
    return {int(p): ts for p, ts in rows}


def recent_ids(store: Store, partition: int, since: datetime,
               limit: int) -> list[tuple[str, datetime]]:
    """(event_id, timestamp) stored for a partition since ``since``, newest first."""
    return [
        (eid, ts) for eid, ts in store.rows(
            f"SELECT event_id, timestamp FROM {store.database}.usage_events "
            f"WHERE source_partition = {int(partition)} AND timestamp >= %(since)s "
            f"ORDER BY timestamp DESC LIMIT {int(limit)}",
            parameters={"since": since},
        )
    ]


def window_sums(store: Store, partition: int | None, kind: str,
                since: datetime) -> list[tuple[Any, ...]]:
    """(tenant_id, window_start, sums...) of the events of each window since ``since``.

    Late-flagged events are included: lateness is judged per window, and a window still
    open held every event of it that arrived (an hour-late event counts in its open day).
    ``partition`` None: every partition's (after a partition-count change a tenant's events
    may be stored under several).
    """
    fn = "toStartOfHour" if kind == "hour" else "toStartOfDay"
    where = "" if partition is None else f"source_partition = {int(partition)} AND "
    return store.rows(
        f"SELECT tenant_id, {fn}(timestamp) AS w, {_SUMS} "
        f"FROM {store.database}.usage_events FINAL "
        f"WHERE {where}timestamp >= %(since)s "
        "GROUP BY tenant_id, w",
        parameters={"since": since},
    )


def tenant_partitions(store: Store, since: datetime) -> list[tuple[str, int]]:
    """(tenant_id, source_partition) pairs stored since ``since``."""
    return [(t, int(p)) for t, p in store.rows(
        f"SELECT DISTINCT tenant_id, source_partition FROM {store.database}.usage_events "
        "WHERE timestamp >= %(since)s", parameters={"since": since})]


# The ids are inlined into the SQL text and ClickHouse refuses a query longer than
# max_query_size (256 KiB by default): a replay of 200k old events once crashed the metering
# agent that way. Lookups go in chunks of at most 2,000 ids and 128 KiB.
LOOKUP_IDS = 2000
LOOKUP_BYTES = 128 * 1024


def _chunks(pairs: list[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    size = 0
    for pair in pairs:
        cost = len(pair[0]) + len(pair[1]) + 8
        if chunk and (len(chunk) >= LOOKUP_IDS or size + cost > LOOKUP_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(pair)
        size += cost
    if chunk:
        yield chunk


def existing_ids(store: Store, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (tenant_id, event_id) pairs are already in the ledger (any number of pairs)."""
    found: set[tuple[str, str]] = set()
    for chunk in _chunks(sorted(set(pairs))):
        rows = store.rows(
            f"SELECT DISTINCT tenant_id, event_id FROM {store.database}.usage_events "
            "WHERE tenant_id IN %(tenants)s AND event_id IN %(ids)s",
            parameters={"tenants": sorted({t for t, _ in chunk}),
                        "ids": sorted({e for _, e in chunk})},
        )
        found.update((t, e) for t, e in rows)
    return found


METRIC_SQL = {
    "cost": "total_cost",
    "tokens": "toDecimal128(input_tokens + output_tokens, 12)",
    "value_units": "value_units",
}


def scope_where(budget: Any, start: datetime, end: datetime) -> tuple[str, dict[str, Any]]:
    """WHERE clause and parameters selecting a budget's events in [start, end)."""
    where = ["tenant_id = %(tenant)s", "timestamp >= %(start)s", "timestamp < %(end)s"]
    params: dict[str, Any] = {"tenant": budget.tenant_id, "start": start, "end": end}
    for field in ("project_id", "user_id", "feature", "task_type"):
        value = getattr(budget, field)
        if value is not None:
            where.append(f"{field} = %({field})s")
            params[field] = value
    if budget.model is not None:
        where.append("(model = %(model)s OR priced_model = %(model)s)")
        params["model"] = budget.model
    return " AND ".join(where), params


def period_spend(store: Store, budget: Any, start: datetime, end: datetime) -> dict[str, Any]:
    """Period-to-date amount of a budget's metric, by value tier, from the exact ledger."""
    where, params = scope_where(budget, start, end)
    rows = store.rows(
        f"SELECT value_tier, sum({METRIC_SQL[budget.metric.value]}) "
        f"FROM {store.database}.usage_events FINAL WHERE {where} GROUP BY value_tier",
        parameters=params,
    )
    return {tier: amount for tier, amount in rows}


def fired_breaches(store: Store, budget_id: str, period_start: datetime) -> set[str]:
    """breach_ids already published for a budget's period."""
    rows = store.rows(
        f"SELECT breach_id FROM {store.database}.budget_breaches "
        "WHERE budget_id = %(b)s AND period_start = %(p)s",
        parameters={"b": budget_id, "p": period_start},
    )
    return {r[0] for r in rows}


def key_column(each: str) -> tuple[str, dict[str, Any]]:
    """SQL expression of a template key (--each) over usage_events, and its parameters."""
    if each in EACH_FIELDS:
        return each, {}
    name = each if each in EACH_ATTRIBUTES else each.removeprefix(ATTRIBUTE_PREFIX)
    return "attributes[%(each_attr)s]", {"each_attr": name}


def _key_chunks(keys: Iterable[str]) -> Iterator[list[str]]:
    """Sorted distinct keys in chunks that keep a query under max_query_size."""
    for chunk in _chunks([(k, "") for k in sorted(set(keys))]):
        yield [k for k, _ in chunk]


def key_spend(store: Store, budget: Any, start: datetime, end: datetime,
              keys: Iterable[str]) -> list[tuple[str, str, Any, datetime, datetime]]:
    """(key, value_tier, amount, first event, last event) of a template budget's keys in
    [start, end), from the exact ledger: one query per chunk of keys, not one per key."""
    where, params = scope_where(budget, start, end)
    column, extra = key_column(budget.each)
    out: list[tuple[str, str, Any, datetime, datetime]] = []
    for chunk in _key_chunks(keys):
        rows = store.rows(
            f"SELECT {column} AS k, value_tier, sum({METRIC_SQL[budget.metric.value]}), "
            f"min(timestamp), max(timestamp) FROM {store.database}.usage_events FINAL "
            f"WHERE {where} AND k IN %(keys)s GROUP BY k, value_tier",
            parameters={**params, **extra, "keys": chunk},
        )
        out.extend((k, tier, amount, _utc(first), _utc(last))
                   for k, tier, amount, first, last in rows)
    return out


def keys_over(store: Store, budget: Any, start: datetime, end: datetime, least: Any,
              since: datetime | None, limit: int) -> list[str]:
    """Template keys whose spend in [start, end) is at least ``least`` (and, with ``since``,
    whose latest event is not older): the keys a catch-up must evaluate, at most ``limit``."""
    where, params = scope_where(budget, start, end)
    column, extra = key_column(budget.each)
    having = "" if since is None else " AND max(timestamp) >= %(since)s"
    rows = store.rows(
        f"SELECT {column} AS k FROM {store.database}.usage_events FINAL "
        f"WHERE {where} AND k != '' GROUP BY k "
        f"HAVING sum({METRIC_SQL[budget.metric.value]}) >= %(least)s{having} "
        f"ORDER BY k LIMIT {int(limit)}",
        parameters={**params, **extra, "least": least,
                    **({} if since is None else {"since": since})},
    )
    return [r[0] for r in rows]


def fired_key_breaches(store: Store, budget_id: str, period_start: datetime | None,
                       keys: Iterable[str]) -> set[tuple[str, str]]:
    """(key, breach_id) already published for template keys of a budget's period (``None``:
    any period, as a run's breaches name the run's own start)."""
    found: set[tuple[str, str]] = set()
    period = "" if period_start is None else " AND period_start = %(p)s"
    params: dict[str, Any] = {"b": budget_id}
    if period_start is not None:
        params["p"] = period_start
    for chunk in _key_chunks(keys):
        rows = store.rows(
            f"SELECT key, breach_id FROM {store.database}.budget_breaches "
            f"WHERE budget_id = %(b)s{period} AND key IN %(keys)s",
            parameters={**params, "keys": chunk},
        )
        found.update((k, b) for k, b in rows)
    return found


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def stored_budgets(store: Store) -> list[tuple[str, str, bool]]:
    """(budget_id, spec JSON, deleted) of the latest version of every mirrored budget."""
    return [
        (b, spec, bool(deleted)) for b, spec, deleted in store.rows(
            f"SELECT budget_id, spec, deleted FROM {store.database}.budgets FINAL")
    ]


def bucket_history(store: Store, budget: Any, since: datetime, until: datetime,
                   hourly: bool) -> list[tuple[datetime, Any]]:
    """(UTC bucket start, amount) of a budget's metric per hour or day, from the ledger."""
    fn = "toStartOfHour(timestamp)" if hourly else "toStartOfDay(timestamp)"
    where, params = scope_where(budget, since, until)
    return [
        (ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts, amount)
        for ts, amount in store.rows(
            f"SELECT {fn} AS b, sum({METRIC_SQL[budget.metric.value]}) "
            f"FROM {store.database}.usage_events FINAL WHERE {where} GROUP BY b ORDER BY b",
            parameters=params,
        )
    ]


class ClickHouseLedger:
    """The ledger reads of the metering step over one Store (LedgerReads of stream/ports)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def existing_ids(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """See :func:`existing_ids`."""
        return existing_ids(self.store, pairs)

    def period_spend(self, budget: Any, start: datetime, end: datetime) -> dict[str, Any]:
        """See :func:`period_spend`."""
        return period_spend(self.store, budget, start, end)

    def fired_breaches(self, budget_id: str, period_start: datetime) -> set[str]:
        """See :func:`fired_breaches`."""
        return fired_breaches(self.store, budget_id, period_start)

    def key_spend(self, budget: Any, start: datetime, end: datetime,
                  keys: Iterable[str]) -> list[tuple[str, str, Any, datetime, datetime]]:
        """See :func:`key_spend`."""
        return key_spend(self.store, budget, start, end, keys)

    def keys_over(self, budget: Any, start: datetime, end: datetime, least: Any,
                  since: datetime | None, limit: int) -> list[str]:
        """See :func:`keys_over`."""
        return keys_over(self.store, budget, start, end, least, since, limit)

    def fired_key_breaches(self, budget_id: str, period_start: datetime | None,
                           keys: Iterable[str]) -> set[tuple[str, str]]:
        """See :func:`fired_key_breaches`."""
        return fired_key_breaches(self.store, budget_id, period_start, keys)

    def watermarks(self, partitions: Iterable[int]) -> dict[int, datetime]:
        """See :func:`watermarks`."""
        return watermarks(self.store, partitions)

    def recent_ids(self, partition: int, since: datetime,
                   limit: int) -> list[tuple[str, datetime]]:
        """See :func:`recent_ids`."""
        return recent_ids(self.store, partition, since, limit)

    def window_sums(self, partition: int | None, kind: str,
                    since: datetime) -> list[tuple[Any, ...]]:
        """See :func:`window_sums`."""
        return window_sums(self.store, partition, kind, since)

    def tenant_partitions(self, since: datetime) -> list[tuple[str, int]]:
        """See :func:`tenant_partitions`."""
        return tenant_partitions(self.store, since)

    def stored_budgets(self) -> list[tuple[str, str, bool]]:
        """See :func:`stored_budgets`."""
        return stored_budgets(self.store)
