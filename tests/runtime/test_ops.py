"""Store operations (DLQ, FOCUS export, re-pricing, report) on the real chDB ledger."""

from __future__ import annotations

import asyncio
import csv
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.cli.report import html_report
from pipeline.core.litellm_prices import from_litellm
from pipeline.runtime.ops import OpContext, dlq_list, dlq_replay, export_focus, report, reprice
from pipeline.settings import load_settings
from pipeline.store.client import Store
from tests.helpers import NOW, make_processor, messages

# date-sensitive: `make test-clocks` runs it again at each instant of tests.helpers.CLOCKS
pytestmark = [pytest.mark.integration, pytest.mark.clock]
DAY = NOW - timedelta(days=2)


def ev(i: int, model: str = "gpt-4o-mini", tenant: str = "tenant-00001",
       start: datetime = DAY, step: timedelta = timedelta(minutes=1)) -> dict:
    return {"event_id": f"op-{i}", "timestamp": (start + i * step).isoformat(),
            "tenant_id": tenant, "provider": "openai", "model": model,
            "input_tokens": 1000 * (i + 1), "output_tokens": 100}


def fill(store: Store, start: datetime = DAY,
         step: timedelta = timedelta(minutes=1)) -> None:
    proc, _ = make_processor(store)
    events = ([ev(i, start=start, step=step) for i in range(10)]
              + [ev(100 + i, model="newco-7b", start=start, step=step) for i in range(3)])
    events.append({"event_id": "t1", "timestamp": NOW.isoformat(), "tenant_id": "tenant-00001",
                   "provider": "openai", "model": "newco-7b", "input_text": "secret words",
                   "output_text": "more"})
    asyncio.run(proc.process(messages(events)))


def ledger_total(store: Store, tenant: str | None = None) -> Decimal:
    where = f"WHERE tenant_id = '{tenant}'" if tenant else ""
    return store.rows(f"SELECT sum(total_cost) FROM {store.database}.usage_events FINAL {where}")[0][0]


def ctx(store: Store, tmp_path: Path, published: list | None = None) -> OpContext:
    async def publish(key: str, value: bytes) -> None:
        if published is not None:
            published.append(json.loads(value))

    return OpContext(load_settings(data_dir=str(tmp_path)), store, publish, NOW)


def import_prices(tmp_path: Path, spec: dict, effective: datetime) -> None:
    cat = from_litellm(spec, effective, f"fix-{effective.date()}", "test")
    (tmp_path / "prices").mkdir(exist_ok=True)
    (tmp_path / "prices" / f"{effective.timestamp():.0f}.json").write_text(cat.model_dump_json())


def test_dlq_list_and_replay_after_catalog_fix(store: Store, tmp_path: Path) -> None:
    fill(store)
    listed = asyncio.run(dlq_list(ctx(store, tmp_path), {}))
    assert listed["total"] == 4 and listed["by_reason"][0]["reason_code"] == "unknown_model"
    published: list = []
    before = asyncio.run(dlq_replay(ctx(store, tmp_path, published), {}))
    assert before["replayed"] == 0 and published == []
    # the events name provider openai: the new price must be for openai (another provider's
    # newco-7b would not price them)
    import_prices(tmp_path, {"newco-7b": {"input_cost_per_token": 1e-07,
                                          "output_cost_per_token": 2e-07,
                                          "litellm_provider": "openai"}},
                  datetime(2024, 1, 1, tzinfo=timezone.utc))
    after = asyncio.run(dlq_replay(ctx(store, tmp_path, published), {"reason": "unknown_model"}))
    # three events replay; the one that came as text cannot (its text was never stored)
    assert after == {"replayed": 3, "still_invalid": {"text_removed": 1}}
    assert sorted(p["event_id"] for p in published) == ["op-100", "op-101", "op-102"]
    assert asyncio.run(dlq_replay(ctx(store, tmp_path, published), {}))["replayed"] == 0
    assert asyncio.run(dlq_list(ctx(store, tmp_path), {}))["total"] == 1


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_focus_export_sums_to_ledger(store: Store, tmp_path: Path, suffix: str) -> None:
    fill(store)
    out = tmp_path / f"focus.{suffix}"
    body = {"from": (DAY - timedelta(days=1)).date().isoformat(),
            "to": (NOW + timedelta(days=1)).date().isoformat(), "file": str(out)}
    result = asyncio.run(export_focus(ctx(store, tmp_path), body))
    assert result["rows"] == 10
    assert Decimal(result["billed_cost"]) == ledger_total(store)
    if suffix == "csv":
        rows = list(csv.DictReader(out.open()))
        assert sum(Decimal(r["BilledCost"]) for r in rows) == ledger_total(store)
        r = rows[0]
        assert r["ChargeCategory"] == "Usage" and r["ServiceCategory"] == "AI and Machine Learning"
        assert r["ConsumedUnit"] == "Tokens" and r["SkuId"] == "gpt-4o-mini"
        assert json.loads(r["Tags"])["tenant"] == "tenant-00001"
        assert r["x_PriceVersion"] and r["x_ValueUnits"]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        assert sum(table.column("BilledCost").to_pylist()) == ledger_total(store)


