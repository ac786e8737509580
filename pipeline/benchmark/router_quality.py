"""Router quality on subjects it never saw: leave one subject out, pooled and within subjects.

Every subject's prompts are scored by a router trained (with ``router train``'s own fit and
feature settings) on the other subjects only; then the pooled figures (APGR, CPT(50%),
CPT(80%) over all rows, which credit putting a hard subject's prompts before an easy one's) and
the mean APGR within each subject (random: 0.5; only the ranking of prompts inside a subject
counts) are printed, next to random and the oracle. Needs scikit-learn, like ``router train``.

    python -m pipeline.benchmark.router_quality [FILES...]   # default: ../shared/routing/mmlu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pipeline.cli.router_data import read_rows
from pipeline.cli.router_train import out_of_fold_scores
from pipeline.core import routing as r

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "routing" / "mmlu"


def leave_one_subject_out(spec: r.FeatureSpec, rows: list[Any], c: float, label: str,
                          balance: bool) -> list[float]:
    """Each row's score from a model trained on every other subject (one fit per subject)."""
    # router train's own grouped out-of-fold scoring with a fold per subject
    return out_of_fold_scores(spec, rows, c, label, balance,
                              folds=len({row.source for row in rows}))


def main(argv: list[str] | None = None) -> int:
    """Print the leave-one-subject-out figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="labelled CSV files (default: the MMLU files)")
    ap.add_argument("--c", type=float, default=1.0)
    ap.add_argument("--label", choices=["weak_ok", "no_gain"], default="weak_ok")
    ap.add_argument("--balance", choices=["subjects", "none"], default="subjects")
    args = ap.parse_args(argv)
    paths = [Path(f) for f in args.files] or sorted(DEFAULT_DATA.glob("*.csv"))
    rows = read_rows(paths)
    started = time.perf_counter()
    scores = leave_one_subject_out(r.FeatureSpec(), rows, args.c, args.label,
                                   args.balance == "subjects")
    weak = [row.weak_ok for row in rows]
    strong = [row.strong_ok for row in rows]
    pooled = r.compare(scores, weak, strong)
    groups = r.by_group(scores, weak, strong, [row.source for row in rows])
    oracle_groups = r.by_group(r.oracle_scores(weak, strong), weak, strong,
                               [row.source for row in rows])
    report = {
        "rows": len(rows), "subjects": len(groups), "features": r.FeatureSpec().to_dict(),
        "label": args.label, "c": args.c, "balance": args.balance,
        "pooled": {name: {"apgr": round(m.apgr, 4), "cpt50": round(m.cpt50, 4),
                          "cpt80": round(m.cpt80, 4)} for name, m in pooled.items()},
        "within_subject_mean_apgr": {
            "router": round(r.mean_group_apgr(groups) or 0.0, 4), "random": 0.5,
            "oracle": round(r.mean_group_apgr(oracle_groups) or 0.0, 4),
            "subjects_with_a_gap": sum(1 for g in groups if g.apgr is not None)},
        "per_subject_apgr": {g.group: None if g.apgr is None else round(g.apgr, 4)
                             for g in groups},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
