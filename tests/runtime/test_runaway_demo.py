"""The demo's runaway agent run on a real worker and broker: every step reserves first, the
$2 hard run budget stops the run, and the velocity watch reports it as an anomaly."""

from __future__ import annotations

import signal
import time
import urllib.request
from decimal import Decimal

import pytest

from pipeline.runtime.runaway_demo import RUN_BUDGET_ID, RUNAWAY_TENANT, run_budget, run_runaway
from pipeline.settings import Settings
from tests.helpers import get, now, query, start_worker, wait_events, wait_ready

pytestmark = [pytest.mark.integration]


def test_the_runaway_run_is_stopped_by_its_run_budget_and_reported(settings: Settings) -> None:
    proc = start_worker(settings)
    try:
        wait_ready(settings, proc)
        req = urllib.request.Request(
            f"{settings.web_url}/api/budgets/{RUN_BUDGET_ID}", method="PUT",
            data=run_budget().model_dump_json().encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        result = run_runaway(settings, now, "run-away-1", max_steps=120, pause_s=0)
        assert result.stopped and "hard budget exhausted" in result.reason, result
        assert 0 < result.steps < 120
        assert wait_events(settings, result.steps, timeout=30) == result.steps
        rows = query(settings, "SELECT toString(sum(total_cost)), count() FROM "
                     "tokenmeter.usage_events FINAL WHERE trace_id = 'run-away-1'")
        spent = Decimal(rows[0][0])
        assert spent == result.estimated_spend  # the meter agrees with the offline price
        assert Decimal("1.5") < spent <= Decimal(2)  # held to the run's $2
        # a second run of the same tenant has its own $2: the first did not use it up
        assert run_runaway(settings, now, "run-away-2", max_steps=1, pause_s=0).steps == 1
        deadline = time.monotonic() + 20
        kinds: dict[str, list[dict]] = {}
        while time.monotonic() < deadline:
            found = get(settings, f"/api/breaches?tenant_id={RUNAWAY_TENANT}")[1]
            kinds = {}
            for b in found.get("breaches", []):
                kinds.setdefault(b["kind"], []).append(b)
            if "anomaly" in kinds and "threshold" in kinds:
                break
            time.sleep(0.2)
        anomaly = kinds["anomaly"][0]
        assert anomaly["budget_id"] == RUN_BUDGET_ID
        observed = Decimal(anomaly["observed_rate"])
        # over the $1/min ceiling, or (this tenant has no history) over the floor and far
        # above its zero baseline, whichever the watch saw first
        assert observed > 1 or (observed >= Decimal("0.05")
                                and observed >= 3 * Decimal(anomaly["baseline_rate"] or 0))
        crossed = {(b["key"], Decimal(b["threshold_pct"])) for b in kinds["threshold"]}
        assert ("run-away-1", Decimal(50)) in crossed and ("run-away-1", Decimal(80)) in crossed
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