def test_reprice_corrects_costs_with_audit_and_rollups(store: Store, tmp_path: Path) -> None:
    fill(store)
    old = ledger_total(store)
    import_prices(tmp_path, {"gpt-4o-mini": {"input_cost_per_token": 3e-07,
                                             "output_cost_per_token": 1.2e-06,
                                             "litellm_provider": "openai"}},
                  DAY - timedelta(days=1))  # a correction effective in the past: doubles it
    body = {"from": (DAY - timedelta(days=1)).date().isoformat(),
            "to": (NOW + timedelta(days=1)).date().isoformat()}
    dry = asyncio.run(reprice(ctx(store, tmp_path), {**body, "dry_run": True}))
    assert dry["events_repriced"] == 10 and ledger_total(store) == old
    assert Decimal(dry["tenants"][0]["difference"]) == old
    done = asyncio.run(reprice(ctx(store, tmp_path), body))
    assert done["events_repriced"] == 10
    assert ledger_total(store) == 2 * old
    db = store.database
    assert store.rows(f"SELECT sum(total_cost) FROM {db}.spend_daily")[0][0] == 2 * old
    assert store.rows(f"SELECT sum(events) FROM {db}.spend_hourly")[0][0] == 10
    audit = store.rows(f"SELECT count(), any(new_price_version) FROM {db}.reprice_audit")
    assert audit[0][0] == 10 and audit[0][1].startswith("fix-")
    again = asyncio.run(reprice(ctx(store, tmp_path), body))
    assert again["events_repriced"] == 0  # idempotent


def rollups_vs_ledger(store: Store) -> list[tuple[list, list]]:
    """Per table: (rollup sums, FINAL ledger sums) by tenant and bucket."""
    db = store.database
    out = []
    for table, bucket, expr in (("usage_hourly", "hour", "toStartOfHour(timestamp)"),
                                ("usage_daily", "day", "toDate(timestamp)")):
        sums = "sum(total_cost), sum(saved_cost), sum(input_tokens), sum(output_tokens)"
        rollup = store.rows(f"SELECT tenant_id, {bucket}, {sums}, sum(events) FROM {db}.{table} "
                            "GROUP BY 1, 2 ORDER BY 1, 2")
        ledger = store.rows(f"SELECT tenant_id, {expr} AS b, {sums}, count() "
                            f"FROM {db}.usage_events FINAL GROUP BY 1, 2 ORDER BY 1, 2")
        out.append(([list(r) for r in rollup], [list(r) for r in ledger]))
    return out


