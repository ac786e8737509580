"""The Faust app, built at run time from settings (never at import)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import faust
from faust.sensors import Monitor

from pipeline.clock import Clock, clock_for, wall_clock
from pipeline.core.catalog import Catalog
from pipeline.core.meter import Meter
from pipeline.core.reservations import HoldBook
from pipeline.core.scoring import ValuePolicy
from pipeline.settings import (
    TOPIC_BREACHES,
    TOPIC_BUDGETS,
    TOPIC_DLQ,
    TOPIC_EVENTS,
    TOPIC_OUTCOMES,
    Settings,
)
from pipeline.store.client import Store
from pipeline.store.sink import STATUS_COLUMNS, Sink
from pipeline.stream.budget_feed import run_budget_feed
from pipeline.stream.holds import HoldWatcher
from pipeline.stream.live import LiveState
from pipeline.stream.processor import MOVED_HEADER, Processor, RawMessage, was_moved
from pipeline.stream.topics import Partitioner
from pipeline.stream.velocity import VelocityWatch

log = logging.getLogger(__name__)
VELOCITY_TICK_S = 5.0  # how often open anomaly episodes are advanced without new events


@dataclass
class Runtime:
    """Everything one worker owns; passed to agents and web views (no module globals)."""

    settings: Settings
    store: Store
    processor: Processor
    app: Any = None
    assigned: bool = False
    events_topic: Any = None
    catalog: Catalog | None = None
    publish_budget: Any = None
    budgets_loaded: asyncio.Event = field(default_factory=asyncio.Event)
    forecast_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    forecast: Any = None
    write_status: Any = None
    failure: str | None = None  # set when the metering agent crashed; /health reports it
    clock: Clock = wall_clock  # every "now" of this worker (settable: TOKENMETER_CLOCK_START)
    actions: Any = None  # ActionBook: active budget actions (pipeline/stream/action_book.py)

    @property
    def ready(self) -> bool:
        """Partitions assigned, state rebuilt, budgets loaded."""
        return self.assigned and self.budgets_loaded.is_set()


def tune_fetch_wait(app: Any, ms: int) -> None:
    """Lower the consumer's fetch wait (Faust hard-codes 1500 ms).

    A fetch returns early only once `fetch_min_bytes` arrive; the embedded broker tends to
    hold it for the full wait, which was most of the produce-to-breach latency (measured:
    p50 127 ms per hop at 500 ms, 4.5 ms at 10 ms). Faust offers no setting, hence this.
    """
    try:
        fetcher = app.consumer._thread._consumer._fetcher
    except AttributeError:
        log.warning("could not tune the consumer fetch wait (Faust internals changed)")
        return
    fetcher._fetch_max_wait_ms = ms


class QuietMonitor(Monitor):
    """Faust's Monitor without its per-message bookkeeping.

    The Monitor counts and times every message and stream event (dicts, deques, clock
    reads) for Faust's own stats, which nothing here reads: /metrics keeps its own counters.
    """

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        """Not counted."""

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        """Not timed."""

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any,
                            state: Any = None) -> None:
        """Not timed."""

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        """Not counted."""


def build_app(settings: Settings, store: Store, catalog: Catalog, policy: ValuePolicy) -> Runtime:
    """Create the Faust app, its topics, agents and web views for one worker."""
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        # Faust keeps its local data here, not in "{app_id}-data" of whatever directory the
        # worker was started in (tests and demos littered the checkout with them)
        datadir=str(settings.data_dir / "faust"),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=1.0,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        stream_wait_empty=False,
        # bounded memory under a burst: Faust stops fetching once this many messages wait
        stream_buffer_maxsize=1000,
        producer_linger=0.005,
        # no compression for the worker's own low-volume output (breaches, dead letters):
        # zstd there cost produce-to-breach p50 385 ms -> 2,470 ms (docs/performance.md)
        producer_compression_type=None,
        logging_config=None,
        monitor=None if settings.faust_monitor else QuietMonitor(),
    )
    events_topic = app.topic(
        settings.topic(TOPIC_EVENTS), key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    )
    def raw_topic(name: str) -> Any:
        return app.topic(settings.topic(name), key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")

    dlq_topic = raw_topic(TOPIC_DLQ)
    breaches_topic = raw_topic(TOPIC_BREACHES)
    budgets_topic = raw_topic(TOPIC_BUDGETS)

    async def publish_dlq(key: str | None, value: bytes) -> None:
        await dlq_topic.send(key=key.encode() if key else None, value=value)

    async def publish_breach(key: str | None, value: bytes) -> Any:
        # returns the delivery future: the caller awaits all of a batch's deliveries together
        return await breaches_topic.send(key=key.encode() if key else None, value=value)

    async def forward(partition: int, key: str, value: bytes) -> Any:
        # back into the events topic, on the tenant's partition (see pipeline/core/placement.py)
        return await events_topic.send(key=key.encode(), value=value, partition=partition,
                                       headers=[(MOVED_HEADER, b"1")])

    async def publish_budget(budget_id: str, value: bytes | None) -> None:
        fut = await budgets_topic.send(key=budget_id.encode(), value=value)
        await fut

    clock = clock_for(settings.clock_start)
    sink = Sink(store)
    live = LiveState(grace=timedelta(seconds=settings.grace_s),
                     horizon=timedelta(days=settings.dedup_horizon_days),
                     max_ids=settings.dedup_max_ids)
    holds = HoldBook()  # open reservations (POST /api/reservations), settled by events
    velocity = VelocityWatch(store, clock)  # spend-velocity (anomaly) breaches
    processor = Processor(Meter(catalog, policy), sink, store, live, publish_dlq,
                          grace=timedelta(seconds=settings.grace_s), clock=clock,
                          publish_breach=publish_breach,
                          partition_of=Partitioner(settings.partitions),
                          forward=forward,
                          # after budgets, in the same locked step: reservation holds,
                          # then spend velocity (anomaly breaches; baselines off the hot path)
                          watchers=[HoldWatcher(holds), velocity])
    velocity.bind(processor.book, processor.budgets.owns)  # the processor's budgets and tenants
    runtime = Runtime(settings=settings, store=store, processor=processor, app=app,
                      events_topic=events_topic, catalog=catalog,
                      publish_budget=publish_budget, clock=clock)

    async def budget_feed() -> None:
        await run_budget_feed(settings, processor, sink, runtime.budgets_loaded)

    app.task(budget_feed)

    async def forecast(budget_id: str | None = None, owned_only: bool = False) -> Any:
        from pipeline.runtime.forecast_job import run_forecasts

        budgets = [b for b in processor.book.budgets.values()
                   if (budget_id is None or b.budget_id == budget_id)
                   and b.budget_id not in processor.failed_budgets  # skipped, with reason
                   and (not owned_only or processor.partition_of(b.tenant_id)
                        in live.partitions)]

        async def publish(b: Any) -> None:
            await publish_breach(b.tenant_id, b.model_dump_json().encode())

        async with runtime.forecast_lock:
            return await run_forecasts(store, budgets, clock(),
                                       publish=publish, processes=settings.forecast_processes)

    runtime.forecast = forecast

    async def scheduled_forecast() -> None:
        if runtime.ready and processor.book.budgets:
            forecasts, breaches = await forecast(owned_only=True)
            log.info("scheduled forecast: %d budgets, %d forecast breaches",
                     len(forecasts), len(breaches))

    app.timer(interval=settings.forecast_interval_s, on_leader=False)(scheduled_forecast)

    async def budget_status() -> None:
        if runtime.ready and processor.book.budgets:
            rows = await processor.status_rows(clock())
            if rows:
                await sink.write_rows("budget_status", rows, STATUS_COLUMNS)

    runtime.write_status = budget_status
    app.timer(interval=settings.status_interval_s, on_leader=False)(budget_status)

    async def velocity_tick() -> None:
        # episodes end after their cooldown even when no event arrives (a block that stopped
        # the only traffic); the watch's state is only touched on the event loop, like observe
        try:
            await velocity.tick(clock())
        except Exception:  # never stop the timer: metering is not affected either way
            log.exception("spend-velocity tick failed")

    app.timer(interval=VELOCITY_TICK_S, on_leader=False)(velocity_tick)

    @app.agent(events_topic, name="meter")
    async def meter(stream: Any) -> None:
        # noack_take: nothing is acked until the batch is durable in ClickHouse (see submit)
        try:
            async for events in stream.noack_take(settings.take_max,
                                                  within=settings.take_within_s):
                batch = [RawMessage(e.message.value, e.message.topic, e.message.partition,
                                    e.message.offset, was_moved(e.message.headers))
                         for e in events]

                async def ack(events: Any = events) -> None:
                    for e in events:
                        await stream.ack(e)

                await processor.submit(batch, ack)
        except Exception as exc:
            # Faust restarts a crashed agent, but the messages it had taken stay unacked and
            # are not delivered again, so the worker would sit idle with lag: say so loudly
            # (/health turns 503) instead of looking healthy
            runtime.failure = f"metering agent crashed: {type(exc).__name__}: {exc}"
            log.critical("%s; restart the worker to replay from the committed offsets",
                         runtime.failure)
            raise
        finally:
            await processor.drain()

    async def _assigned(app_: Any, assigned: Any = (), **_: Any) -> None:
        tune_fetch_wait(app, settings.fetch_max_wait_ms)
        mine = {tp.partition for tp in assigned if tp.topic == events_topic.get_topic_name()}
        held = set(live.partitions)
        live.revoke(held - mine)
        if mine - held:
            await processor.rebuild(mine - held)
        runtime.assigned = True

    async def _revoked(app_: Any, revoked: Any = (), **_: Any) -> None:
        # batches still waiting for their insert must be in the ledger before the group
        # re-forms: the next owner rebuilds its dedup index from the ledger, and would
        # otherwise meter the redelivered messages a second time
        await processor.drain()

    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]  # mode stub too narrow
    app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]

    from pipeline.web import auth
    from pipeline.web.api import register_ops_view, register_spend_view, register_views
    from pipeline.web.budgets_api import register_budget_views, register_forecast_view
    from pipeline.web.dashboard_views import register_dashboard
    from pipeline.web.ingest import register_ingest_view
    from pipeline.web.reservations_api import register_reservation_views

    auth.install(app, settings)
    register_views(app, runtime)
    register_spend_view(app, runtime)
    register_budget_views(app, runtime)
    register_reservation_views(app, runtime, holds)
    register_forecast_view(app, runtime)
    register_ops_view(app, runtime)
    register_dashboard(app, runtime)
    register_ingest_view(app, runtime)
    from pipeline.stream.breach_consumer import wire_actions

    # breaches turn budget actions on and go out to webhooks (an agent of their own; it
    # also registers POST /api/budgets/{id}/reset)
    runtime.actions = actions = wire_actions(app, runtime, breaches_topic)
    from pipeline.stream.outcomes import OutcomeWriter, wire_outcomes

    # producers' quality signals per call: their own agent off the metering path, with a
    # sink of its own (an outcome ClickHouse refuses never marks the metering sink failed)
    wire_outcomes(app, raw_topic(TOPIC_OUTCOMES), OutcomeWriter(Sink(store), publish_dlq,
                                                                clock))
    clearing: set[asyncio.Task[Any]] = set()

    def anomaly_over(budget_id: str, now: datetime) -> None:
        # the velocity watch calls this inside the metering step when a budget's spend rate
        # is back to normal: lift its anomaly actions off that path (a ClickHouse write)
        task = asyncio.get_running_loop().create_task(actions.clear(budget_id, "anomaly", now))
        clearing.add(task)
        task.add_done_callback(_cleared)

    def _cleared(task: asyncio.Task[Any]) -> None:
        clearing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not lift the anomaly actions of a budget (they expire on "
                      "their own, or `tokenmeter budget reset ID`): %s", task.exception())

    velocity.on_clear = anomaly_over
    return runtime
