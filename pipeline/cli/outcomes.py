"""`tokenmeter router compare|outcomes`: route variants with outcomes, and the outcomes export.

The SQL lives in :mod:`pipeline.store.outcomes` and the statistics in
:mod:`pipeline.core.outcome_stats`; this module runs the query (through a running worker's
read-only API when it holds the store, else on the store directly), and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from pipeline.cli.args import parse_time
from pipeline.core import outcome_stats
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.store import outcomes as sql


def _pairs(args: argparse.Namespace, names: list[str]) -> list[tuple[str, str]]:
    if (args.a is None) != (args.b is None):
        raise ConfigError("--a and --b go together: the two variants to subtract (a - b)")
    if args.a is not None:
        return [(args.a, args.b)]
    # two variants (an A/B): their difference; more: name the pair with --a/--b
    return [(names[0], names[1])] if len(names) == 2 else []


def compare(args: argparse.Namespace, settings: Settings) -> int:
    """`router compare`: per variant n, success rate, mean score, cost; differences with CIs."""
    from pipeline.cli.commands import run_query

    if not 0.5 <= args.confidence < 1:
        raise ConfigError(f"--confidence {args.confidence}: use a level in [0.5, 1), e.g. 0.95")
    by = [b.strip() for b in args.by.split(",") if b.strip()]
    since = parse_time(args.since, "--since")
    query = sql.compare_sql(settings.clickhouse_database, by, args.tenant, since)
    _, rows = run_query(settings, query)
    totals = sql.totals(rows)
    result = outcome_stats.report(totals, _pairs(args, [t.name for t in totals]),
                                  args.confidence)
    result["by"] = by
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_compare(result)
    return 0


def _ci(i: dict[str, float | None] | None, pct: bool = False) -> str:
    if i is None:
        return ""
    def f(v: float | None) -> str:
        return "?" if v is None else (f"{v:.1%}" if pct else f"{v:.3f}")
    return f"{f(i['estimate'])} [{f(i['low'])}, {f(i['high'])}]"


def _print_compare(res: dict[str, Any]) -> None:
    from pipeline.cli.output import print_rows

    level = f"{res['confidence']:.0%}"
    print_rows(["variant (" + "/".join(res["by"]) + ")", "requests", "cost per 1k", "judged",
                f"success rate [{level} CI]", "scored", f"mean score [{level} CI]"],
               [[v["variant"], v["requests"], v["cost_per_1k"], v["judged"],
                 _ci(v["success_rate"], pct=True), v["scored"], _ci(v["mean_score"])]
                for v in res["variants"]], "table")
    if res["differences"]:
        print_rows(["a - b", "success rate", "mean score", "cost per 1k"],
                   [[f"{d['a']} - {d['b']}", _ci(d["success_rate"], pct=True),
                     _ci(d["mean_score"]), d["cost_per_1k"]] for d in res["differences"]],
                   "table")
    sys.stdout.write("intervals: Wilson (rates), Newcombe (rate differences), Student t "
                     "(means), Welch t (mean differences)\n")


def export(args: argparse.Namespace, settings: Settings) -> int:
    """`router outcomes`: routed calls that have an outcome (event_id, tier, model, signals)."""
    from pipeline.cli.commands import run_query
    from pipeline.cli.output import print_rows

    since = parse_time(args.since, "--since")
    columns, rows = run_query(settings, sql.export_sql(settings.clickhouse_database,
                                                       args.tenant, since))
    fmt = "json" if args.json else "csv" if args.csv else "table"
    print_rows(list(columns), [list(r) for r in rows], fmt)
    return 0


def _filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--tenant", help="only this tenant's calls")
    sp.add_argument("--since", metavar="TS", help="only calls at or after this RFC 3339 time")


def register(rsub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `router compare` and `router outcomes` to the router's sub-commands."""
    sp = rsub.add_parser("compare", help="route variants: n, success rate, mean score, cost "
                                         "per 1,000 requests, differences with CIs")
    common(sp)
    sp.add_argument("--by", default="version",
                    help=f"what makes a variant: comma-separated of {', '.join(sql.GROUPINGS)} "
                         "(default version)")
    sp.add_argument("--a", metavar="VARIANT", help="subtract --b from this variant")
    sp.add_argument("--b", metavar="VARIANT")
    sp.add_argument("--confidence", type=float, default=0.95,
                    help="confidence level of the intervals (default 0.95)")
    sp.add_argument("--json", action="store_true")
    _filters(sp)
    sp.set_defaults(func=compare)

    sp = rsub.add_parser("outcomes", help="export routed calls that have an outcome (to "
                                          "join with your prompts for router train)")
    common(sp)
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true")
    g.add_argument("--csv", action="store_true")
    _filters(sp)
    sp.set_defaults(func=export)
