"""A real worker's HTTP API against what a web page in the operator's browser can send.

Browsers send cross-site forms and ``text/plain`` fetches without a CORS preflight, and DNS
rebinding makes the attacker's name point at 127.0.0.1: none of it may drive or read the API.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.litellm_prices import from_litellm
from pipeline.embedded.broker import EmbeddedBroker
from pipeline.settings import load_settings
from tests.helpers import NOW, ApiWorker, free_port, produce, subprocess_env

pytestmark = pytest.mark.integration
TENANT = "tenant-00007"
EVENTS = 6


def event(i: int) -> dict[str, Any]:
    at = NOW.replace(minute=0, second=0) + timedelta(seconds=i)
    return {"event_id": f"sec-{i}", "timestamp": at.isoformat(), "tenant_id": TENANT,
            "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1000 * (i + 1),
            "output_tokens": 100}


def wait_for(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ApiWorker]:
    """One worker (loopback, no token) with a few events of tenant-00007 stored."""
    tmp = tmp_path_factory.mktemp("websec")
    prefix = f"ws{uuid.uuid4().hex[:8]}-"
    settings = load_settings(kafka_bootstrap=broker.bootstrap, data_dir=str(tmp / "data"),
                             web_port=free_port(), topic_prefix=prefix, app_id=f"tm-{prefix}",
                             partitions=2)
    w = ApiWorker(settings, subprocess_env(settings))
    try:
        w.wait_ready()
        asyncio.run(produce(settings, [(TENANT.encode(), json.dumps(event(i)).encode())
                                      for i in range(EVENTS)]))
        wait_for(lambda: w.sql("SELECT count() FROM tokenmeter.usage_events FINAL")[0][0]
                 == EVENTS)
        yield w
    finally:
        w.stop()


def test_a_foreign_host_is_refused(worker: ApiWorker) -> None:
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser sends it as Host
    for method, path, body in (("GET", "/api/budgets", None),
                               ("POST", "/api/query", {"sql": "SELECT 1"}),
                               ("GET", "/api/dashboard/overview", None), ("GET", "/", None)):
        status, answer = worker.json(method, path, body,
                                     headers={"Host": f"evil.example:{worker.settings.web_port}"})
        assert status == 403, (path, answer)
        assert "TOKENMETER_ALLOWED_HOSTS" in answer["error"]
    port = worker.settings.web_port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert worker.json("GET", "/api/budgets", headers={"Host": host})[0] == 200, host
    # probes address pods by IP: /health and /metrics answer whatever the Host
    assert worker.call("GET", "/health", headers={"Host": "10.1.2.3:6066"})[0] == 200
    assert worker.call("GET", "/metrics", headers={"Host": "10.1.2.3:6066"})[0] == 200


def test_cross_site_simple_requests_are_refused(worker: ApiWorker) -> None:
    outside = worker.settings.data_dir.parent / "pwned.csv"
    text = {"Content-Type": "text/plain;charset=UTF-8"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = {"from": "2000-01-01", "to": "2100-01-01", "file": str(outside)}
    assert worker.json("POST", "/api/ops/export_focus", body, headers=text)[0] == 415
    assert not outside.exists()
    assert worker.json("PUT", "/api/budgets/evil", {"tenant_id": TENANT, "limit": "1"},
                       headers=text)[0] == 415
    assert worker.json("POST", "/api/ops/reprice", {"from": "2000-01-01", "to": "2100-01-01"},
                       headers=form)[0] == 415
    status, answer = worker.json("POST", "/api/ops/dlq_replay", json_type=False)
    assert status == 415 and "application/json" in answer["error"]
    assert worker.json("DELETE", "/api/budgets/evil", json_type=False)[0] == 415
    assert [b["budget_id"] for b in worker.budgets()] == []


def test_cross_origin_browser_requests_are_refused(worker: ApiWorker) -> None:
    port = worker.settings.web_port
    budget = {"tenant_id": TENANT, "limit": "100", "period": "month"}
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": "http://127.0.0.1:1"},  # another local app is another origin
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        status, answer = worker.json("PUT", "/api/budgets/xsite", budget, headers=headers)
        assert status == 403, (headers, answer)
        assert worker.json("POST", "/api/query", {"sql": "SELECT 1"},
                           headers=headers)[0] == 403
    assert worker.budgets() == []
    # the dashboard's own calls are same-origin: they pass (so does a link to the page)
    same = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
    assert worker.json("GET", "/api/dashboard/budgets", headers=same)[0] == 200
    assert worker.call("GET", "/", headers={"Sec-Fetch-Site": "cross-site"})[0] == 200
    status, answer = worker.json("PUT", "/api/budgets/mine", budget, headers=same)
    assert status == 200, answer
    assert worker.json("DELETE", "/api/budgets/mine", headers=same)[0] == 200


def test_an_export_is_written_only_under_the_data_dir(worker: ApiWorker) -> None:
    exports = (worker.settings.data_dir / "exports").resolve()
    span = {"from": "2000-01-01", "to": "2100-01-01"}
    for file in (str(worker.settings.data_dir.parent / "outside.csv"), "../outside.csv",
                 "a/../../outside.csv", "/etc/cron.d/x.csv", str(exports),
                 str(exports / "x.txt")):
        status, answer = worker.json("POST", "/api/ops/export_focus", {**span, "file": file})
        assert status == 400, (file, answer)
        assert "exports" in answer["error"] or ".csv" in answer["error"], answer
    assert not (worker.settings.data_dir.parent / "outside.csv").exists()
    status, answer = worker.json("POST", "/api/ops/export_focus", {**span, "file": "f.csv"})
    assert status == 200, answer
    assert Path(answer["file"]) == exports / "f.csv" and answer["rows"] == EVENTS
    assert len(list(csv.DictReader((exports / "f.csv").open()))) == EVENTS


def test_an_export_without_a_file_comes_back_in_the_response(worker: ApiWorker) -> None:
    span = {"from": "2000-01-01", "to": "2100-01-01"}
    status, headers, data = worker.call("POST", "/api/ops/export_focus", span)
    assert status == 200, data
    assert headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    ledger = Decimal(str(worker.sql(
        f"SELECT sum(total_cost) FROM tokenmeter.usage_events FINAL "
        f"WHERE tenant_id = '{TENANT}'")[0][0]))
    assert len(rows) == EVENTS == int(headers["x-tokenmeter-rows"])
    assert sum(Decimal(r["BilledCost"]) for r in rows) == ledger
    assert Decimal(headers["x-tokenmeter-billed-cost"]) == ledger
    status, headers, data = worker.call("POST", "/api/ops/export_focus",
                                        {**span, "format": "parquet"})
    assert status == 200 and data[:4] == b"PAR1"


def test_cli_export_through_the_worker_writes_where_the_operator_says(worker: ApiWorker,
                                                                      tmp_path: Path) -> None:
    # a regression guard: the CLI runs as the operator, its FILE may be anywhere
    out = tmp_path / "elsewhere" / "focus.csv"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "export", "focus",
                           "--from", "2000-01-01", "--to", "2100-01-01", str(out)],
                          env=subprocess_env(worker.settings), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(list(csv.DictReader(out.open()))) == EVENTS
    assert f"wrote {EVENTS} FOCUS rows" in done.stderr


def test_reprice_through_the_worker_refreshes_its_live_spend(worker: ApiWorker) -> None:
    def day_spend() -> Decimal:
        status, answer = worker.json(
            "GET", f"/api/tenants/{TENANT}/spend?window=day&at={NOW.isoformat()}".replace(
                "+", "%2B"), json_type=False)
        assert status == 200, answer
        return Decimal(answer["total_cost"])

    before = day_spend()
    assert before > 0
    prices = worker.settings.prices_dir
    prices.mkdir(parents=True, exist_ok=True)
    effective = NOW - timedelta(days=1)
    cat = from_litellm({"gpt-4o-mini": {"input_cost_per_token": 3e-07,
                                        "output_cost_per_token": 1.2e-06,
                                        "litellm_provider": "openai"}},
                       effective, "sec-fix", "test")  # twice the list price
    (prices / f"{effective.timestamp():.0f}.json").write_text(cat.model_dump_json())
    day = NOW.date()
    status, answer = worker.json("POST", "/api/ops/reprice", {
        "from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat()})
    assert status == 200 and answer["events_repriced"] == EVENTS, answer
    assert day_spend() == 2 * before
    rollup = worker.sql(f"SELECT sum(total_cost), sum(events) FROM tokenmeter.usage_daily "
                        f"WHERE tenant_id = '{TENANT}'")[0]
    assert Decimal(str(rollup[0])) == 2 * before and int(rollup[1]) == EVENTS
