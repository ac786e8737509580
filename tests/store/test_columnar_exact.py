"""The columnar sink stores exactly what the row path (Store.insert with rows) stores, and a
re-sent batch is dropped by its token in the ledger and in both rollups (real chDB, and the
embedded store served over HTTP)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline.store.client import Store
from pipeline.store.migrations import migrate
from pipeline.store.sink import USAGE_COLUMNS, Sink, usage_row
from tests.helpers import METER, NOW, free_port

pytestmark = pytest.mark.integration
MAX_MONEY = D("99999999999999999999999999.999999999999")  # Decimal(38, 12)
MAX_WEIGHT = D("999999999999.999999")  # Decimal(18, 6)
MAX_UNITS = D("99999999999999999999999999999999.999999")  # Decimal(38, 6)
# copy_negate: unary minus would round to the context's 28 digits
MIN_MONEY, MIN_WEIGHT, MIN_UNITS = (d.copy_negate() for d in (MAX_MONEY, MAX_WEIGHT, MAX_UNITS))
COSTS = ("input_cost", "cache_read_cost", "cache_write_cost", "output_cost", "reasoning_cost",
         "total_cost", "saved_cost")
UTC = timezone.utc


def template() -> dict[str, Any]:
    p = METER.meter_object({"event_id": "x", "timestamp": NOW.isoformat(), "tenant_id": "acme",
                            "provider": "anthropic", "model": "claude-3-haiku",
                            "input_tokens": 1000, "output_tokens": 10}, now=NOW)
    row = usage_row(p, late=False, partition=0, offset=0, ingested_at=NOW)
    return dict(zip(USAGE_COLUMNS, row, strict=True))


def row(event_id: str, **values: Any) -> list[Any]:
    # every edge row its own tenant: each is alone in its rollup group (sums cannot overflow)
    r = template() | {"event_id": event_id, "tenant_id": f"tenant-{event_id}"} | values
    return [r[c] for c in USAGE_COLUMNS]


def money(**cost: D) -> dict[str, D]:
    return dict.fromkeys(COSTS, D(0)) | cost


EDGE_ROWS = [
    row("e00-max", **money(**dict.fromkeys(COSTS, MAX_MONEY)), value_weight=MAX_WEIGHT,
        value_units=MAX_UNITS),
    row("e01-min", **money(**dict.fromkeys(COSTS, MIN_MONEY)), value_weight=MIN_WEIGHT,
        value_units=MIN_UNITS),
    row("e02-tiny", **money(input_cost=D("1E-12"), output_cost=D("-0.000000000001"),
                            total_cost=D("0.000000000000")),
        value_weight=D("0.000001"), value_units=D("1E-6")),
    row("e03-zeros", **money(input_cost=D("0E-20"), output_cost=D("-0"), total_cost=D("0.0")),
        value_weight=D(0), value_units=D("0E+3")),
    row("e04-12-decimals", **money(input_cost=D("123.456789012345"),
                                   total_cost=D("12345678901234.567890123456"),
                                   saved_cost=D("0.00013575")), value_weight=D("0.800")),
    # more decimals than the scale: both paths cut them (toward zero), none rounds
    row("e05-cut", **money(input_cost=D("0.1234567890129"), output_cost=D("-0.1234567890129"),
                           cache_read_cost=D("1.5E-12"), cache_write_cost=D("2.5E-12"),
                           reasoning_cost=D("9.9999999999999"),
                           total_cost=D("12345678901234567890.1234567890129999")),
        value_weight=D("1.2345678"), value_units=D("0.0000005")),
    # beyond 38 significant digits the row path (clickhouse-connect >= 1.13) still only cuts
    row("e06-digits", **money(input_cost=D("0." + "9" * 41),
                              output_cost=D("1.0000000000000000000000000000000000000000"),
                              total_cost=5)),
    row("e07-unicode", project_id="프로젝트-ü", user_id="用户🙂", feature="", trace_id="",
        provider="anthropic", model="modèle-日本", priced_model="", task_type="ü\tb\nc'\"\\",
        user_tier="", price_version="v\x00nul", value_tier="höher",
        tenant_id="租户-ü", reservation_id="r" * 5000),
    row("e08-attributes", attributes={"a": "1", "b": "ü", "": "", "emoji🙂": "x\ny",
                                      **{f"k{i}": "v" * i for i in range(10)}}),
    row("e09-one-attribute", attributes={"only": "one"}),
    row("e10-ms", timestamp=datetime(2025, 6, 1, 10, 0, 0, 123456, tzinfo=UTC),
        ingested_at=datetime(2025, 6, 1, 10, 0, 1, 999999, tzinfo=UTC)),
    row("e11-offset", timestamp=datetime(2025, 3, 1, 1, 2, 3, 456789,
                                         tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        ingested_at=datetime(2025, 3, 1, 23, 59, 59, 1000, tzinfo=timezone(timedelta(hours=9)))),
    row("e12-pre-1970", timestamp=datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC),
        ingested_at=datetime(1900, 1, 1, tzinfo=UTC)),
    row("e13-far", timestamp=datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    row("e14-flags", cache_hit=True, late=True, criticality="critical",
        service_tier="priority"),
    row("e15-tokens", input_tokens=2**64 - 1, cache_read_input_tokens=2**63,
        cache_creation_input_tokens=0, cache_creation_1h_input_tokens=1,
        output_tokens=100_000_000, reasoning_output_tokens=7,
        source_partition=2**31 - 1, source_offset=2**63 - 1),
    row("e16-negative-ids", source_partition=-(2**31), source_offset=-(2**63)),
    # more than 38 decimals beyond the scale: pyarrow's own rescale stores 7 as 0 and
    # 9.95E-63 as 14420.85, and crashes the process on 1E-5000000 (apache/arrow#50964)
    row("e17-wide-scale", **money(input_cost=D("7." + "0" * 51),
                                  output_cost=D("9.95038483402425393E-63"),
                                  total_cost=D("1E-5000000")),
        value_units=D("-5.838923877282E-62"),
        value_weight=D("-0.000099999010992999479999995298999699839293943")),
]


def metered_rows(n: int) -> list[list[Any]]:
    """Ordinary traffic: one ingested_at for the batch, cache costs all zero."""
    out = []
    for i in range(n):
        p = METER.meter_object({"event_id": f"m{i:05d}", "tenant_id": f"tenant-{i % 7}",
                                "timestamp": (NOW - timedelta(seconds=37 * i)).isoformat(),
                                "provider": "openai", "model": "gpt-4o-mini",
                                "input_tokens": 100 + i, "output_tokens": i % 50,
                                "attributes": {"run": str(i)} if i % 3 else {}}, now=NOW)
        out.append(usage_row(p, late=False, partition=i % 4, offset=i, ingested_at=NOW))
    return out


@contextmanager
def migrated(s: Store, root: Store) -> Iterator[Store]:
    """``s`` with its database migrated, dropped afterwards (through ``root``)."""
    try:
        migrate(s)
        yield s
    finally:
        root.command(f"DROP DATABASE IF EXISTS {s.database}")


@pytest.fixture()
def second(chdb_root: Store) -> Iterator[Store]:
    """Another fresh database on the session's chDB engine."""
    with migrated(chdb_root.with_database(f"t_{uuid.uuid4().hex[:12]}"), chdb_root) as s:
        yield s


