"""The `tokenmeter` command line (an adapter: parse, call the core, print)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pipeline.errors import TokenmeterError


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("connection (override TOKENMETER_* env)")
    g.add_argument("--kafka", metavar="HOST:PORT", help="Kafka bootstrap servers")
    g.add_argument("--clickhouse", metavar="DSN", help="chdb:///dir or http(s)://host:port")
    g.add_argument("--data-dir", metavar="DIR", help="embedded data dir (default ./.tokenmeter)")
    g.add_argument("--web-host", metavar="HOST")
    g.add_argument("--web-port", metavar="PORT", type=int)
    g.add_argument("--partitions", type=int)
    g.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from pipeline.cli import budgets, forecast, ops, pricing
    from pipeline.cli import commands as c

    p = argparse.ArgumentParser(
        prog="tokenmeter", description="Metering pipeline for LLM token spend."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, func: object, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        _common(sp)
        sp.set_defaults(func=func)
        return sp

    sp = cmd("up", c.cmd_up, "run the whole stack in the foreground (embedded parts by default)")
    sp.add_argument("--demo", action="store_true", help="add simulated traffic")
    sp.add_argument("--demo-rate", type=float, default=50.0, help="demo events per second")
    sp.add_argument("--workers", type=int, default=1,
                    help="worker processes in one consumer group (embedded ClickHouse is then "
                         "served over HTTP to all of them); web ports count up from --web-port")
    cmd("worker", c.cmd_worker, "run one worker against the configured Kafka and ClickHouse")
    cmd("broker", c.cmd_broker, "run only the embedded Kafka-protocol broker, in the foreground")
    sp = cmd("clickhouse", c.cmd_clickhouse,
             "serve the embedded ClickHouse (chDB data dir) over ClickHouse's HTTP interface")
    sp.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8123")
    cmd("migrate", c.cmd_migrate, "apply sql/ migrations to ClickHouse")

    sp = cmd("query", c.cmd_query, "run one read-only SQL query")
    sp.add_argument("sql")
    sp.add_argument("--format", choices=["table", "json", "csv"], default="table")

    sp = cmd("produce", c.cmd_produce, "publish JSONL usage events (validated first)")
    sp.add_argument("file", help="JSONL file or - for stdin")
    sp.add_argument("--batch", type=int, default=100, help="events per batch envelope (1: none)")

    from pipeline.cli.ingest import DEFAULT_LISTEN, cmd_ingest

    sp = cmd("ingest", cmd_ingest, "HTTP ingest without a worker: POST /api/events -> Kafka")
    sp.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN,
                    help="where to serve (beyond loopback only with TOKENMETER_API_TOKEN)")
    sp.add_argument("--ack-timeout", type=float, default=10.0, metavar="S",
                    help="answer 503 when Kafka has not acked within S seconds")

    sp = cmd("simulate", c.cmd_simulate, "publish realistic synthetic traffic")
    sp.add_argument("--tenants", type=int, default=20)
    sp.add_argument("--rate", type=float, default=100.0, help="events per second")
    sp.add_argument("--duration", type=float, default=10.0, help="seconds")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--batch", type=int, default=1, help="events per batch envelope")

    sp = cmd("validate", c.cmd_validate, "offline: one JSON verdict per input line")
    sp.add_argument("file", help="JSONL file or - for stdin")

    sp = cmd("price", c.cmd_price, "price one call, or a JSONL file of events, offline")
    sp.add_argument("--model")
    sp.add_argument("--input-tokens", type=int, default=0)
    sp.add_argument("--output-tokens", type=int, default=0)
    sp.add_argument("--cache-read-tokens", type=int, default=0)
    sp.add_argument("--cache-creation-tokens", type=int, default=0,
                    help="all cache writes (5-minute and 1-hour)")
    sp.add_argument("--cache-write-1h-tokens", type=int, default=0,
                    help="the part of --cache-creation-tokens written with a 1-hour TTL")
    sp.add_argument("--reasoning-tokens", type=int, default=0)
    sp.add_argument("--provider", help="who bills the call (default: the model's publisher; "
                    "or prefix the model: azure/gpt-4o)")
    sp.add_argument("--service-tier", default="standard",
                    choices=["standard", "batch", "flex", "priority"])
    sp.add_argument("--at", metavar="TS", help="RFC 3339 time to price at (default now)")
    sp.add_argument("--events", metavar="FILE", help="JSONL of UsageEvents (- for stdin)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("tokens", c.cmd_tokens, "count tokens offline; names the encoding used")
    sp.add_argument("--model", required=True)
    sp.add_argument("text", nargs="?", default="-", help="text, or - for stdin")

    sp = cmd("budget", budgets.cmd_budget,
             "set, list or delete budgets; reset clears the actions a budget put in force")
    sp.add_argument("action", choices=["set", "list", "delete", "reset"])
    sp.add_argument("id", nargs="?", help="budget id (set, delete, reset)")
    sp.add_argument("--tenant")
    sp.add_argument("--limit")
    sp.add_argument("--period", default="month",
                    choices=["hour", "day", "week", "month", "quarter", "run"],
                    help="run: one agent run (needs --each trace_id, session_id or run_id)")
    sp.add_argument("--each", metavar="KEY",
                    help="a template: every value of KEY gets the limit (user_id, project_id, "
                         "feature, trace_id, session_id, run_id or attributes.NAME)")
    sp.add_argument("--idle-timeout", metavar="DURATION",
                    help="template keys idle this long expire; a run closes (e.g. 30m)")
    sp.add_argument("--anomaly", action="store_true", help="spend-velocity alerts")
    sp.add_argument("--max-rate", metavar="N/UNIT",
                    help="alert above this rate: N/s, N/min or N/h (turns on --anomaly)")
    sp.add_argument("--action", dest="action_spec", action="append", metavar="KIND=ACTION",
                    help="anomaly=block, forecast=throttle:low, ... (repeatable)")
    sp.add_argument("--webhook", action="append", metavar="URL[,slack]",
                    help="POST breaches here (repeatable; ,slack for a Slack payload)")
    sp.add_argument("--metric", default="cost", choices=["cost", "tokens", "value_units"])
    sp.add_argument("--thresholds", help="percent list, default 50,80,100")
    sp.add_argument("--mode", default="soft", choices=["soft", "hard"])
    sp.add_argument("--timezone", default="UTC")
    sp.add_argument("--scope", nargs="*", metavar="KEY=VALUE",
                    help="project_id, user_id, feature, model, task_type")
    sp.add_argument("--pool", nargs="*", metavar="TIER=SHARE", help="e.g. critical=0.5 low=0.15")
    sp.add_argument("--forecast-probability", type=float)
    sp.add_argument("--no-forecast", action="store_true")
    sp.add_argument("--json", action="store_true")

    sp = cmd("breaches", budgets.cmd_breaches, "show budget breaches as they arrive")
    sp.add_argument("--follow", action="store_true")
    sp.add_argument("--json", action="store_true")

    sp = cmd("forecast", forecast.cmd_forecast, "forecast every budget's period-end spend once")
    sp.add_argument("--budget", metavar="ID")
    sp.add_argument("--json", action="store_true", help="one JSON object per budget")

    sp = cmd("dlq", ops.cmd_dlq, "dead letters: counts by reason, replay those that now validate")
    sp.add_argument("action", choices=["list", "replay"])
    sp.add_argument("--reason", help="replay only this reason_code")
    sp.add_argument("--json", action="store_true")

    sp = cmd("export", ops.cmd_export, "export the ledger (FinOps FOCUS 1.2)")
    sp.add_argument("format", choices=["focus"])
    sp.add_argument("--from", dest="date_from", required=True, metavar="DATE")
    sp.add_argument("--to", dest="date_to", required=True, metavar="DATE")
    sp.add_argument("file", help="output .csv or .parquet")

    sp = cmd("reprice", ops.cmd_reprice, "recompute stored costs after a catalog correction")
    sp.add_argument("--from", dest="date_from", required=True, metavar="DATE")
    sp.add_argument("--to", dest="date_to", required=True, metavar="DATE")
    sp.add_argument("--dry-run", action="store_true")
    sp.add_argument("--json", action="store_true")

    sp = cmd("report", ops.cmd_report, "a tenant's spend summary (terminal or --html FILE)")
    sp.add_argument("--tenant", required=True)
    sp.add_argument("--period", default="month", choices=["day", "week", "month"])
    sp.add_argument("--html", metavar="FILE")

    sp = cmd("bench", c.cmd_bench, "run the benchmark suite on the embedded stack")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--quick", action="store_true", help="smaller workloads")

    sp = cmd("prices", pricing.prices_command, "the price catalog")
    sp.add_argument("action", choices=["list", "show", "import"])
    sp.add_argument("arg", nargs="?", help="MODEL for show, FILE for import")
    sp.add_argument("--effective-from", metavar="DATE", help="for import")
    sp.add_argument("--json", action="store_true")

    from pipeline.cli import router as router_cli

    router_cli.register(sub, _common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tokenmeter` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level or "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        from pipeline.cli.commands import settings_from

        # settings built once, here; every command gets them (parse -> command)
        code = int(args.func(args, settings_from(args)) or 0)
    except TokenmeterError as exc:
        print(f"tokenmeter: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
