"""Operations that need the store: one implementation, run by the worker or the CLI.

While a worker holds the embedded chDB store the CLI asks it (POST /api/ops/{name}); with
no worker, or against a ClickHouse server, the CLI runs the same function itself.
Run by the worker's HTTP API, an operation writes files only under the data directory
(``OpContext.exports_dir``); run by the CLI it writes where the operator says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.clock import clock_for
from pipeline.core.catalog import load_catalog_with_overlays
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.store.client import Store

Publish = Callable[[str, bytes], Awaitable[Any]]


@dataclass
class OpContext:
    """What an operation may use."""

    settings: Settings
    store: Store
    publish_event: Publish | None
    now: datetime
    # set when run for an HTTP caller: export files may only go under this directory
    exports_dir: Path | None = None
    # set inside a worker: refreshes its live windows and budget state after re-pricing
    after_reprice: Callable[[], Awaitable[None]] | None = None

    def meter(self) -> Meter:
        """A meter with the catalog as imported right now (prices may have changed)."""
        return Meter(load_catalog_with_overlays(self.settings.prices_dir), load_policy())


def _day(value: Any, name: str) -> datetime:
    try:
        d = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{name} {value!r} is not a date (YYYY-MM-DD)") from None
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def _range(body: dict[str, Any]) -> tuple[datetime, datetime]:
    start, end = _day(body.get("from"), "--from"), _day(body.get("to"), "--to")
    if end <= start:
        raise ConfigError("--to must be after --from")
    # the ledger's DateTime64 holds 1900-2299; outside it ClickHouse fails obscurely
    if start.year < 1970 or end.year > 2200:
        raise ConfigError("--from/--to must lie between 1970 and 2200")
    return start, end


FOCUS_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def export_path(exports_dir: Path, file: str) -> Path:
    """Where an HTTP caller's export goes: inside ``exports_dir``, never anywhere else."""
    if "\x00" in file or ".." in Path(file).parts:
        raise ConfigError(f"export file {file!r}: give a plain name such as focus.csv "
                          "(no '..'); the API writes under the data directory's exports/")
    root = exports_dir.resolve()
    target = Path(file) if Path(file).is_absolute() else root / file
    resolved = target.resolve()  # follows symlinks: a link inside exports/ cannot escape
    if not resolved.is_relative_to(root) or resolved == root:
        raise ConfigError(f"export file {file!r} is outside {root}; the API writes exports "
                          "only there (name a file such as focus.csv, or name none to get "
                          "the export in the response)")
    if resolved.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"export file {file!r}: end it in .csv or .parquet")
    return resolved


async def dlq_list(ctx: OpContext, body: dict[str, Any]) -> dict[str, Any]:
    """Dead letters by reason, with examples."""
    from pipeline.store.dlq import dlq_summary

    return await asyncio.to_thread(dlq_summary, ctx.store)


async def dlq_replay(ctx: OpContext, body: dict[str, Any]) -> dict[str, Any]:
    """Re-publish dead letters that validate with today's catalog."""
    from pipeline.store.dlq import replay

    if ctx.publish_event is None:
        raise ConfigError("replay needs Kafka to publish to; set TOKENMETER_KAFKA_BOOTSTRAP")
    return await replay(ctx.store, ctx.meter(), ctx.publish_event, ctx.now,
                        reason=body.get("reason"))


async def export_focus(ctx: OpContext, body: dict[str, Any]) -> dict[str, Any]:
    """Write the FOCUS export; report rows and the BilledCost total."""
    from pipeline.store.focus import focus_rows, write_focus

    start, end = _range(body)
    file = body.get("file")
    if not isinstance(file, str) or not file.strip():
        raise ConfigError("give the output FILE (.csv or .parquet)")
    path = Path(file) if ctx.exports_dir is None else export_path(ctx.exports_dir, file)
    if not path.name:
        raise ConfigError("give the output FILE (.csv or .parquet)")
    rows = await asyncio.to_thread(focus_rows, ctx.store, start, end)
    await asyncio.to_thread(write_focus, rows, path)
    total = sum((r[0] for r in rows), Decimal(0))
    return {"file": str(path.resolve()), "rows": len(rows), "billed_cost": format(total, "f")}


