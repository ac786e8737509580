"""The demo's runaway agent: a loop that would call Opus forever, stopped by a run budget.

It is written the way a user would write an agent against tokenmeter: every step reserves its
estimate first (``producer.reserve``), calls the model only when allowed, and records the
call's usage with the reservation's id. The run budget (each trace_id, hard, $2 a run) denies
the step that would overrun it, and the velocity watch reports the burst as an anomaly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from pipeline.core.budgets import Budget
from pipeline.core.catalog import load_catalog
from pipeline.core.pricing import TokenCounts, cost_lines
from pipeline.core.simulate import runaway_call
from pipeline.settings import TOPIC_EVENTS, Settings

log = logging.getLogger(__name__)
RUNAWAY_TENANT = "tenant-00003"
RUN_BUDGET_ID = "demo-tenant-00003-runs"


def run_budget(tenant: str = RUNAWAY_TENANT) -> Budget:
    """Each agent run of the tenant at most $2 (hard), and a spend rate over $1 a minute is
    an anomaly whatever the baseline says."""
    return Budget.model_validate({
        "budget_id": RUN_BUDGET_ID, "tenant_id": tenant, "period": "run", "each": "trace_id",
        "limit": "2", "mode": "hard", "idle_timeout_s": 600, "thresholds": [50, 80, 100],
        "anomaly": {"enabled": True, "max_rate": "1"},
    })


@dataclass(frozen=True, slots=True)
class RunawayResult:
    """How the runaway ended."""

    run_id: str
    steps: int  # calls made (and metered)
    estimated_spend: Decimal  # list cost of those calls, priced offline from the catalog
    stopped: bool  # denied by a budget (not out of steps)
    reason: str


def run_runaway(settings: Settings, clock: Callable[[], datetime], run_id: str, *,
                tenant: str = RUNAWAY_TENANT, max_steps: int = 200,
                pause_s: float = 0.25) -> RunawayResult:
    """Run the agent loop until a reservation is denied (or ``max_steps``): blocking."""
    from pipeline.sdk import UsageProducer

    catalog = load_catalog()
    token = settings.api_token.get_secret_value() if settings.api_token else None
    spent = Decimal(0)
    with UsageProducer(settings.kafka_bootstrap, topic=settings.topic(TOPIC_EVENTS),
                       api_url=settings.web_url, api_token=token, clock=clock,
                       batch_size=1, linger_ms=0) as producer:
        for step in range(max_steps):
            call = runaway_call(clock(), tenant, run_id, step)
            with producer.reserve(tenant_id=tenant, model=call["model"],
                                  estimated_input_tokens=call["input_tokens"],
                                  estimated_output_tokens=call["output_tokens"],
                                  trace_id=run_id, attributes={"run_id": run_id}) as r:
                if r.decision == "deny":
                    reason = str(r.answer.get("reason", "denied"))
                    log.warning("demo: runaway run %s stopped after %d calls ($%s): %s",
                                run_id, step, spent, reason)
                    return RunawayResult(run_id, step, spent, True, reason)
                m, v = catalog.price_version(r.model, clock())
                counts = TokenCounts(input_tokens=call["input_tokens"],
                                     output_tokens=call["output_tokens"])
                spent += cost_lines(counts, m, v, currency=catalog.currency).total_cost
                fields = {k: call[k] for k in ("event_id", "project_id", "user_id",
                                               "feature", "trace_id", "attributes",
                                               "task_type")}
                producer.record(tenant_id=tenant, provider=call["provider"], model=r.model,
                                input_tokens=call["input_tokens"],
                                output_tokens=call["output_tokens"], **fields)
                producer.flush()
            time.sleep(pause_s)
    return RunawayResult(run_id, max_steps, spent, False, "ran out of steps")
