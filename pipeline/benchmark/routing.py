"""Routing decision time in-process: the SDK's ``Router.route`` and the decision policy.

    python -m pipeline.benchmark.routing [N] [--mmlu DIR]

N prompts (default 10,000): the MMLU prompts of DIR (default ``../shared/routing/mmlu``
next to the checkout, RouteLLM's evaluation files; skipped when absent), shuffled, then the
demo's simulated prompts up to N. Each is routed once with the shipped artifact after a
warm-up of 200 simulated prompts; the figures are each call's wall time
(``perf_counter_ns``) and its thread CPU time. The budget-aware policy
(``route_policy.decide_routed``, pricing both models against two rooms) is timed on the same
verdicts. Prints one JSON object.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.core.budgets import Metric, Mode
from pipeline.core.catalog import load_catalog
from pipeline.core.decision import Request, Room
from pipeline.core.route_policy import Pressure, Verdict, decide_routed, effective_threshold
from pipeline.core.simulate import routed_prompt
from pipeline.sdk import Route, Router

DEFAULT_MMLU = Path(__file__).resolve().parents[2].parent / "shared" / "routing" / "mmlu"
AT = datetime(2026, 6, 17, tzinfo=timezone.utc)


def prompts(n: int, mmlu: Path) -> tuple[list[str], dict[str, int]]:
    """``n`` prompts: MMLU's (when the files are there) first, simulated ones after."""
    csv.field_size_limit(1 << 24)
    rng = random.Random(21)
    real: list[str] = []
    for path in sorted(mmlu.glob("*.csv")) if mmlu.is_dir() else []:
        with path.open(newline="", encoding="utf-8") as handle:
            real.extend(row["prompt"] or "" for row in csv.DictReader(handle))
    rng.shuffle(real)
    real = real[:n]
    simulated = [routed_prompt(rng)[0] for _ in range(n - len(real))]
    return real + simulated, {"mmlu": len(real), "simulated": len(simulated)}


def percentiles(ns: Sequence[int]) -> dict[str, float]:
    """p50, p99 and max of nanosecond timings, in milliseconds."""
    ordered = sorted(ns)
    return {"p50_ms": round(ordered[len(ordered) // 2] / 1e6, 4),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6, 4),
            "max_ms": round(ordered[-1] / 1e6, 4)}


def timed(fn: Callable[[Any], Any], items: Sequence[Any]
          ) -> tuple[list[int], list[int], list[Any]]:
    """Each call's wall and thread CPU time in nanoseconds, and its results (CPU time leaves
    out the time other processes on a busy machine take the core away)."""
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    out, wall_ns, cpu_ns = [], [], []
    for item in items:
        t, c = wall(), cpu()
        out.append(fn(item))
        cpu_ns.append(cpu() - c)
        wall_ns.append(wall() - t)
    return wall_ns, cpu_ns, out


def run(n: int = 10_000, mmlu: Path = DEFAULT_MMLU) -> dict[str, Any]:
    """Route ``n`` prompts with the SDK, then decide them with the policy; the timings."""
    router = Router()
    texts, sources = prompts(n, mmlu)
    rng = random.Random(5)
    for _ in range(200):  # warm-up: imports, caches of common words
        router.route(routed_prompt(rng)[0])
    route_wall, route_cpu, routes = timed(router.route, texts)
    catalog = load_catalog()
    req = Request("acme", "gpt-4o", "standard", 900, 300)
    rooms = [Room("b1", "", Decimal(100), Decimal(70), Mode.hard, Metric.cost),
             Room("b2", "standard", Decimal(20), Decimal(5), Mode.soft, Metric.cost)]

    def policy(route: Route) -> Any:
        v = Verdict(route.p_weak_ok, route.base_threshold, route.router_version,
                    route.weak.model, route.strong.model)
        return decide_routed(req, v, rooms, rooms, catalog, AT)

    policy_wall, policy_cpu, decisions = timed(policy, routes)
    return {
        "prompts": len(texts), "sources": sources, "router_version": router.router_version,
        "cpus": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2),
        "sdk_route_wall": percentiles(route_wall),
        "sdk_route_cpu": percentiles(route_cpu),
        "strong_share_local": round(sum(r.tier == "strong" for r in routes) / len(routes), 4),
        "policy_decide_routed_wall": percentiles(policy_wall),
        "policy_decide_routed_cpu": percentiles(policy_cpu),
        "strong_share_at_30pct_left": round(
            sum(d.model == "gpt-4o" for d in decisions) / len(decisions), 4),
        # how far the threshold shift moves these prompts: strong share by share left
        "strong_share_by_remaining_share": {
            str(left): round(sum(r.p_weak_ok < effective_threshold(
                r.base_threshold, Pressure(left, "b", ())) for r in routes) / len(routes), 4)
            for left in (Decimal(1), Decimal("0.5"), Decimal("0.45"), Decimal("0.4"),
                         Decimal("0.35"), Decimal("0.3"), Decimal("0.25"), Decimal("0.1"),
                         Decimal(0))},
    }


def main(argv: list[str]) -> int:
    """Command-line entry: ``[N] [--mmlu DIR]``."""
    args = list(argv)
    mmlu = DEFAULT_MMLU
    if "--mmlu" in args:
        i = args.index("--mmlu")
        mmlu = Path(args[i + 1])
        del args[i:i + 2]
    n = int(args[0]) if args else 10_000
    print(json.dumps(run(n, mmlu), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