async def export_focus_bytes(ctx: OpContext, body: dict[str, Any]
                             ) -> tuple[bytes, str, dict[str, Any]]:
    """The FOCUS export as file content (``format`` csv or parquet), its type and summary."""
    import tempfile

    from pipeline.store.focus import focus_rows, write_focus

    start, end = _range(body)
    kind = body.get("format", "csv")
    if kind not in FOCUS_TYPES:
        raise ConfigError(f"format {kind!r}: use csv or parquet")
    rows = await asyncio.to_thread(focus_rows, ctx.store, start, end)

    def render() -> bytes:
        with tempfile.TemporaryDirectory(prefix="tokenmeter-focus-") as tmp:
            out = Path(tmp) / f"focus.{kind}"
            write_focus(rows, out)
            return out.read_bytes()

    data = await asyncio.to_thread(render)
    total = sum((r[0] for r in rows), Decimal(0))
    return data, FOCUS_TYPES[str(kind)], {"rows": len(rows), "billed_cost": format(total, "f")}


async def reprice(ctx: OpContext, body: dict[str, Any]) -> dict[str, Any]:
    """Recompute stored costs with the current catalog."""
    from pipeline.store.reprice import reprice as run

    start, end = _range(body)
    catalog = load_catalog_with_overlays(ctx.settings.prices_dir)
    result: dict[str, Any] = await asyncio.to_thread(run, ctx.store, catalog, start, end,
                                                     ctx.now, dry_run=bool(body.get("dry_run")))
    changed = bool(result["events_repriced"]) and not result["dry_run"]
    if changed and ctx.after_reprice is not None:
        await ctx.after_reprice()
    # said in the answer: nothing tells the other workers (or any worker, when the CLI ran
    # it against a ClickHouse server) to reload what they hold in memory
    result["live_state"] = (
        "unchanged" if not changed else
        (LIVE_REFRESHED if ctx.after_reprice is not None else LIVE_STALE))
    return result


LIVE_STALE = ("not refreshed: running workers keep the old costs in their open hour/day "
              "windows and their budgets' current-period spend until their next rebalance or "
              "restart (the ledger, rollups and reports are corrected now)")
LIVE_REFRESHED = ("refreshed on the worker that ran it; other workers keep the old costs in "
                  "their open hour/day windows and budgets' current-period spend until their "
                  "next rebalance or restart")


async def report(ctx: OpContext, body: dict[str, Any]) -> dict[str, Any]:
    """Spend summary data of one tenant for the current period."""
    from pipeline.store.report import report_data

    tenant = body.get("tenant")
    if not tenant:
        raise ConfigError("give --tenant")
    period = body.get("period", "month")
    return await asyncio.to_thread(report_data, ctx.store, str(tenant), str(period), ctx.now)


OPS: dict[str, Callable[[OpContext, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "dlq_list": dlq_list, "dlq_replay": dlq_replay, "export_focus": export_focus,
    "reprice": reprice, "report": report,
}


async def run_local(settings: Settings, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Run an operation in this process: open the store, and Kafka when it is needed."""
    from pipeline.store.client import open_store
    from pipeline.store.migrations import migrate

    store = await asyncio.to_thread(open_store, settings)
    producer = None
    try:
        await asyncio.to_thread(migrate, store)
        publish: Publish | None = None
        if name == "dlq_replay":
            from pipeline.settings import TOPIC_EVENTS
            from pipeline.stream.topics import start_producer

            producer = await start_producer(settings, "replay dead letters")
            topic = settings.topic(TOPIC_EVENTS)
            sender = producer

            async def publish(key: str, value: bytes) -> None:
                await sender.send_and_wait(topic, value, key=key.encode())

        ctx = OpContext(settings, store, publish, clock_for(settings.clock_start)())
        return await OPS[name](ctx, body)
    finally:
        if producer is not None:
            await producer.stop()
        store.close()
