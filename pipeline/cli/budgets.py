"""`tokenmeter budget ...` and `tokenmeter breaches`: the compacted topics are the truth."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from pipeline.core.budgets import Budget
from pipeline.core.numbers import PLACES
from pipeline.delivery.webhooks import public_budget
from pipeline.errors import ConfigError, TokenmeterError
from pipeline.settings import TOPIC_BREACHES, TOPIC_BUDGETS, Settings
from pipeline.stream.budget_feed import Parsed, decode_budget, parse_budget
from pipeline.stream.topics import ensure_topics, kafka_client_options, kafka_producer
from pipeline.web.budgets_api import validation_message

SCOPES = ("project_id", "user_id", "feature", "model", "task_type")
_UNIT_S = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hour": 3600}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(text: str) -> Decimal:
    """``N/s``, ``N/min`` or ``N/h`` (in the budget's metric) as a per-minute Decimal."""
    amount, sep, unit = text.strip().partition("/")
    per = _UNIT_S.get(unit.strip().lower())
    try:
        value = Decimal(amount.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not sep or per is None or not value.is_finite() or value <= 0:
        raise ConfigError(f"--max-rate {text!r} must look like N/s, N/min or N/h with N > 0 "
                          "(e.g. 2/min: at most $2 a minute for a cost budget)")
    # rounded to the places a budget number may have (1/h is 0.016667 a minute)
    return (value * 60 / per).quantize(Decimal(10) ** -PLACES).normalize()


def parse_duration(text: str) -> int:
    """``90s``, ``30m``, ``2h``, ``1d`` or plain seconds, as whole seconds."""
    t = text.strip().lower()
    unit = _SECONDS.get(t[-1:]) if t[-1:].isalpha() else 1
    number = t[:-1] if t[-1:].isalpha() else t
    if unit is None or not number.isdigit():
        raise ConfigError(f"--idle-timeout {text!r} must look like 90s, 30m, 2h or 1d")
    return int(number) * unit


def parse_actions(items: list[str]) -> dict[str, str]:
    """``--action KIND=ACTION[:POOL]`` (repeatable) as the budget's actions."""
    return _pairs(items, "--action")


def parse_webhooks(items: list[str]) -> list[dict[str, str]]:
    """``--webhook URL[,slack|json]`` (repeatable) as the budget's webhooks."""
    out = []
    for item in items:
        url, _, fmt = item.rpartition(",") if item.endswith((",slack", ",json")) \
            else (item, "", "")
        out.append({"url": url.strip(), **({"format": fmt} if fmt else {})})
    return out


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{what} {item!r} must look like key=value")
        out[key.strip()] = value.strip()
    return out


def budget_from_args(args: argparse.Namespace) -> Budget:
    """Build and validate a Budget from `budget set` flags (clear message when invalid)."""
    spec: dict[str, Any] = {"budget_id": args.id, "tenant_id": args.tenant, "limit": args.limit,
                            "period": args.period, "metric": args.metric, "mode": args.mode,
                            "timezone": args.timezone}
    if args.thresholds:
        spec["thresholds"] = [t.strip() for t in args.thresholds.split(",") if t.strip()]
    for key, value in _pairs(args.scope or [], "--scope").items():
        if key not in SCOPES:
            raise ConfigError(f"--scope {key!r} is not a scope; use one of {', '.join(SCOPES)}")
        spec[key] = value
    try:
        spec["pools"] = {k: Decimal(v) for k, v in _pairs(args.pool or [], "--pool").items()}
    except InvalidOperation:
        raise ConfigError("--pool shares must be numbers, e.g. --pool low=0.15") from None
    if args.forecast_probability is not None:
        spec["forecast"] = {"enabled": True, "probability": args.forecast_probability}
    if args.no_forecast:
        spec["forecast"] = {"enabled": False}
    if getattr(args, "each", None):
        spec["each"] = args.each
    if getattr(args, "idle_timeout", None):
        spec["idle_timeout_s"] = parse_duration(args.idle_timeout)
    max_rate = getattr(args, "max_rate", None)
    if getattr(args, "anomaly", False) or max_rate:
        # a ceiling alerts through the anomaly watch, so --max-rate turns it on
        spec["anomaly"] = {"enabled": True,
                           **({"max_rate": parse_rate(max_rate)} if max_rate else {})}
    if getattr(args, "action_spec", None):
        spec["actions"] = parse_actions(args.action_spec)
    if getattr(args, "webhook", None):
        spec["webhooks"] = parse_webhooks(args.webhook)
    try:
        return Budget.model_validate(spec)
    except ValidationError as exc:
        raise ConfigError(f"invalid budget: {validation_message(exc)}") from None


async def _send(settings: Settings, key: str, value: bytes | None) -> None:
    async with kafka_producer(settings, "publish the budget") as producer:
        await producer.send_and_wait(settings.topic(TOPIC_BUDGETS), value, key=key.encode())


async def read_topic(settings: Settings, name: str, *, follow: bool = False,
                     on_message: Any = None) -> list[Any]:
    """All messages of a topic from its start (and, with follow, forever)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    await ensure_topics(settings)
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False,
                                **kafka_client_options(settings))
    await consumer.start()
    out: list[Any] = []
    try:
        topic = settings.topic(name)
        await consumer._client.force_metadata_update()  # noqa: SLF001 - fresh topic list
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic)
                                                         or {0})]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    if on_message is not None:
                        on_message(m)
                    out.append(m)
            if not follow:
                done = all([await consumer.position(tp) >= ends[tp] for tp in tps])
                if done or not batch:
                    return out
    finally:
        await consumer.stop()


def budgets_now(settings: Settings) -> dict[str, Budget]:
    """The current budgets: the last message per key of the compacted topic."""
    current: dict[str, Budget | None] = {}
    for m in asyncio.run(read_topic(settings, TOPIC_BUDGETS)):
        decoded = decode_budget(m.key, m.value)
        if decoded is not None:
            current[decoded[0]] = decoded[1]
    return {k: v for k, v in current.items() if v is not None}


def topic_state(settings: Settings) -> dict[str, Parsed]:
    """The last message per key of the compacted topic, invalid ones included."""
    current: dict[str, Parsed] = {}
    for m in asyncio.run(read_topic(settings, TOPIC_BUDGETS)):
        parsed = parse_budget(m.key, m.value)
        if parsed is not None:
            current[parsed.budget_id] = parsed
    return {k: v for k, v in current.items() if v.budget is not None or v.problem is not None}


def stored_failures(settings: Settings) -> dict[str, str]:
    """budget_id -> reason of budgets the workers marked failed; {} when no store is at hand.

    Asked only where it costs nothing to open: a running worker's API (it holds chDB) or a
    ClickHouse server. The topic alone still shows invalid budgets.
    """
    from pipeline.cli.commands import run_query
    from pipeline.runtime.worker import worker_holding_store

    if settings.embedded_store and worker_holding_store(settings) is None:
        return {}
    try:
        _, rows = run_query(settings, "SELECT budget_id, reason FROM "
                            f"{settings.clickhouse_database}.budget_failures FINAL "
                            "WHERE failed ORDER BY budget_id")
    except TokenmeterError as exc:
        print(f"note: budget failures not shown ({exc})", file=sys.stderr)
        return {}
    return {str(budget_id): str(reason) for budget_id, reason in rows}


def reset_budget(settings: Settings, budget_id: str) -> Any:
    """Ask the worker to clear a budget's active actions (POST /api/budgets/{id}/reset)."""
    from urllib.parse import quote

    from pipeline.cli.http import post_json

    return post_json(f"{settings.web_url}/api/budgets/{quote(budget_id, safe='')}/reset",
                     {"budget_id": budget_id}, settings)


def cmd_budget(args: argparse.Namespace, settings: Settings) -> int:
    """Budgets on the compacted budgets topic: set | list | delete; reset asks the worker
    to clear the actions a budget's breaches put in force."""
    if args.action in ("set", "delete", "reset") and not args.id:
        raise ConfigError(f"usage: tokenmeter budget {args.action} ID ...")
    if args.action == "set" and (not args.tenant or args.limit is None):
        raise ConfigError("budget set needs --tenant and --limit")
    if args.action == "set":
        budget = budget_from_args(args)
        asyncio.run(_send(settings, budget.budget_id, budget.model_dump_json().encode()))
        print(json.dumps(public_budget(budget), separators=(",", ":")))  # webhooks masked
        return 0
    if args.action == "reset":
        try:
            answer = reset_budget(settings, args.id)
        except TokenmeterError as exc:
            raise ConfigError(f"budget reset {args.id!r} failed: {exc}") from None
        print(json.dumps(answer))
        return 0
    if args.action == "delete":
        if args.id not in budgets_now(settings):
            raise ConfigError(f"no budget {args.id!r}")
        asyncio.run(_send(settings, args.id, None))
        print(f"deleted {args.id}", file=sys.stderr)
        return 0
    state = topic_state(settings)
    failures = stored_failures(settings)
    listed = sorted(state.values(), key=lambda p: p.budget_id)

    def status(p: Parsed) -> tuple[str, str | None]:
        if p.problem is not None:
            return "invalid", p.problem
        reason = failures.get(p.budget_id)
        return ("failed", reason) if reason is not None else ("ok", None)

    if args.json:
        print(json.dumps([
            {**(public_budget(p.budget) if p.budget is not None
                else {"budget_id": p.budget_id, "tenant_id": p.tenant_id}),
             "status": status(p)[0], "failure": status(p)[1]} for p in listed]))
        return 0
    from pipeline.cli.output import print_rows

    rows = []
    for p in listed:
        state_text, reason = status(p)
        shown = state_text if reason is None else f"{state_text}: {reason}"
        b = p.budget
        if b is None:
            rows.append([p.budget_id, p.tenant_id, "", "", "", "", "", "", "", "", shown])
            continue
        each = "" if b.each is None else f"{b.each} (idle {b.idle_timeout_s}s)"
        rows.append([b.budget_id, b.tenant_id, b.period.value, each, b.metric.value,
                     format(b.limit, "f"), b.mode.value,
                     ",".join(format(t, "f") for t in b.thresholds),
                     ",".join(f"{k}={v}" for k, v in b.pools.items()),
                     ",".join(f"{k}={getattr(b, k)}" for k in SCOPES if getattr(b, k)), shown])
    print_rows(["budget_id", "tenant", "period", "each", "metric", "limit", "mode", "thresholds",
                "pools", "scope", "status"], rows, "table")
    return 0


def cmd_breaches(args: argparse.Namespace, settings: Settings) -> int:
    """Print breaches from the topic's start; --follow keeps printing new ones."""

    def show(m: Any) -> None:
        try:
            b = json.loads(m.value)
        except (TypeError, ValueError):
            return
        if args.json:
            print(json.dumps(b), flush=True)
            return
        what = (f"forecast {b.get('probability')} to reach" if b.get("kind") == "forecast"
                else "crossed")
        pool = f" pool {b['pool']}" if b.get("pool") else ""
        print(f"{b.get('emitted_at', '')[:19]}  {b.get('severity', ''):8} "
              f"{b.get('tenant_id')}/{b.get('budget_id')}{pool} {what} "
              f"{b.get('threshold_pct')}% ({b.get('spent')} of {b.get('limit')} "
              f"{b.get('metric')}) -> {b.get('action')}", flush=True)

    try:
        asyncio.run(read_topic(settings, TOPIC_BREACHES, follow=args.follow, on_message=show))
    except KeyboardInterrupt:
        return 0
    return 0
