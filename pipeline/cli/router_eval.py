"""`tokenmeter router eval`: curves, APGR and CPT next to random and oracle, and dollar costs.

Tokens are counted offline (tiktoken) and priced with the catalog, so the cost per 1,000
requests is what the catalog says these prompts (and, where known, responses) cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.cli.args import parse_time
from pipeline.cli.router_data import Row, load_router, read_rows
from pipeline.core import routing as r


@dataclass(frozen=True, slots=True)
class RowCosts:
    """What each row costs on each model, and how its tokens were counted."""

    weak: list[Decimal]
    strong: list[Decimal]
    output_counted: int  # rows whose output tokens came from a response text (per model)
    assumed_output_tokens: int
    weak_price_version: str
    strong_price_version: str
    currency: str
    token_source: dict[str, str]


def row_costs(rows: Sequence[Row], args: argparse.Namespace, at: datetime) -> RowCosts:
    """Price every row on both models: prompt tokens counted, output from responses or assumed."""
    from pipeline.core.catalog import load_catalog
    from pipeline.core.pricing import TokenCounts, cost_lines
    from pipeline.core.tokens import TokenCounter

    catalog = load_catalog()
    counter = TokenCounter()
    wm, wv = catalog.price_version(args.weak_model, at, args.weak_provider)
    sm, sv = catalog.price_version(args.strong_model, at, args.strong_provider)
    sources: dict[str, str] = {}
    weak: list[Decimal] = []
    strong: list[Decimal] = []
    counted = 0
    for row in rows:
        for side, model, mp, ver, resp, out in (
                ("weak", args.weak_model, wm, wv, row.weak_response, weak),
                ("strong", args.strong_model, sm, sv, row.strong_response, strong)):
            n_in, src = counter.count(model, row.prompt)
            sources[side] = src
            if resp:
                n_out, _ = counter.count(model, resp)
                counted += 1
            else:
                n_out = args.output_tokens
            lines = cost_lines(TokenCounts(n_in, n_out), mp, ver, currency=catalog.currency)
            out.append(lines.total_cost)
    return RowCosts(weak, strong, counted, args.output_tokens, wv.version, sv.version,
                    catalog.currency, sources)


def _per_1k(total: Decimal, n: int) -> Decimal:
    return (total * 1000 / n).quantize(Decimal("0.0001"))


def _routed_cost(scores: Sequence[float], threshold: float, costs: RowCosts) -> Decimal:
    return sum((s_cost if p < threshold else w_cost
                for p, w_cost, s_cost in zip(scores, costs.weak, costs.strong, strict=True)),
               Decimal(0))


def evaluate(args: argparse.Namespace, settings: object = None) -> int:
    """`router eval`: curves, APGR and CPTs for router/random/oracle, and the dollar cost."""
    art = load_router(args.router)
    rows = read_rows([Path(p) for p in args.files], args.weak_column, args.strong_column)
    scores = [r.p_weak_ok(art, row.prompt) for row in rows]
    weak = [row.weak_ok for row in rows]
    strong = [row.strong_ok for row in rows]
    n = len(rows)
    weak_acc, strong_acc = sum(weak) / n, sum(strong) / n
    compared = r.compare(scores, weak, strong)
    at = parse_time(args.at, "--at") or datetime.now(timezone.utc)
    costs = row_costs(rows, args, at)
    total_weak = sum(costs.weak, Decimal(0))
    total_strong = sum(costs.strong, Decimal(0))
    t95, share95 = r.threshold_for_quality(scores, weak, strong, args.quality)
    # the random router reaches the same quality at the strong share that closes that part
    # of the gap, paying that share of the difference on average
    target_acc = args.quality * strong_acc
    random_share = max(0.0, min(1.0, (target_acc - weak_acc) / (strong_acc - weak_acc)))
    random_cost = total_weak + (total_strong - total_weak) * Decimal(str(random_share))
    cost_art = _routed_cost(scores, art.threshold, costs)
    cost95 = _routed_cost(scores, t95, costs)
    result: dict[str, Any] = {
        "router_version": art.router_version,
        "files": [Path(p).name for p in args.files],
        "rows": n,
        "subjects": sorted({row.source for row in rows}),
        "trained_on_subjects": list(art.training.get("subjects", [])),
        "weak_accuracy": round(weak_acc, 4),
        "strong_accuracy": round(strong_acc, 4),
        "routers": {name: m.summary() for name, m in compared.items()},
        # the pooled APGR rewards ordering whole subjects as much as prompts within one;
        # per subject, random is 0.5 and only the within-subject ranking counts
        "by_subject": _by_subject(r.by_group(scores, weak, strong,
                                             [row.source for row in rows])),
        "artifact_threshold": {
            "threshold": art.threshold, "method": dict(art.threshold_method),
            "strong_share": round(r.strong_share(scores, art.threshold), 4),
            "accuracy": round(r.routed_accuracy(scores, weak, strong, art.threshold), 4)},
        "cost": {
            "currency": costs.currency,
            "at": at.isoformat(),
            "weak": {"model": args.weak_model, "provider": args.weak_provider,
                     "price_version": costs.weak_price_version,
                     "token_source": costs.token_source.get("weak")},
            "strong": {"model": args.strong_model, "provider": args.strong_provider,
                       "price_version": costs.strong_price_version,
                       "token_source": costs.token_source.get("strong")},
            "output_tokens": (
                f"counted from response texts on {costs.output_counted} of {2 * n} "
                f"row-model pairs; {args.output_tokens} assumed elsewhere"),
            "per_1000_requests": {
                "always_weak": str(_per_1k(total_weak, n)),
                "always_strong": str(_per_1k(total_strong, n)),
                "router_at_artifact_threshold": str(_per_1k(cost_art, n)),
                f"router_at_{round(args.quality * 100)}pct_strong_accuracy": str(
                    _per_1k(cost95, n)),
                f"random_at_{round(args.quality * 100)}pct_strong_accuracy": str(
                    _per_1k(random_cost, n)),
            },
            "quality_point": {
                "target": args.quality,
                "threshold": t95,
                "strong_share": round(share95, 4),
                "accuracy": round(r.routed_accuracy(scores, weak, strong, t95), 4),
                "saving_vs_always_strong": round(float(1 - cost95 / total_strong), 4)
                if total_strong else None,
                "chosen_on": "this evaluation set (labels known): the cheapest threshold "
                             "that keeps the target; the artifact's own threshold is above",
            },
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_eval(result)
    return 0


def _by_subject(groups: Sequence[r.GroupMetrics]) -> dict[str, Any]:
    mean = r.mean_group_apgr(groups)
    return {"mean_apgr": None if mean is None else round(mean, 4),
            "subjects_with_a_gap": sum(1 for g in groups if g.apgr is not None),
            "subjects": {g.group: {"rows": g.rows, "weak_accuracy": round(g.weak_accuracy, 4),
                                   "strong_accuracy": round(g.strong_accuracy, 4),
                                   "apgr": None if g.apgr is None else round(g.apgr, 4)}
                         for g in groups}}


def _print_by_subject(out: Callable[[str], Any], by: dict[str, Any]) -> None:
    if len(by["subjects"]) < 2:
        return
    mean = by["mean_apgr"]
    out(f"\nwithin each subject (random 0.5): mean APGR "
        f"{'n/a' if mean is None else f'{mean:.3f}'} over {by['subjects_with_a_gap']} subjects "
        "where strong is more accurate\n")
    out(f"  {'subject':<34} {'rows':>6} {'weak':>6} {'strong':>7} {'APGR':>6}\n")
    for name, g in by["subjects"].items():
        value = "-" if g["apgr"] is None else f"{g['apgr']:.3f}"
        out(f"  {name:<34} {g['rows']:>6} {g['weak_accuracy']:>6.3f} "
            f"{g['strong_accuracy']:>7.3f} {value:>6}\n")


def _print_eval(res: dict[str, Any]) -> None:
    out = sys.stdout.write
    out(f"router {res['router_version']} on {res['rows']} rows "
        f"({len(res['subjects'])} subjects); weak accuracy {res['weak_accuracy']:.3f}, "
        f"strong {res['strong_accuracy']:.3f}\n")
    overlap = set(res["subjects"]) & set(res["trained_on_subjects"])
    if overlap:
        out(f"note: {len(overlap)} of these subjects were in the training data "
            "(in-sample figures)\n")
    out(f"\n{'router':<8} {'APGR':>7} {'CPT(50%)':>9} {'CPT(80%)':>9}\n")
    for name, m in res["routers"].items():
        out(f"{name:<8} {m['apgr']:>7.3f} {m['cpt50']:>8.1%} {m['cpt80']:>8.1%}\n")
    out("\naccuracy by share of strong calls\n")
    shares = list(res["routers"]["router"]["accuracy_at_strong_share"])
    out(f"{'strong':<8}" + "".join(f"{float(s):>7.0%}" for s in shares) + "\n")
    for name, m in res["routers"].items():
        acc = m["accuracy_at_strong_share"]
        out(f"{name:<8}" + "".join(f"{acc[s]:>7.3f}" for s in shares) + "\n")
    _print_by_subject(out, res["by_subject"])
    a = res["artifact_threshold"]
    out(f"\nartifact threshold {a['threshold']:.4f} ({a['method'].get('method')}): "
        f"{a['strong_share']:.1%} strong, accuracy {a['accuracy']:.3f}\n")
    c = res["cost"]
    out(f"\ncost per 1,000 requests ({c['currency']}, catalog at {c['at']}):\n"
        f"  weak   = {c['weak']['model']} at {c['weak']['provider']}\n"
        f"  strong = {c['strong']['model']} at {c['strong']['provider']}\n"
        f"  output tokens: {c['output_tokens']}\n")
    for k, v in c["per_1000_requests"].items():
        out(f"  {k:<36} {v:>10}\n")
    q = c["quality_point"]
    saving = q["saving_vs_always_strong"]
    out(f"at >= {q['target']:.0%} of strong accuracy: {q['strong_share']:.1%} strong calls, "
        f"accuracy {q['accuracy']:.3f}, "
        f"{'n/a' if saving is None else f'{saving:.1%}'} cheaper than always-strong\n")
