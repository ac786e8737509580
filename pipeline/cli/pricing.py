"""`tokenmeter price` and `tokenmeter prices` (catalog) commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.cli.args import parse_time
from pipeline.clock import clock_for
from pipeline.core.catalog import Catalog, ModelPrice, load_catalog_with_overlays
from pipeline.core.events import COST_ADAPTER, priced_json
from pipeline.core.litellm_prices import ImportReport, import_litellm
from pipeline.core.meter import Meter
from pipeline.core.pricing import TokenCounts, cost_lines
from pipeline.errors import ConfigError, ValidationFailed
from pipeline.settings import Settings


def price_one(args: argparse.Namespace, now: datetime, prices_dir: Path | None = None) -> int:
    """Print the cost of one call."""
    catalog = load_catalog_with_overlays(prices_dir)
    at = parse_time(args.at, "--at") or now
    counts = TokenCounts(
        input_tokens=args.input_tokens, output_tokens=args.output_tokens,
        cache_read_input_tokens=args.cache_read_tokens,
        cache_creation_input_tokens=args.cache_creation_tokens,
        reasoning_output_tokens=args.reasoning_tokens,
        cache_creation_1h_input_tokens=args.cache_write_1h_tokens,
    )
    for name in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                 "cache_creation_input_tokens", "reasoning_output_tokens",
                 "cache_creation_1h_input_tokens"):
        if getattr(counts, name) < 0:
            raise ConfigError(f"{name} must not be negative")
    if counts.cache_read_input_tokens + counts.cache_creation_input_tokens > counts.input_tokens:
        raise ConfigError("cache read + cache creation tokens exceed --input-tokens "
                          "(input includes cached tokens)")
    if counts.reasoning_output_tokens > counts.output_tokens:
        raise ConfigError("--reasoning-tokens exceed --output-tokens (output includes reasoning)")
    if counts.cache_creation_1h_input_tokens > counts.cache_creation_input_tokens:
        raise ConfigError("--cache-write-1h-tokens exceed --cache-creation-tokens (all writes)")
    try:
        model, version = catalog.price_version(args.model, at, args.provider)
        lines = cost_lines(counts, model, version, currency=catalog.currency,
                           service_tier=args.service_tier)
    except ValidationFailed as exc:
        raise ConfigError(exc.detail) from None
    out = {"model": args.model, "priced_model": model.model, "provider": model.provider,
           "at": at.isoformat(), **COST_ADAPTER.dump_python(lines, mode="json")}
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>16}  {value}")
    return 0


def price_events(meter: Meter, lines: Iterable[tuple[int, str]], now: datetime) -> int:
    """One PricedUsage JSON per valid line; rejects go to stderr with their line."""
    bad = 0
    for n, line in lines:
        try:
            priced = meter.meter_object(json.loads(line), now=now)
        except (ValueError, ValidationFailed) as exc:
            code = exc.reason_code if isinstance(exc, ValidationFailed) else "invalid_json"
            print(f"line {n}: {code}: {exc}", file=sys.stderr)
            bad += 1
            continue
        sys.stdout.write(priced_json(priced).decode() + "\n")
    return 1 if bad else 0


def _row(m: ModelPrice, at: datetime) -> dict[str, Any]:
    v = m.at(at) or max(m.versions, key=lambda x: x.effective_from)
    return {
        "provider": m.provider, "model": m.model, "publisher": m.publisher,
        "version": v.version, "effective_from": v.effective_from.isoformat(),
        "effective_to": v.effective_to.isoformat() if v.effective_to else None,
        "input_per_mtok": str(v.input), "output_per_mtok": str(v.output),
        "cache_read_per_mtok": None if v.cache_read is None else str(v.cache_read),
        "cache_write_5m_per_mtok": None if v.cache_write_5m is None else str(v.cache_write_5m),
        "cache_write_1h_per_mtok": None if v.cache_write_1h is None else str(v.cache_write_1h),
        "long_context_threshold": v.long_context.threshold if v.long_context else None,
        "tiers": sorted(v.tiers), "aliases": m.aliases, "sources": m.sources,
    }


def prices_command(args: argparse.Namespace, settings: Settings) -> int:
    """list | show MODEL | import FILE --effective-from D."""
    overlay_dir = settings.prices_dir
    catalog = load_catalog_with_overlays(overlay_dir)
    now = clock_for(settings.clock_start)()
    if args.action == "list":
        rows = [_row(m, now) for m in sorted(catalog.models, key=lambda m: (m.provider, m.model))]
        if args.json:
            print(json.dumps(rows))
        else:
            from pipeline.cli.output import print_rows

            cols = ["provider", "model", "version", "input_per_mtok", "output_per_mtok",
                    "cache_read_per_mtok"]
            print_rows(cols, [[r[c] for c in cols] for r in rows], "table")
        return 0
    if args.action == "show":
        if not args.arg:
            raise ConfigError("usage: tokenmeter prices show MODEL")
        model = catalog.resolve(args.arg)
        if model is None:
            raise ConfigError(f"model {args.arg!r} is not in the price catalog")
        print(json.dumps(model.model_dump(mode="json"), indent=2))
        return 0
    return _import(args, catalog, overlay_dir, now)


def _import(args: argparse.Namespace, catalog: Catalog, overlay_dir: Path,
            now: datetime) -> int:
    if not args.arg or not args.effective_from:
        raise ConfigError("usage: tokenmeter prices import FILE --effective-from DATE")
    effective = parse_time(args.effective_from, "--at") or now
    try:
        data = json.loads(Path(args.arg).read_text("utf-8"), parse_float=Decimal)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read price map {args.arg}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("a LiteLLM price map is a JSON object of model -> prices")
    version = f"import-{effective.date().isoformat()}"
    result = import_litellm(data, effective, version, source=str(Path(args.arg).name))
    imported = result.catalog
    overlay_dir.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%S%f")
    target = overlay_dir / f"{stamp}-{version}.json"
    target.write_text(imported.model_dump_json(indent=1), "utf-8")
    known = sum(1 for m in imported.models if catalog.resolve(m.model, m.provider) is not None)
    if args.json:
        print(json.dumps({"version": version, "target": str(target), "updated": known,
                          "new": len(imported.models) - known, **result.report.as_json()}))
        return 0
    print(f"imported {len(imported.models)} models as version {version} "
          f"({known} update existing models, {len(imported.models) - known} new) -> {target}")
    _print_report(result.report)
    return 0


def _print_report(report: ImportReport) -> None:
    """What the import left out, counted by reason (``--json`` prints every key)."""
    counts = report.counts()
    if counts:
        print("not imported (keys) or not representable (fields), by reason:")
        for reason, n in counts.items():
            print(f"  {n:>6}  {reason}")
    if report.conflicts:
        differ = sum(1 for c in report.conflicts if not c["same_prices"])
        print(f"  {len(report.conflicts):>6}  same-date conflicts resolved ({differ} with "
              "different prices; the exact key wins, then the first key in name order)")
    unknown = sum(len(keys) for keys in report.unknown_providers.values())
    if unknown:
        print(f"  {unknown:>6}  models of {len(report.unknown_providers)} providers tokenmeter "
              "does not know (kept under LiteLLM's provider name)")
    if report.shadowed:
        print(f"  {len(report.shadowed):>6}  model ids that start with another provider's name "
              "(send them with their provider prefix)")
    print("details: tokenmeter prices import FILE --effective-from DATE --json")
