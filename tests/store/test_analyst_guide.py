"""Every SQL block of docs/analyst-guide.md runs unchanged on a populated ledger."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest

from pipeline.core.budgets import Budget
from pipeline.runtime.forecast_job import run_forecasts
from pipeline.store.client import Store
from pipeline.store.migrations import migrate
from pipeline.store.queries import run_read_only
from pipeline.store.sink import STATUS_COLUMNS
from tests.helpers import make_processor, messages, traffic
from tests.helpers import now as clock_now

# date-sensitive: `make test-clocks` runs it again at each instant of tests.helpers.CLOCKS
pytestmark = [pytest.mark.integration, pytest.mark.clock]
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "analyst-guide.md"


def guide_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", GUIDE.read_text("utf-8"), re.S)


@pytest.fixture()
def tokenmeter_db(chdb_root: Store):
    """The real database name the guide uses, on this process's engine, filled with traffic."""
    store = chdb_root.with_database("tokenmeter")
    chdb_root.command("DROP DATABASE IF EXISTS tokenmeter")
    migrate(store)
    proc, _ = make_processor(store)
    recent, old = traffic(seed=9, n=400)
    stream = recent + old + recent[:50]
    random.Random(1).shuffle(stream)
    msgs = messages([recent[0]] + stream)
    msgs.append(msgs[0].__class__(b"{broken", "usage-events", 0, 99_999))
    budget = Budget.model_validate({"budget_id": "b-guide", "tenant_id": "tenant-00000",
                                    "limit": "0.01", "period": "month"})
    proc.live.get(0)
    asyncio.run(proc.budget_changed(budget.budget_id, budget))

    async def go() -> None:
        for i in range(0, len(msgs), 100):
            await proc.process(msgs[i:i + 100])
        rows = await proc.status_rows(clock_now())
        await proc.sink.write_rows("budget_status", rows, STATUS_COLUMNS)
        from pipeline.stream.budget_feed import BUDGET_COLUMNS, budget_row

        await proc.sink.write_rows("budgets", [budget_row(budget.budget_id, budget,
                                                          clock_now())],
                                   BUDGET_COLUMNS)
        await run_forecasts(store, [budget], clock_now(), processes=1)

    asyncio.run(go())
    yield store
    chdb_root.command("DROP DATABASE IF EXISTS tokenmeter")


def test_guide_has_at_least_ten_queries() -> None:
    assert len(guide_blocks()) >= 10


def test_every_guide_query_runs_unchanged(tokenmeter_db: Store) -> None:
    results = {}
    for sql in guide_blocks():
        res = run_read_only(tokenmeter_db, sql)  # raises on any error
        results[sql.split("\n", 1)[0]] = res
    consistency = next(v for k, v in results.items() if k.startswith("SELECT l.tenant_id"))
    assert consistency.rows == []  # rollups == exact ledger
    status = next(v for k, v in results.items() if k.startswith("SELECT budget_id, tenant_id, metric"))
    assert status.rows and status.rows[0][0] == "b-guide"
    late = next(v for k, v in results.items() if "late_events" in k)
    assert sum(r[2] for r in late.rows) == 20
    dlq = next(v for k, v in results.items() if k.startswith("SELECT reason_code"))
    assert dlq.rows[0][0] == "invalid_json"
    json.dumps([r.rows for r in results.values()])  # everything is JSON-safe