def write(store: Store, rows: Sequence[Sequence[Any]], token: str | None) -> Sink:
    sink = Sink(store, max_backoff_s=0.05)
    asyncio.run(asyncio.wait_for(sink.write(rows, [], token=token), 30))
    return sink


def dump(store: Store, sql: str) -> tuple[list[tuple[Any, ...]], bytes]:
    """Rows as Python values and as ClickHouse's own text (every digit, every byte)."""
    return store.rows(sql), bytes(store.client.raw_query(sql + " FORMAT TabSeparated"))


def tables(store: Store) -> dict[str, tuple[list[tuple[Any, ...]], bytes]]:
    db = store.database
    return {"usage_events": dump(store, f"SELECT * FROM {db}.usage_events ORDER BY event_id"),
            **{t: dump(store, f"SELECT * FROM {db}.{t} FINAL ORDER BY ALL")
               for t in ("usage_hourly", "usage_daily")}}


@pytest.mark.parametrize("rows", [EDGE_ROWS, metered_rows(500)], ids=["edges", "metered"])
def test_columnar_path_stores_exactly_what_the_row_path_stores(
        store: Store, second: Store, rows: list[list[Any]]) -> None:
    store.insert("usage_events", rows, USAGE_COLUMNS)  # the row path
    sink = write(second, rows, token=f"batch-{uuid.uuid4().hex}")  # the columnar path
    assert sink.rows_written == len(rows) and sink.encode_seconds > 0
    old, new = tables(store), tables(second)
    for table in old:
        assert new[table][0] == old[table][0], table
        assert new[table][1] == old[table][1], table  # the same text, digit for digit
    assert len(old["usage_events"][0]) == len(rows)


