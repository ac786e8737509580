import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.embedded.broker import EmbeddedBroker, port_free, reachable
from pipeline.errors import BrokerError
from pipeline.settings import load_settings
from pipeline.stream.topics import ensure_topics
from tests.helpers import free_port, process_gone

pytestmark = pytest.mark.integration


def test_start_stop_frees_port() -> None:
    port = free_port()
    b = EmbeddedBroker("127.0.0.1", port)
    b.start()
    assert reachable("127.0.0.1", port)
    b.stop()
    assert not b.alive()
    assert port_free("127.0.0.1", port)


def test_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port 127.0.0.1:{port} is already in use"):
            EmbeddedBroker("127.0.0.1", port).start()


def test_broker_dies_with_its_parent_even_on_sigkill() -> None:
    port = free_port()
    code = textwrap.dedent(f"""
        import time
        from pipeline.embedded.broker import EmbeddedBroker
        b = EmbeddedBroker("127.0.0.1", {port})
        b.start()
        print(b.proc.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert not process_gone(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while not process_gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(child), "broker outlived its SIGKILLed parent"


def test_ensure_topics(broker: EmbeddedBroker, topic_prefix: str) -> None:
    s = load_settings(kafka_bootstrap=broker.bootstrap, topic_prefix=topic_prefix, partitions=3)
    created = asyncio.run(ensure_topics(s))
    assert sorted(created) == sorted(topic_prefix + t for t in
                                     ("usage-events", "usage-events-dlq", "budgets",
                                      "budget-breaches", "usage-outcomes"))
    assert asyncio.run(ensure_topics(s)) == []  # idempotent

    async def partitions() -> int:
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await p.start()
        try:
            return len(await p.partitions_for(topic_prefix + "usage-events"))
        finally:
            await p.stop()

    assert asyncio.run(partitions()) == 3


def test_unreachable_kafka_is_one_clear_error() -> None:
    s = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    with pytest.raises(BrokerError, match="cannot reach Kafka"):
        asyncio.run(ensure_topics(s, timeout=3))
