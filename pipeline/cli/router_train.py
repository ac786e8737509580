"""`tokenmeter router train`: fit the logistic router with scikit-learn, threshold out of fold.

Only training needs scikit-learn (``pip install tokenmeter[router]``); the artifact it writes is
scored by the pure core (``pipeline.core.routing``) in any process.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.cli.router_data import DEFAULT_QUALITY, Row, file_digest, read_rows
from pipeline.core import routing as r
from pipeline.errors import ConfigError


def _matrix(spec: r.FeatureSpec, texts: Sequence[str]) -> Any:
    from scipy import sparse  # type: ignore[import-untyped]

    data: list[float] = []
    indices: list[int] = []
    indptr = [0]
    for text in texts:
        feats = r.featurize(spec, text)
        indices.extend(feats)
        data.extend(feats.values())
        indptr.append(len(indices))
    return sparse.csr_matrix((data, indices, indptr), shape=(len(texts), spec.n_features))


def _sklearn() -> Any:
    try:
        from sklearn import linear_model  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError("router train needs scikit-learn: pip install 'tokenmeter[router]'"
                          ) from None
    return linear_model


LABELS: dict[str, Callable[[Row], bool]] = {
    # the weak model is enough when the strong one would not have done better
    "no_gain": lambda row: row.weak_ok or not row.strong_ok,
    "weak_ok": lambda row: row.weak_ok,
}


def subject_weights(rows: Sequence[Row]) -> list[float]:
    """Sample weights giving every subject the same total weight (mean weight 1)."""
    sizes: dict[str, int] = {}
    for row in rows:
        sizes[row.source] = sizes.get(row.source, 0) + 1
    per = len(rows) / len(sizes)
    return [per / sizes[row.source] for row in rows]


def _fit_model(x: Any, rows: Sequence[Row], c: float, label: str, balance: bool) -> Any:
    lm = _sklearn()
    y = [int(LABELS[label](row)) for row in rows]
    if len(set(y)) < 2:
        raise ConfigError("the weak model is right on every training row or on none: "
                          "nothing to learn; add rows where it differs")
    model = lm.LogisticRegression(C=c, max_iter=3000)
    # balanced: a subject is one draw from the traffic we will see; without it the 1,534
    # professional_law rows (20%) teach "long prompt = hard" to every other subject
    model.fit(x, y, sample_weight=subject_weights(rows) if balance else None)
    return model


def fit(spec: r.FeatureSpec, rows: Sequence[Row], c: float, label: str = "weak_ok",
        balance: bool = True, x: Any = None) -> tuple[dict[int, float], float]:
    """(weights, bias) of a logistic model of P(weak is enough) on these rows."""
    if x is None:
        x = _matrix(spec, [row.prompt for row in rows])
    model = _fit_model(x, rows, c, label, balance)
    coef = model.coef_[0]
    weights = {int(i): float(coef[i]) for i in coef.nonzero()[0]}
    return weights, float(model.intercept_[0])


def out_of_fold_scores(spec: r.FeatureSpec, rows: Sequence[Row], c: float,
                       label: str = "weak_ok", balance: bool = True,
                       folds: int = 5, x: Any = None) -> list[float]:
    """Scores each row gets from a model that never saw its subject (grouped k-fold)."""
    groups = sorted({row.source for row in rows})
    if len(groups) >= 2:
        k = min(folds, len(groups))
        # round-robin by size keeps the folds comparable (professional_law alone is 20%)
        sizes = {g: sum(1 for row in rows if row.source == g) for g in groups}
        fold_of = {g: i % k for i, g in enumerate(sorted(groups, key=lambda g: -sizes[g]))}
        assign = [fold_of[row.source] for row in rows]
    else:
        k, assign = _stratified_folds([LABELS[label](row) for row in rows], folds)
    if x is None:
        x = _matrix(spec, [row.prompt for row in rows])
    scores = [0.0] * len(rows)
    for f in range(k):
        train_idx = [i for i, a in enumerate(assign) if a != f]
        test_idx = [i for i, a in enumerate(assign) if a == f]
        model = _fit_model(x[train_idx], [rows[i] for i in train_idx], c, label, balance)
        # the same logistic of the same features routing computes, done by numpy for speed
        for i, p in zip(test_idx, model.predict_proba(x[test_idx])[:, 1], strict=True):
            scores[i] = float(p)
    return scores


def _stratified_folds(labels: Sequence[bool], folds: int) -> tuple[int, list[int]]:
    """(k, fold of each row): each label dealt round-robin, so every training part has both."""
    # one file of a team's own traffic has no subjects to group by; dealt in row order, two
    # failures among twenty rows shared a fold one time in five, and that fold's training
    # part had none to learn from (the row order comes from the export, not from the team)
    minority = min(sum(labels), len(labels) - sum(labels))
    if minority < 2:
        raise ConfigError("the weak model is wrong on fewer than 2 rows (or right on fewer "
                          "than 2): too few to score the rows out of fold and pick a "
                          "threshold; add rows where it differs")
    k = min(folds, minority)
    assign = [0] * len(labels)
    dealt = 0
    for wanted in (False, True):
        for i, value in enumerate(labels):
            if bool(value) is wanted:
                assign[i] = dealt % k
                dealt += 1
    return k, assign


def _summary(m: dict[str, r.RouterMetrics]) -> dict[str, Any]:
    return {name: {"apgr": round(v.apgr, 4), "cpt50": round(v.cpt50, 4),
                   "cpt80": round(v.cpt80, 4)} for name, v in m.items()}


def train(args: argparse.Namespace, settings: object = None) -> int:
    """`router train`: fit, choose the threshold out of fold, write the artifact."""
    started = time.perf_counter()
    paths = [Path(p) for p in args.files]
    rows = read_rows(paths, args.weak_column, args.strong_column)
    holdout = {h.strip() for h in (args.holdout or "").split(",") if h.strip()}
    unknown = holdout - {row.source for row in rows}
    if unknown:
        raise ConfigError(f"--holdout names subjects that are in no file: {sorted(unknown)}")
    train_rows = [row for row in rows if row.source not in holdout]
    held = [row for row in rows if row.source in holdout]
    if not train_rows:
        raise ConfigError("--holdout leaves no rows to train on")
    spec = r.FeatureSpec(hash_bits=args.hash_bits,
                         word_ngrams=(args.word_ngrams[0], args.word_ngrams[1]),
                         char_ngrams=(args.char_ngrams[0], args.char_ngrams[1]),
                         max_tokens=args.max_tokens)
    balance = args.balance == "subjects"
    x = _matrix(spec, [row.prompt for row in train_rows])
    oof = out_of_fold_scores(spec, train_rows, args.c, args.label, balance, x=x)
    weak = [row.weak_ok for row in train_rows]
    strong = [row.strong_ok for row in train_rows]
    method: dict[str, Any]
    if args.target_strong_share is not None:
        threshold = r.threshold_for_strong_share(oof, args.target_strong_share)
        method = {"method": "target_strong_share", "target": args.target_strong_share}
    else:
        quality = args.target_quality if args.target_quality is not None else DEFAULT_QUALITY
        threshold, _ = r.threshold_for_quality(oof, weak, strong, quality)
        method = {"method": "target_quality", "target": quality,
                  "meaning": "accuracy >= target x the strong model's accuracy"}
    method.update({"scores": "out-of-fold (grouped by subject)",
                   "oof_strong_share": round(r.strong_share(oof, threshold), 4),
                   "oof_accuracy": round(r.routed_accuracy(oof, weak, strong, threshold), 4)})
    weights, bias = fit(spec, train_rows, args.c, args.label, balance, x=x)
    n = len(train_rows)
    training: dict[str, Any] = {
        "files": [{"name": p.name, "sha256_16": file_digest(p)} for p in paths],
        "rows": n,
        "subjects": sorted({row.source for row in train_rows}),
        "held_out_subjects": sorted(holdout),
        "weak_column": args.weak_column, "strong_column": args.strong_column,
        "weak_accuracy": round(sum(weak) / n, 4), "strong_accuracy": round(sum(strong) / n, 4),
        "label": {"no_gain": "weak model correct, or strong model wrong too",
                  "weak_ok": "weak model correct"}[args.label],
        "estimator": f"sklearn LogisticRegression(C={args.c}, lbfgs, L2)",
        "sample_weights": args.balance,
        "out_of_fold": _summary(r.compare(oof, weak, strong)),
    }
    if args.note:
        training["note"] = args.note
    art = r.build_artifact(spec, weights, bias, threshold, method, training)
    if held:
        hs = [r.p_weak_ok(art, row.prompt) for row in held]
        hw = [row.weak_ok for row in held]
        hst = [row.strong_ok for row in held]
        training["held_out"] = {"rows": len(held), **_summary(r.compare(hs, hw, hst)),
                                "strong_share_at_threshold": round(r.strong_share(hs, threshold),
                                                                   4)}
        art = r.build_artifact(spec, weights, bias, threshold, method, training)
    out = Path(args.out)
    out.write_text(json.dumps(r.artifact_to_dict(art), separators=(",", ":")) + "\n",
                   encoding="utf-8")
    seconds = time.perf_counter() - started
    report = {"out": str(out), "router_version": art.router_version, "rows": n,
              "held_out_subjects": sorted(holdout), "threshold": art.threshold,
              "threshold_method": method, "out_of_fold": training["out_of_fold"],
              "held_out": training.get("held_out"), "weights": len(art.weights),
              "bytes": out.stat().st_size, "seconds": round(seconds, 2)}
    print(json.dumps(report, indent=2))
    return 0
