"""Subcommand handlers: thin adapters from argv to the core and the runtime."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pipeline.errors import ConfigError, ValidationFailed
from pipeline.settings import TOPIC_EVENTS, Settings, load_settings


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from env with this command's flags on top."""
    return load_settings(
        kafka_bootstrap=args.kafka,
        clickhouse_dsn=args.clickhouse,
        data_dir=args.data_dir,
        web_host=args.web_host,
        web_port=args.web_port,
        partitions=args.partitions,
        log_level=args.log_level,
    )


def _lines(path: str) -> Iterator[tuple[int, str]]:
    if path == "-":
        stream = sys.stdin
    else:
        try:
            stream = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    with stream:
        for n, line in enumerate(stream, 1):
            if line.strip():
                yield n, line.rstrip("\n")


def _now(settings: Settings | None = None) -> datetime:
    from pipeline.clock import clock_for

    return clock_for(settings.clock_start if settings is not None else None)()


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Whole stack in the foreground."""
    from pipeline.runtime.worker import run_worker

    if args.workers > 1:
        from pipeline.runtime.cluster import run_cluster

        return run_cluster(settings, args.workers, embedded_broker=args.kafka is None,
                           demo=args.demo, demo_rate=args.demo_rate)
    banner = (f"tokenmeter up: Kafka {settings.kafka_bootstrap} "
              f"({'external' if args.kafka else 'embedded'}), ClickHouse {settings.dsn}, "
              f"API {settings.web_url}; Ctrl-C stops")
    return run_worker(settings, embedded_broker=args.kafka is None, demo=args.demo,
                      demo_rate=args.demo_rate, banner=banner)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """One worker against configured Kafka and ClickHouse."""
    from pipeline.runtime.worker import run_worker

    return run_worker(settings, banner=f"tokenmeter worker: API {settings.web_url}")


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    """Only the embedded broker, until interrupted."""
    from pipeline.embedded.broker import EmbeddedBroker, interrupt_on_sigterm

    host, port = settings.broker_address()
    broker = EmbeddedBroker(host, port)
    interrupt_on_sigterm()
    broker.start()
    print(f"tokenmeter broker: listening on {broker.bootstrap} (memory storage); "
          "Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        return broker.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def cmd_clickhouse(args: argparse.Namespace, settings: Settings) -> int:
    """Only the embedded ClickHouse (chDB), served over ClickHouse's HTTP interface."""
    from pipeline.embedded.broker import interrupt_on_sigterm
    from pipeline.runtime.cluster import EmbeddedClickHouse

    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"--listen {args.listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8123")
    # TOKENMETER_CLICKHOUSE_PASSWORD, if set, is the credential; otherwise a random one
    server = EmbeddedClickHouse(settings, host or "127.0.0.1", int(port),
                                secret=settings.clickhouse_password)
    interrupt_on_sigterm()
    server.start()
    print(f"tokenmeter clickhouse: {settings.dsn} served at {server.dsn} (use it as "
          "TOKENMETER_CLICKHOUSE_DSN, with TOKENMETER_CLICKHOUSE_PASSWORD set to the "
          f"credential in {server.secret_file}); Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Apply sql/ migrations."""
    from pipeline.store.client import open_store
    from pipeline.store.migrations import migrate

    store = open_store(settings)
    try:
        applied = migrate(store)
    finally:
        store.close()
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def run_query(settings: Settings, sql: str) -> tuple[list[str], list[list[Any]]]:
    """Run a read-only query: via a running worker's API if it holds the store, else directly."""
    from pipeline.runtime.worker import worker_holding_store

    info = worker_holding_store(settings)
    if info is not None:
        from pipeline.cli.http import post_json

        body = post_json(f"{info['url']}/api/query", {"sql": sql}, settings)
        return body["columns"], body["rows"]
    from pipeline.store.client import open_store
    from pipeline.store.queries import run_read_only

    store = open_store(settings)
    try:
        result = run_read_only(store, sql)
    finally:
        store.close()
    return result.columns, result.rows


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    """One read-only SQL query."""
    from pipeline.cli.output import print_rows

    columns, rows = run_query(settings, args.sql)
    print_rows(columns, rows, args.format)
    return 0


def _meter(settings: Settings | None = None) -> Any:
    from pipeline.core.catalog import load_catalog_with_overlays
    from pipeline.core.meter import Meter
    from pipeline.core.scoring import load_policy

    prices = settings.prices_dir if settings is not None else None
    return Meter(load_catalog_with_overlays(prices), load_policy())


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    """One JSON verdict per line: {line, ok, reason_code, detail}."""
    from pipeline.core.validate import decode_message

    meter = _meter(settings)
    now = _now(settings)
    bad = 0
    for n, line in _lines(args.file):
        verdict: dict[str, Any] = {"line": n, "ok": True, "reason_code": None, "detail": None}
        items = decode_message(line.encode())
        try:
            if not isinstance(items, list):
                raise ValidationFailed(items.reason_code, items.detail)
            for item in items:
                meter.meter_object(item, now=now)
        except ValidationFailed as exc:
            verdict.update(ok=False, reason_code=exc.reason_code, detail=exc.detail)
            bad += 1
        print(json.dumps(verdict), flush=False)
    sys.stdout.flush()
    return 1 if bad else 0


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    """Validate then publish JSONL events; rejects are reported with line numbers."""
    from pipeline.cli.publish import publish_events

    meter = _meter(settings)
    now = _now(settings)
    good: list[dict[str, Any]] = []
    rejected = 0
    for n, line in _lines(args.file):
        try:
            obj = json.loads(line)
            meter.meter_object(obj, now=now)
        except (ValueError, ValidationFailed) as exc:
            code, detail = (exc.reason_code, exc.detail) if isinstance(exc, ValidationFailed) \
                else ("invalid_json", str(exc))
            print(f"line {n}: rejected: {code}: {detail}", file=sys.stderr)
            rejected += 1
            continue
        good.append(obj)
    sent = asyncio.run(publish_events(settings, good, batch=args.batch)) if good else 0
    print(f"published {sent} events to {settings.topic(TOPIC_EVENTS)}, rejected {rejected}",
          file=sys.stderr)
    return 1 if rejected else 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    """Synthetic traffic at a steady rate with a progress display."""
    from pipeline.cli.publish import simulate

    if args.tenants < 1 or args.rate <= 0 or args.duration <= 0:
        raise ConfigError("--tenants, --rate and --duration must be positive")
    started = time.monotonic()
    sent = asyncio.run(simulate(settings, tenants=args.tenants, rate=args.rate,
                                duration=args.duration, seed=args.seed, batch=args.batch))
    took = time.monotonic() - started
    print(f"sent {sent} events in {took:.1f} s ({sent / took:.0f}/s) to "
          f"{settings.topic(TOPIC_EVENTS)}", file=sys.stderr)
    return 0


def cmd_price(args: argparse.Namespace, settings: Settings) -> int:
    """Price one call or a JSONL file of events."""
    from pipeline.cli.pricing import price_events, price_one

    if args.events:
            return price_events(_meter(settings), _lines(args.events), _now(settings))
    if not args.model:
        raise ConfigError("give --model (and token counts), or --events FILE")
    return price_one(args, _now(settings), settings.prices_dir)


def cmd_tokens(args: argparse.Namespace, settings: Settings) -> int:
    """Count tokens of text offline."""
    from pipeline.core.tokens import TokenCounter

    text = sys.stdin.read() if args.text == "-" else args.text
    count, source = TokenCounter().count(args.model, text)
    encoding = source.split(":", 1)[1]
    print(json.dumps({"model": args.model, "tokens": count, "encoding": encoding,
                      "token_source": source}))
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Benchmarks; figures are ratios against baselines run in the same run."""
    from pipeline.benchmark.suite import run_all

    result = run_all(progress=lambda s: print(f"bench: {s}", file=sys.stderr), quick=args.quick)
    if args.json:
        print(json.dumps(result))
        return 0
    from pipeline.cli.output import print_rows

    print_rows(["figure", "value"], [[k, v] for k, v in result.items()], "table")
    return 0
