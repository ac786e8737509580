"""The Faust app, built at run time from settings (never at import)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import faust

from pipeline.catalog import Catalog
from pipeline.meter import Meter
from pipeline.scoring import ValuePolicy
from pipeline.settings import TOPIC_DLQ, TOPIC_EVENTS, Settings
from pipeline.store.client import Store
from pipeline.store.sink import Sink
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything one worker owns; passed to agents and web views (no module globals)."""

    settings: Settings
    store: Store
    processor: Processor
    app: Any = None
    assigned: bool = False
    events_topic: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Partitions assigned and the store open."""
        return self.assigned and self.store is not None


def build_app(settings: Settings, store: Store, catalog: Catalog, policy: ValuePolicy) -> Runtime:
    """Create the Faust app, its topics, agents and web views for one worker."""
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
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
        producer_linger=0.005,
        logging_config=None,
    )
    events_topic = app.topic(
        settings.topic(TOPIC_EVENTS), key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    )
    dlq_topic = app.topic(
        settings.topic(TOPIC_DLQ), key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    )

    async def publish_dlq(key: str | None, value: bytes) -> None:
        await dlq_topic.send(key=key.encode() if key else None, value=value)

    sink = Sink(store)
    live = LiveState(grace=timedelta(seconds=settings.grace_s),
                     horizon=timedelta(days=settings.dedup_horizon_days),
                     max_ids=settings.dedup_max_ids)
    processor = Processor(Meter(catalog, policy), sink, store, live, publish_dlq,
                          grace=timedelta(seconds=settings.grace_s))
    runtime = Runtime(settings=settings, store=store, processor=processor, app=app,
                      events_topic=events_topic)

    @app.agent(events_topic, name="meter")
    async def meter(stream: Any) -> None:
        async for events in stream.take_events(settings.take_max, within=settings.take_within_s):
            batch = [
                RawMessage(e.message.value, e.message.topic, e.message.partition, e.message.offset)
                for e in events
            ]
            await processor.process(batch)

    async def _assigned(app_: Any, assigned: Any = (), **_: Any) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == events_topic.get_topic_name()}
        held = set(live.partitions)
        live.revoke(held - mine)
        if mine - held:
            await processor.rebuild(mine - held)
        runtime.assigned = True

    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]  # mode stub too narrow

    from pipeline.web.api import register_spend_view, register_views

    register_views(app, runtime)
    register_spend_view(app, runtime)
    return runtime
