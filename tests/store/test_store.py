import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.errors import StoreError
from pipeline.settings import load_settings
from pipeline.store.client import Store, lock_data_dir, open_store
from pipeline.store.migrations import discover, migrate
from pipeline.store.queries import READ_ONLY_LIMITS, run_read_only
from pipeline.store.sink import DLQ_COLUMNS, USAGE_COLUMNS, usage_row
from tests.helpers import free_port

pytestmark = pytest.mark.integration
NOW = datetime(2025, 6, 1, 12, tzinfo=timezone.utc)


def test_migrations_are_numbered_and_idempotent(store: Store) -> None:
    names = [m.name for m in discover()]
    assert names == sorted(names) and names[0].startswith("001_")
    assert migrate(store) == []  # already applied by the fixture
    tables = {r[0] for r in store.rows(f"SHOW TABLES FROM {store.database}")}
    assert {"usage_events", "dlq_events", "schema_migrations"} <= tables
    applied = store.rows(f"SELECT count() FROM {store.database}.schema_migrations FINAL")[0][0]
    assert applied == len(names)


def test_usage_row_roundtrip_exact_and_dedup(store: Store) -> None:
    meter = Meter(load_catalog(), load_policy())
    ev = {"event_id": "e1", "timestamp": "2025-06-01T10:00:00Z", "tenant_id": "acme",
          "provider": "anthropic", "model": "claude-3-haiku", "input_tokens": 123457,
          "output_tokens": 9, "attributes": {"k": "v"}}
    p = meter.meter_object(ev, now=NOW)
    row = usage_row(p, late=False, partition=0, offset=1, ingested_at=NOW)
    store.insert("usage_events", [row, row, row], USAGE_COLUMNS)  # a retried insert
    db = store.database
    got = store.rows(f"SELECT count(), sum(total_cost) FROM {db}.usage_events FINAL")
    assert got == [(1, p.total_cost)]
    assert p.total_cost == Decimal("0.03087550")
    res = run_read_only(store, f"SELECT total_cost, timestamp FROM {db}.usage_events FINAL")
    assert res.rows == [["0.030875500000", "2025-06-01T10:00:00Z"]]


def test_data_dir_lock_names_the_holder(tmp_path: Path) -> None:
    held = lock_data_dir(tmp_path / "clickhouse")
    try:
        with pytest.raises(StoreError, match="held by another process"):
            lock_data_dir(tmp_path / "clickhouse")
    finally:
        held.close()


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="not writable"):
        lock_data_dir(blocker / "clickhouse")


def test_unreachable_server_dsn() -> None:
    s = load_settings(clickhouse_dsn=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreError, match="cannot open ClickHouse"):
        open_store(s)


def test_read_only_enforced_by_the_engine_too(store: Store) -> None:
    # even if the text guard were bypassed, the read-only session makes the engine refuse
    ro = store.readonly(READ_ONLY_LIMITS)
    for sql in (f"INSERT INTO {store.database}.dlq_events (reason_code) VALUES ('x')",
                f"DROP TABLE {store.database}.dlq_events",
                "SELECT 1 SETTINGS readonly = 0"):
        with pytest.raises(Exception, match="(?i)readonly"):
            ro.query(sql)
    # and the writer session is unaffected
    store.insert("dlq_events", [["t", 0, 1, 0, "schema", "d", "{}", "", "", NOW]],
                 DLQ_COLUMNS)
    assert store.rows(f"SELECT count() FROM {store.database}.dlq_events")[0][0] == 1


def test_result_rows_are_capped(store: Store) -> None:
    with pytest.raises(StoreError, match="(?i)limit|rows"):
        run_read_only(store, "SELECT number FROM system.numbers LIMIT 200000")


def test_json_payload_of_dead_letter_is_text_free() -> None:
    meter = Meter(load_catalog(), load_policy())
    out = meter.meter_message(json.dumps({"event_id": "x", "input_text": "TOP SECRET"}), now=NOW)
    assert out.dead and "TOP SECRET" not in out.dead[0].raw


def test_existing_ids_answers_for_any_number_of_ids(store: Store) -> None:
    """A replay of many old events asks the ledger about all of them at once: the lookup
    must not exceed ClickHouse's max_query_size (256 KiB; it once crashed the agent)."""
    from pipeline.store.ledger import existing_ids

    meter = Meter(load_catalog(), load_policy())
    stored = []
    for i in range(0, 30_000, 97):  # every 97th id is in the ledger
        ev = {"event_id": f"{i:08d}-aaaa-bbbb-cccc-{i:012d}", "timestamp": "2025-06-01T10:00:00Z",
              "tenant_id": f"tenant-{i % 50:05d}", "provider": "openai", "model": "gpt-4o-mini",
              "input_tokens": 10, "output_tokens": 1}
        stored.append(usage_row(meter.meter_object(ev, now=NOW), late=False, partition=0,
                                offset=i, ingested_at=NOW))
    store.insert("usage_events", stored, USAGE_COLUMNS)
    asked = [(f"tenant-{i % 50:05d}", f"{i:08d}-aaaa-bbbb-cccc-{i:012d}") for i in range(30_000)]
    assert sum(len(t) + len(e) for t, e in asked) > 1024 * 1024  # far beyond one query's limit
    found = existing_ids(store, asked)
    assert found == {p for i, p in enumerate(asked) if i % 97 == 0}
    assert existing_ids(store, []) == set()