def test_reprice_rollups_stay_exact_when_inserts_land_in_between(store: Store,
                                                                  tmp_path: Path) -> None:
    from pipeline.core.catalog import load_catalog_with_overlays
    from pipeline.store.reprice import reprice as reprice_store
    from pipeline.store.sink import USAGE_COLUMNS

    fill(store)
    import_prices(tmp_path, {"gpt-4o-mini": {"input_cost_per_token": 3e-07,
                                             "output_cost_per_token": 1.2e-06,
                                             "litellm_provider": "openai"}},
                  DAY - timedelta(days=1))
    db = store.database
    template = list(store.query(f"SELECT {', '.join(USAGE_COLUMNS)} FROM {db}.usage_events "
                                "FINAL WHERE event_id = 'op-0'").result_rows[0])
    landed: list[str] = []

    def stream_inserts(stage: str, day: object) -> None:
        # the stream stores a new event of the day being re-priced, right now
        if day != DAY.date():
            return
        row = list(template)
        row[USAGE_COLUMNS.index("event_id")] = f"landed-{stage}-{len(landed)}"
        store.insert("usage_events", [row], USAGE_COLUMNS)
        landed.append(row[0])

    catalog = load_catalog_with_overlays(tmp_path / "prices")
    done = reprice_store(store, catalog, DAY - timedelta(days=1), NOW + timedelta(days=1), NOW,
                         dry_run=False, hook=stream_inserts)
    assert done["events_repriced"] == 10 and len(landed) >= 2
    for rollup, ledger in rollups_vs_ledger(store):
        assert rollup == ledger
    # the old-priced events that landed are corrected by the next run, exactly as well
    again = reprice_store(store, catalog, DAY - timedelta(days=1), NOW + timedelta(days=1),
                          NOW, dry_run=False)
    assert again["events_repriced"] == len(landed)
    for rollup, ledger in rollups_vs_ledger(store):
        assert rollup == ledger


def test_report(store: Store, tmp_path: Path) -> None:
    # the month's first minutes hold the events, so the report has data whatever day NOW is
    # (with events two days back it had none on the 1st and 2nd of a month)
    month_start = NOW.replace(day=1, hour=0, minute=0, second=0)
    fill(store, start=month_start, step=timedelta(seconds=20))
    fill_before = month_start - timedelta(days=1)  # last month's spend is not this month's
    asyncio.run(make_processor(store)[0].process(messages([ev(50, start=fill_before)])))
    data = asyncio.run(report(ctx(store, tmp_path), {"tenant": "tenant-00001",
                                                     "period": "month"}))
    assert data["total"]["events"] == 10
    assert [m[0] for m in data["models"]] == ["gpt-4o-mini"]
    assert [str(d) for d, _ in data["daily"]] == [month_start.date().isoformat()]
    page = html_report(data)
    assert "<svg" in page and "tenant-00001" in page


# --- re-pricing survives crashes and concurrent runs (issue #17 review) ---------------------

class Injected(Exception):
    """A fault raised by FaultyStore at a chosen step."""


class FaultyStore(Store):
    """The real store, with one fault at a chosen call: ``before`` raises instead of the call,
    ``after`` raises once the call has been carried out (a crash right after it)."""

    def __init__(self, inner: Store, *, before: str | None = None,
                 after: str | None = None) -> None:
        self.inner, self.database = inner, inner.database
        self.before, self.after = before, after
        self.fired = False

    def _step(self, what: str, call: object) -> object:
        if not self.fired and self.before is not None and self.before in what:
            self.fired = True
            raise Injected(f"injected before {what[:60]}")
        result = call()  # type: ignore[operator]
        if not self.fired and self.after is not None and self.after in what:
            self.fired = True
            raise Injected(f"injected after {what[:60]}")
        return result

    def command(self, sql: str, settings: dict | None = None) -> object:
        return self._step(sql, lambda: self.inner.command(sql, settings=settings))

    def query(self, sql: str, settings: dict | None = None,
              parameters: dict | None = None) -> object:
        return self.inner.query(sql, settings=settings, parameters=parameters)

    def insert(self, table: str, rows, columns, settings: dict | None = None) -> None:  # noqa: ANN001
        self._step(f"INSERT INTO {table}",
                   lambda: self.inner.insert(table, rows, columns, settings=settings))


