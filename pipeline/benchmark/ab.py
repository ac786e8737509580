"""Before/after rows in one run: the worker of several checkouts on the same messages.

Usage: .venv/bin/python -m pipeline.benchmark.ab [--rounds 3] LABEL=DIR [LABEL=DIR ...]
       [--env LABEL:NAME=VALUE ...]

Each DIR is a checkout (e.g. ``git worktree add --detach /tmp/before <commit>``); its worker
runs from there, so it meters with that commit's code. The variants take turns, round after
round, on one embedded broker with the same pre-loaded single-event and envelope topics, so
drift on a shared machine falls on every variant alike. Prints one JSON object: per variant
the rate of every round, the medians, and each median over the first variant's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.benchmark.throughput import (
    envelope_messages,
    free_port,
    make_events,
    preload,
    single_messages,
    worker_rate,
)
from pipeline.embedded.broker import EmbeddedBroker


def run(variants: dict[str, tuple[Path, dict[str, str]]], rounds: int = 3,
        n_single: int = 20_000, n_batched: int = 100_000, partitions: int = 4) -> dict[str, Any]:
    """Rates of every variant, alternating, with medians and ratios to the first variant."""
    broker = EmbeddedBroker("127.0.0.1", free_port(),
                            log_path=Path(tempfile.gettempdir()) / "tm-ab-broker.log")
    broker.start()
    rates: dict[str, dict[str, list[float]]] = {k: {"single": [], "batched": []}
                                                for k in variants}
    try:
        asyncio.run(preload(broker.bootstrap, "as-usage-events",
                            single_messages(make_events(n_single)), partitions))
        asyncio.run(preload(broker.bootstrap, "ab-usage-events",
                            envelope_messages(make_events(n_batched, seed=2), 100), partitions))
        for r in range(rounds):
            for name, (cwd, env) in variants.items():
                for kind, prefix, n in (("single", "as-", n_single),
                                        ("batched", "ab-", n_batched)):
                    rate = worker_rate(broker.bootstrap, prefix, n, partitions, env, cwd)
                    rates[name][kind].append(round(rate, 1))
                print(f"round {r + 1}: {name} {rates[name]}", file=sys.stderr, flush=True)
    finally:
        broker.stop()
    first = next(iter(variants))
    out: dict[str, Any] = {}
    for name, kinds in rates.items():
        row: dict[str, Any] = {"rounds": kinds}
        for kind, values in kinds.items():
            row[f"{kind}_median"] = statistics.median(values)
            row[f"{kind}_vs_{first}"] = round(statistics.median(values)
                                              / statistics.median(rates[first][kind]), 3)
        out[name] = row
    return out


def main() -> None:  # pragma: no cover - a benchmark entry point
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="LABEL=DIR (a checkout)")
    parser.add_argument("--env", action="append", default=[], help="LABEL:NAME=VALUE")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants: dict[str, tuple[Path, dict[str, str]]] = {}
    for spec in args.variants:
        label, _, where = spec.partition("=")
        variants[label] = (Path(where).resolve(), {})
    for spec in args.env:
        label, _, assignment = spec.partition(":")
        name, _, value = assignment.partition("=")
        variants[label][1][name] = value
    print(json.dumps(run(variants, rounds=args.rounds)))


if __name__ == "__main__":
    main()
