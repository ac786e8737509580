"""CLI commands backed by pipeline.runtime.ops: dlq, export focus, reprice, report."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, QueryRefused
from pipeline.settings import Settings


def run_op(settings: Settings, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Run an operation through the running worker (embedded store) or in this process."""
    from pipeline.runtime.worker import worker_holding_store

    info = worker_holding_store(settings)
    if info is not None:
        from pipeline.cli.http import post_json

        try:
            result: dict[str, Any] = post_json(f"{info['url']}/api/ops/{name}", body, settings)
        except QueryRefused as exc:  # the worker's 400: a usage error, said once
            raise ConfigError(str(exc)) from None
        return result
    from pipeline.runtime.ops import run_local

    return asyncio.run(run_local(settings, name, body))


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    """dlq list | replay [--reason R]."""
    if args.action == "list":
        result = run_op(settings, "dlq_list", {})
        if args.json:
            print(json.dumps(result))
            return 0
        from pipeline.cli.output import print_rows

        print_rows(["reason_code", "count", "example"],
                   [[r["reason_code"], r["count"], (r["examples"] or [""])[0][:100]]
                    for r in result["by_reason"]], "table")
        return 0
    result = run_op(settings, "dlq_replay", {"reason": args.reason})
    print(json.dumps(result) if args.json else
          f"replayed {result['replayed']} dead letters; still invalid: "
          f"{result['still_invalid'] or 'none'}")
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """export focus --from D --to D FILE."""
    from pipeline.runtime.worker import worker_holding_store

    path = Path(args.file).resolve()
    body = {"from": args.date_from, "to": args.date_to}
    info = worker_holding_store(settings)
    if info is None:
        from pipeline.runtime.ops import run_local

        result = asyncio.run(run_local(settings, "export_focus", {**body, "file": str(path)}))
    else:
        # the worker writes files only under its data dir: it sends the export back and
        # the CLI, running as the operator, writes it where the operator said
        from pipeline.cli.http import post_for_bytes

        kind = "parquet" if path.suffix.lower() == ".parquet" else "csv"
        try:
            data, headers = post_for_bytes(f"{info['url']}/api/ops/export_focus",
                                           {**body, "format": kind}, settings)
        except QueryRefused as exc:
            raise ConfigError(str(exc)) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        result = {"file": str(path), "rows": headers.get("x-tokenmeter-rows", "?"),
                  "billed_cost": headers.get("x-tokenmeter-billed-cost", "?")}
    print(f"wrote {result['rows']} FOCUS rows to {result['file']} "
          f"(BilledCost total {result['billed_cost']})", file=sys.stderr)
    return 0


def cmd_reprice(args: argparse.Namespace, settings: Settings) -> int:
    """reprice --from D --to D [--dry-run]."""
    result = run_op(settings, "reprice", {"from": args.date_from, "to": args.date_to,
                                          "dry_run": args.dry_run})
    if args.json:
        print(json.dumps(result))
        return 0
    from pipeline.cli.output import print_rows

    print_rows(["tenant_id", "old_cost", "new_cost", "difference"],
               [[t["tenant_id"], t["old_cost"], t["new_cost"], t["difference"]]
                for t in result["tenants"]], "table")
    verb = "would reprice" if result["dry_run"] else "repriced"
    print(f"{verb} {result['events_repriced']} events"
          + (f"; {result['unpriced']} have no price" if result["unpriced"] else ""),
          file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """report --tenant T [--period month] [--html FILE]."""
    from pipeline.cli.report import html_report, print_report

    data = run_op(settings, "report", {"tenant": args.tenant, "period": args.period})
    if args.html:
        Path(args.html).write_text(html_report(data), "utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    else:
        print_report(data)
    return 0