def priced_fix(tmp_path: Path) -> object:
    """A catalog whose gpt-4o-mini price doubles from the day before DAY."""
    from pipeline.core.catalog import load_catalog_with_overlays

    import_prices(tmp_path, {"gpt-4o-mini": {"input_cost_per_token": 3e-07,
                                             "output_cost_per_token": 1.2e-06,
                                             "litellm_provider": "openai"}},
                  DAY - timedelta(days=1))
    return load_catalog_with_overlays(tmp_path / "prices")


def run_reprice(store: Store, catalog: object, now: datetime = NOW, **kw: object) -> dict:
    from pipeline.store.reprice import reprice as reprice_store

    return reprice_store(store, catalog, DAY - timedelta(days=1),  # type: ignore[arg-type]
                         NOW + timedelta(days=1), now, dry_run=False, **kw)  # type: ignore[arg-type]


def assert_exact(store: Store, old: Decimal) -> None:
    """Ledger FINAL doubled, rollups equal to it, one audit row per corrected event."""
    assert ledger_total(store) == 2 * old
    for rollup, ledger in rollups_vs_ledger(store):
        assert rollup == ledger
    assert store.rows(f"SELECT count() FROM {store.database}.reprice_audit")[0][0] == 10


def test_reprice_store_error_at_the_rollup_deltas_then_rerun_is_exact(
        store: Store, tmp_path: Path) -> None:
    # the ledger was corrected first and the rollups never: the re-run found nothing to change
    fill(store)
    old, catalog = ledger_total(store), priced_fix(tmp_path)
    with pytest.raises(Injected):
        run_reprice(FaultyStore(store, before="INSERT INTO usage_hourly"), catalog)
    assert run_reprice(store, catalog)["events_repriced"] == 10
    assert_exact(store, old)
    assert run_reprice(store, catalog)["events_repriced"] == 0


def test_reprice_crash_after_the_ledger_write_then_rerun_is_exact(
        store: Store, tmp_path: Path) -> None:
    fill(store)
    old, catalog = ledger_total(store), priced_fix(tmp_path)
    with pytest.raises(Injected):
        run_reprice(FaultyStore(store, after="ATTACH PARTITION"), catalog)
    run_reprice(store, catalog)
    assert_exact(store, old)


def test_reprice_crash_before_the_ledger_write_then_stream_inserts_then_rerun_is_exact(
        store: Store, tmp_path: Path) -> None:
    # deltas in, ledger not, and a stale-priced event of the day lands before the re-run: the
    # re-run's change set differs, so a token over it alone would count the deltas twice
    from pipeline.store.sink import USAGE_COLUMNS

    fill(store)
    old, catalog = ledger_total(store), priced_fix(tmp_path)
    db = store.database
    with pytest.raises(Injected):
        run_reprice(FaultyStore(store, before="ATTACH PARTITION"), catalog)
    row = list(store.query(f"SELECT {', '.join(USAGE_COLUMNS)} FROM {db}.usage_events "
                           "FINAL WHERE event_id = 'op-0'").result_rows[0])
    row[USAGE_COLUMNS.index("event_id")] = "landed-after-crash"
    store.insert("usage_events", [row], USAGE_COLUMNS)  # op-0's old (stale) price
    landed_old = row[USAGE_COLUMNS.index("total_cost")]
    assert run_reprice(store, catalog)["events_repriced"] == 11
    assert ledger_total(store) == 2 * (old + landed_old)
    for rollup, ledger in rollups_vs_ledger(store):
        assert rollup == ledger
    assert run_reprice(store, catalog)["events_repriced"] == 0