def test_extra_decimals_are_cut_toward_zero_as_the_row_path_cuts_them(second: Store) -> None:
    write(second, EDGE_ROWS, token=None)
    got = second.rows(f"SELECT event_id, {', '.join(COSTS)}, value_weight, value_units "
                      f"FROM {second.database}.usage_events WHERE event_id IN "
                      "('e05-cut', 'e06-digits') ORDER BY event_id")
    assert [str(v) for v in got[0][1:]] == [
        "0.123456789012", "1E-12", "2E-12", "-0.123456789012", "9.999999999999",
        "12345678901234567890.123456789012", "0E-12", "1.234567", "0.000000"]
    # 0.999... (41 nines) is cut, not rounded up to 1, as the row path cuts it
    assert [str(v) for v in got[1][1:4]] == ["0.999999999999", "0E-12", "0E-12"]
    assert got[1][4] == D(1) and got[1][6] == D(5)


def counts(store: Store) -> tuple[int, int, int, D]:
    db = store.database
    ledger = store.rows(f"SELECT count(), sum(total_cost) FROM {db}.usage_events")[0]
    hourly = store.rows(f"SELECT sum(events) FROM {db}.usage_hourly")[0][0]
    daily = store.rows(f"SELECT sum(events) FROM {db}.usage_daily")[0][0]
    return ledger[0], hourly, daily, ledger[1]


def assert_resent_batch_is_dropped(store: Store) -> None:
    rows = metered_rows(300)
    total = sum((r[USAGE_COLUMNS.index("total_cost")] for r in rows), D(0))
    write(store, rows, token="batch-1")
    assert counts(store) == (300, 300, 300, total)
    write(store, rows, token="batch-1")  # a retry after an insert that did land
    write(store, rows[:100], token="batch-2")
    write(store, rows[:100], token="batch-2")
    # no FINAL: the re-sent blocks were never inserted, in the ledger or either rollup
    assert counts(store)[:3] == (400, 400, 400)
    write(store, rows[:100], token="batch-3")  # another token is another batch
    assert counts(store)[:3] == (500, 500, 500)


def test_a_resent_batch_is_dropped_in_the_ledger_and_both_rollups(store: Store) -> None:
    assert_resent_batch_is_dropped(store)


@pytest.fixture()
def served(chdb_root: Store) -> Iterator[Store]:
    """A fresh database of the session's engine, reached over the embedded HTTP server."""
    import clickhouse_connect

    from pipeline.embedded.clickhouse_http import serve

    path = Path(chdb_root.rows("SELECT path FROM system.disks WHERE name = 'default'")[0][0])
    secret = SecretStr(f"secret-{uuid.uuid4().hex}")
    server = serve(path, "127.0.0.1", free_port(), secret)
    client = clickhouse_connect.get_client(
        dsn=f"http://127.0.0.1:{server.server_address[1]}",
        password=secret.get_secret_value())
    try:
        with migrated(Store(client, f"t_{uuid.uuid4().hex[:12]}"), chdb_root) as s:
            yield s
    finally:
        client.close()
        server.close()


def test_the_served_store_takes_the_columnar_insert_exactly(store: Store,
                                                            served: Store) -> None:
    assert served.arrow_compression == "lz4"  # compressed like the HTTP client's requests
    store.insert("usage_events", EDGE_ROWS, USAGE_COLUMNS)
    write(served, EDGE_ROWS, token="edges")
    old, new = tables(store), tables(served)
    for table in old:
        assert new[table] == old[table], table


def test_the_served_store_drops_a_resent_batch(served: Store) -> None:
    assert_resent_batch_is_dropped(served)
