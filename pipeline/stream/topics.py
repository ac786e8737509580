"""Topic administration: create the contract's topics when missing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka.partitioner import murmur2

from pipeline.errors import BrokerError
from pipeline.settings import (
    TOPIC_BREACHES,
    TOPIC_BUDGETS,
    TOPIC_DLQ,
    TOPIC_EVENTS,
    TOPIC_OUTCOMES,
    Settings,
)


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword options (bootstrap, security) from settings."""
    opts: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap}
    if settings.kafka_security_protocol != "PLAINTEXT":
        import ssl

        opts["security_protocol"] = settings.kafka_security_protocol
        if "SSL" in settings.kafka_security_protocol:
            opts["ssl_context"] = ssl.create_default_context()
        if settings.kafka_sasl_mechanism:
            opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
            opts["sasl_plain_username"] = settings.kafka_sasl_username
            if settings.kafka_sasl_password is not None:
                opts["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return opts


# 1 MiB record batches compress several envelopes together (aiokafka's 16 KiB default holds
# less than one envelope of 100 events); requests may carry one full batch and more
PRODUCER_SIZES: dict[str, int] = {"max_batch_size": 1024 * 1024,
                                  "max_request_size": 2 * 1024 * 1024}


def kafka_producer_options(settings: Settings) -> dict[str, Any]:
    """aiokafka producer options: connection, the configured compression, 1 MiB batches."""
    opts = kafka_client_options(settings)
    opts.update(PRODUCER_SIZES)
    if settings.producer_compression != "none":
        opts["compression_type"] = settings.producer_compression
    return opts


async def start_producer(settings: Settings, purpose: str, *, linger_ms: int = 5) -> Any:
    """A started aiokafka producer (topics ensured); BrokerError naming ``purpose`` if not."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    await ensure_topics(settings)
    producer = AIOKafkaProducer(linger_ms=linger_ms, **kafka_producer_options(settings))
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        await producer.stop()
        raise BrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap} to {purpose} "
                          f"({type(exc).__name__}: {exc}); start it (tokenmeter up) or set "
                          "TOKENMETER_KAFKA_BOOTSTRAP") from None
    return producer


@asynccontextmanager
async def kafka_producer(settings: Settings, purpose: str, *,
                         linger_ms: int = 5) -> AsyncIterator[Any]:
    """``start_producer`` as a context: the producer is stopped (flushed) on exit."""
    producer = await start_producer(settings, purpose, linger_ms=linger_ms)
    try:
        yield producer
    finally:
        await producer.stop()


async def ensure_topics(settings: Settings, timeout: float = 10.0) -> list[str]:
    """Create usage-events, usage-events-dlq, budgets (compacted), budget-breaches and
    usage-outcomes if missing."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(request_timeout_ms=int(timeout * 1000),
                                **kafka_client_options(settings))
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the BrokerError below says it once, clearly
    try:
        await asyncio.wait_for(admin.start(), timeout)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        await admin.close()
        raise BrokerError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({type(exc).__name__}); start "
            "one with `tokenmeter broker`, or set TOKENMETER_KAFKA_BOOTSTRAP / --kafka"
        ) from None
    finally:
        quiet.setLevel(level)
    try:
        existing = set(await admin.list_topics())
        wanted = {
            settings.topic(TOPIC_EVENTS): {},
            settings.topic(TOPIC_DLQ): {},
            settings.topic(TOPIC_BUDGETS): {"cleanup.policy": "compact"},
            settings.topic(TOPIC_BREACHES): {},
            settings.topic(TOPIC_OUTCOMES): {},
        }
        new = [
            NewTopic(name, settings.partitions, 1, topic_configs=cfg)
            for name, cfg in wanted.items() if name not in existing
        ]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another worker created them first
        return [t.name for t in new]
    finally:
        await admin.close()


def partition_for(key: str, partitions: int) -> int:
    """The partition a keyed message lands on (Kafka's default murmur2 partitioner)."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class Partitioner:
    """``partition_for`` with a fixed partition count, memoized per key.

    It runs for every event (placement, budget ownership, spend velocity) and murmur2 is
    pure Python: 10% of a worker's main thread on envelopes before this cache. Bounded:
    cleared whole when it holds ``max_keys`` keys (tenants are few; a flood of keys only
    costs the hash again).
    """

    def __init__(self, partitions: int, max_keys: int = 100_000) -> None:
        self.partitions = partitions
        self.max_keys = max_keys
        self._cache: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        """The partition of ``key``."""
        partition = self._cache.get(key)
        if partition is None:
            if len(self._cache) >= self.max_keys:
                self._cache.clear()
            partition = self._cache[key] = partition_for(key, self.partitions)
        return partition