@pytest.mark.parametrize("stage", ["read", "journal", "deltas"])
def test_two_identical_reprices_of_a_day_at_once_count_the_correction_once(
        store: Store, tmp_path: Path, stage: str) -> None:
    # a CLI retry or a second worker (another process: the in-process lock does not see it),
    # a second later, runs the whole re-price while the first is at ``stage`` of the day
    fill(store)
    old, catalog = ledger_total(store), priced_fix(tmp_path)
    nested: list[dict] = []

    def other_run(at: str, day: object) -> None:
        if at == stage and day == DAY.date() and not nested:
            nested.append(run_reprice(store, catalog, now=NOW + timedelta(seconds=1)))

    run_reprice(store, catalog, hook=other_run)
    assert len(nested) == 1
    assert_exact(store, old)
    assert run_reprice(store, catalog)["events_repriced"] == 0


def test_reprices_in_one_process_wait_for_each_other(store: Store, tmp_path: Path) -> None:
    # two HTTP re-prices on one worker: a stale-priced insert lands between their reads, so
    # their change sets (and tokens) differ; the second must not start until the first ends
    import threading

    from pipeline.store.sink import USAGE_COLUMNS

    fill(store)
    old, catalog = ledger_total(store), priced_fix(tmp_path)
    db = store.database
    row = list(store.query(f"SELECT {', '.join(USAGE_COLUMNS)} FROM {db}.usage_events "
                           "FINAL WHERE event_id = 'op-0'").result_rows[0])
    row[USAGE_COLUMNS.index("event_id")] = "landed-between-reads"
    errors: list[BaseException] = []

    def second() -> None:
        try:
            run_reprice(store, catalog)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    other = threading.Thread(target=second)

    def land_and_start_the_other(at: str, day: object) -> None:
        if at == "read" and day == DAY.date() and other.ident is None:
            store.insert("usage_events", [row], USAGE_COLUMNS)
            other.start()
            other.join(3)  # time enough to run whole, were it not made to wait

    run_reprice(store, catalog, hook=land_and_start_the_other)
    other.join(120)
    assert errors == [] and not other.is_alive()
    landed_old = row[USAGE_COLUMNS.index("total_cost")]
    assert ledger_total(store) == 2 * (old + landed_old)
    for rollup, ledger in rollups_vs_ledger(store):
        assert rollup == ledger


def test_reprice_undone_and_redone_stays_exact(store: Store, tmp_path: Path) -> None:
    # the same correction made twice is not a duplicate to drop: each is its own change
    from pipeline.core.catalog import load_catalog

    fill(store)
    old, fixed, base = ledger_total(store), priced_fix(tmp_path), load_catalog()
    for catalog, total in ((fixed, 2 * old), (base, old), (fixed, 2 * old)):
        assert run_reprice(store, catalog)["events_repriced"] == 10
        assert ledger_total(store) == total
        for rollup, ledger in rollups_vs_ledger(store):
            assert rollup == ledger


def test_reprice_says_which_live_state_it_refreshed(store: Store, tmp_path: Path) -> None:
    from pipeline.runtime.ops import LIVE_REFRESHED, LIVE_STALE

    fill(store)
    priced_fix(tmp_path)
    body = {"from": (DAY - timedelta(days=1)).date().isoformat(),
            "to": (NOW + timedelta(days=1)).date().isoformat()}
    # the CLI against a ClickHouse server: no worker is told
    assert asyncio.run(reprice(ctx(store, tmp_path), {**body, "dry_run": True})
                       )["live_state"] == "unchanged"
    assert asyncio.run(reprice(ctx(store, tmp_path), body))["live_state"] == LIVE_STALE
    refreshed: list[int] = []

    async def refresh() -> None:
        refreshed.append(1)

    import_prices(tmp_path, {"gpt-4o-mini": {"input_cost_per_token": 6e-07,
                                             "output_cost_per_token": 2.4e-06,
                                             "litellm_provider": "openai"}},
                  DAY - timedelta(hours=12))
    through_worker = ctx(store, tmp_path)
    through_worker.after_reprice = refresh
    done = asyncio.run(reprice(through_worker, body))
    assert done["events_repriced"] == 10 and done["live_state"] == LIVE_REFRESHED
    assert refreshed == [1]
