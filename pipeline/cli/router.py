"""`tokenmeter router train|eval|route|compare|outcomes`: the learned model router's commands.

The arithmetic lives in :mod:`pipeline.core.routing`. Files and artifacts are read in
``router_data``, training (scikit-learn) is ``router_train``, evaluation and dollar costs
``router_eval``; this module routes files and builds the parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from pipeline.cli.router_data import (
    ASSUMED_OUTPUT_TOKENS,
    DEFAULT_QUALITY,
    STRONG_COLUMN,
    STRONG_MODEL,
    STRONG_PROVIDER,
    WEAK_COLUMN,
    WEAK_MODEL,
    WEAK_PROVIDER,
    load_router,
    read_prompts,
)
from pipeline.cli.router_eval import evaluate
from pipeline.cli.router_train import LABELS, train
from pipeline.core import routing as r
from pipeline.errors import ConfigError


def route_file(args: argparse.Namespace, settings: object = None) -> int:
    """`router route`: one JSON object per input row (score and choice at the threshold)."""
    art = load_router(args.router)
    try:
        for index, text in enumerate(read_prompts(args.file)):
            d = r.route(art, text, threshold_shift=args.threshold_shift)
            sys.stdout.write(json.dumps({"index": index, "p_weak_ok": round(d.p_weak_ok, 6),
                                         "choice": d.tier, "threshold": d.threshold,
                                         "router_version": d.router_version}) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from None
    return 0


# ---------------------------------------------------------------------------------------------
# parser


def _columns(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--weak-column", default=WEAK_COLUMN,
                    help="True/False column of the weak model (matched without case or "
                         f"publisher prefix; default {WEAK_COLUMN})")
    sp.add_argument("--strong-column", default=STRONG_COLUMN,
                    help=f"True/False column of the strong model (default {STRONG_COLUMN})")


def _pair(text: str) -> list[int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH (e.g. 1,2)") from None
    return [lo, hi]


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `router train|eval|route|compare|outcomes` to the tokenmeter parser."""
    p = sub.add_parser("router", help="learned model router: train, evaluate, route, compare",
                       description="learned model router: train, evaluate, route; compare "
                                   "routes by their outcomes")
    rsub = p.add_subparsers(dest="router_command", required=True, metavar="ACTION")

    sp = rsub.add_parser("train", help="fit a router on labelled CSV files")
    common(sp)
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.add_argument("--out", required=True, metavar="router.json")
    sp.add_argument("--holdout", metavar="SUBJECTS",
                    help="comma-separated subjects (file stems, mmlu_ dropped) to leave out "
                         "and evaluate on")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--target-strong-share", type=float, metavar="X",
                   help="threshold sending this share of prompts to the strong model")
    g.add_argument("--target-quality", type=float, metavar="Q",
                   help=f"threshold keeping Q x the strong model's accuracy (default "
                        f"{DEFAULT_QUALITY})")
    sp.add_argument("--c", type=float, default=1.0, help="inverse L2 strength (default 1)")
    sp.add_argument("--hash-bits", type=int, default=r.FeatureSpec().hash_bits)
    sp.add_argument("--word-ngrams", type=_pair, default=list(r.FeatureSpec().word_ngrams),
                    metavar="LO,HI")
    sp.add_argument("--char-ngrams", type=_pair, default=list(r.FeatureSpec().char_ngrams),
                    metavar="LO,HI", help="0,0 turns character n-grams off")
    # weak_ok by default: it scored a little higher in grouped cross-validation on the 22
    # non-held-out MMLU subjects (APGR 0.583 vs 0.562); on the 7 held-out ones both fell short
    sp.add_argument("--max-tokens", type=int, default=r.FeatureSpec().max_tokens,
                    help="n-grams from at most this many tokens, first and last halves (0: all)")
    sp.add_argument("--label", choices=sorted(LABELS), default="weak_ok",
                    help="what 'the weak model is enough' means in training: weak_ok (weak "
                         "right; default) or no_gain (weak right, or strong wrong too)")
    sp.add_argument("--balance", choices=["subjects", "none"], default="subjects",
                    help="weight every subject (file) equally (default) or every row")
    sp.add_argument("--note", help="free text stored in the artifact's training metadata")
    _columns(sp)
    sp.set_defaults(func=train)

    sp = rsub.add_parser("eval", help="curves, APGR, CPT and cost per 1,000 requests")
    common(sp)
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.add_argument("--router", required=True, metavar="router.json")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--quality", type=float, default=DEFAULT_QUALITY,
                    help="quality point priced (fraction of strong accuracy, default 0.95)")
    sp.add_argument("--weak-model", default=WEAK_MODEL,
                    help=f"model pricing the weak side (default {WEAK_MODEL}: Mixtral-8x7B is "
                         "not in the catalog)")
    sp.add_argument("--weak-provider", default=WEAK_PROVIDER)
    sp.add_argument("--strong-model", default=STRONG_MODEL)
    sp.add_argument("--strong-provider", default=STRONG_PROVIDER)
    sp.add_argument("--output-tokens", type=int, default=ASSUMED_OUTPUT_TOKENS,
                    help="output tokens assumed where a file has no response text "
                         f"(default {ASSUMED_OUTPUT_TOKENS})")
    sp.add_argument("--at", metavar="TS", help="RFC 3339 time to price at (default now)")
    _columns(sp)
    sp.set_defaults(func=evaluate)

    sp = rsub.add_parser("route", help="score and route each prompt of a file (JSONL out)")
    common(sp)
    sp.add_argument("file", metavar="FILE", help="CSV with a prompt column, or JSONL, or -")
    sp.add_argument("--router", required=True, metavar="router.json")
    sp.add_argument("--threshold-shift", type=float, default=0.0,
                    help="positive: move the threshold toward the weak model")
    sp.set_defaults(func=route_file)

    from pipeline.cli import outcomes

    outcomes.register(rsub, common)
