"""`tokenmeter forecast`: run the forecast job once (cron), via the worker when it holds chDB."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pipeline.clock import clock_for
from pipeline.core.budgets import Budget
from pipeline.errors import ConfigError
from pipeline.settings import TOPIC_BREACHES, Settings


def _direct(settings: Settings, budget_id: str | None) -> dict[str, Any]:
    from rich.progress import Progress

    from pipeline.runtime.forecast_job import run_forecasts, summary
    from pipeline.store import ledger
    from pipeline.store.client import open_store
    from pipeline.store.migrations import migrate

    store = open_store(settings)
    try:
        migrate(store)
        budgets = [Budget.model_validate_json(spec)
                   for bid, spec, deleted in ledger.stored_budgets(store)
                   if not deleted and (budget_id is None or bid == budget_id)]
        if budget_id is not None and not budgets:
            raise ConfigError(f"no budget {budget_id!r}")

        async def go() -> Any:
            publish, stop = await _publisher(settings)
            try:
                with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
                    task = bar.add_task("forecasting", total=len(budgets))
                    return await run_forecasts(
                        store, budgets, clock_for(settings.clock_start)(), publish=publish,
                        processes=settings.forecast_processes,
                        progress=lambda done, total: bar.update(task, completed=done))
            finally:
                await stop()

        forecasts, breaches = asyncio.run(go())
    finally:
        store.close()
    return {"forecasts": [summary(f) for f in forecasts],
            "breaches": [b.model_dump(mode="json") for b in breaches]}


async def _publisher(settings: Settings) -> tuple[Any, Any]:
    from pipeline.stream.topics import start_producer

    producer = await start_producer(settings, "publish forecast breaches")

    async def publish(b: Any) -> None:
        await producer.send_and_wait(settings.topic(TOPIC_BREACHES),
                                     b.model_dump_json().encode(), key=b.tenant_id.encode())

    return publish, producer.stop


def cmd_forecast(args: argparse.Namespace, settings: Settings) -> int:
    """Run once; print a table or one JSON object per budget."""
    from pipeline.runtime.worker import worker_holding_store

    info = worker_holding_store(settings)
    if info is not None:
        from pipeline.cli.http import post_json

        body = {"budget_id": args.budget} if args.budget else {}
        result = post_json(f"{info['url']}/api/forecast", body, settings)
    else:
        result = _direct(settings, args.budget)
    forecasts = result["forecasts"]
    if args.json:
        for f in forecasts:
            print(json.dumps(f))
        return 0
    from pipeline.cli.output import print_rows

    rows = [[f["budget_id"], f["model"], f["spent"], f["predicted_spend"] or "-",
             f"{f['lower'] or '-'} .. {f['upper'] or '-'}", f["run_rate_spend"], f["limit"],
             f["probability_exceed"] or "-", f["period_end"][:16],
             f["reason"] if f["model"] in ("none", "recent_mean", "constant") else ""]
            for f in forecasts]
    print_rows(["budget", "model", "spent", "p50 end", "p10 .. p90", "run-rate", "limit",
                "P(>=100%)", "period end", "note"], rows, "table")
    for b in result["breaches"]:
        print(f"forecast alert: {b['budget_id']} likely to reach {b['threshold_pct']}% "
              f"(p={b['probability']}) around {b['projected_crossing_at']}", file=sys.stderr)
    return 0
