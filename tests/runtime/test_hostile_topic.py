"""Hostile messages straight onto the topic (any client can send them), valid events between."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from decimal import Decimal

import pytest

from pipeline.settings import Settings
from tests.helpers import (
    make_traffic,
    query,
    start_worker,
    truth,
    wait_events,
    wait_ready,
)

pytestmark = pytest.mark.integration
VALID = {"event_id": "h", "timestamp": "2025-06-01T00:00:00Z", "tenant_id": "tenant-00001",
         "provider": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}

HOSTILE: list[tuple[bytes, str]] = [
    (b"{not json", "invalid_json"),
    (b'{"event_id": "' + b"x" * 3_000_000 + b'"}', "too_large"),  # a 3 MB message
    (bytes(range(256)) * 4, "invalid_json"),
    (json.dumps({**VALID, "event_id": "w1", "input_tokens": "12"}).encode(), "schema"),
    (json.dumps({**VALID, "event_id": "big", "user_id": "x" * 900_000}).encode(), "too_large"),
    (b"[" * 50_000 + b"]" * 50_000, "invalid_json"),
    (b'{"event_id": "n", "input_tokens": NaN}', "invalid_json"),
    (b'{"event_id": "i", "input_tokens": Infinity}', "invalid_json"),
    (json.dumps({**VALID, "event_id": "huge", "input_tokens": 10**20}).encode(), "too_large"),
    (json.dumps({**VALID, "event_id": "neg", "output_tokens": -5}).encode(), "negative_tokens"),
    (json.dumps({**VALID, "event_id": "unk", "model": "gpt-99-ultra"}).encode(), "unknown_model"),
    (json.dumps({**VALID, "event_id": "fut", "timestamp": "2999-01-01T00:00:00Z"}).encode(),
     "invalid_timestamp"),
    (json.dumps({**VALID, "event_id": "past", "timestamp": "1970-01-01T00:00:00Z"}).encode(),
     "invalid_timestamp"),
    (json.dumps({**VALID, "event_id": "nul\u0000", "tenant_id": "\u202e\u0000odd",
                 "model": "no-such\u0000model"}).encode(), "unknown_model"),
    (b'{"event_id": "d", "input_tokens": 5, "input_tokens": 500}', "invalid_json"),
    (b"", "invalid_json"),
    (b"null", "schema"),
    (b"[1, 2, 3]", "schema"),  # an envelope: each of its three items is dead-lettered
]
ITEMS = {b"[1, 2, 3]": 3}


def test_hostile_messages_on_the_topic(settings: Settings) -> None:
    from aiokafka import AIOKafkaProducer

    from pipeline.stream.topics import ensure_topics

    events = make_traffic(300, seed=31)
    proc = start_worker(settings)
    try:
        wait_ready(settings, proc)

        async def send() -> None:
            await ensure_topics(settings)
            p = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                 max_request_size=4 * 1024 * 1024)
            await p.start()
            try:
                step = len(events) // len(HOSTILE)
                for i, e in enumerate(events):
                    await p.send(settings.topic("usage-events"), json.dumps(e).encode(),
                                 key=e["tenant_id"].encode())
                    if i % step == 0 and i // step < len(HOSTILE):  # valid events between
                        raw, _ = HOSTILE[i // step]
                        await p.send(settings.topic("usage-events"), raw, key=b"hostile")
                await p.flush()
            finally:
                await p.stop()

        asyncio.run(send())
        assert wait_events(settings, len(events)) == len(events)
        deadline = time.monotonic() + 30
        reasons: dict[str, int] = {}
        while time.monotonic() < deadline:
            reasons = {r: int(n) for r, n in query(
                settings, "SELECT reason_code, count() FROM tokenmeter.dlq_events FINAL "
                          "GROUP BY reason_code")}
            if sum(reasons.values()) >= len(HOSTILE) + 2:
                break
            time.sleep(0.3)
        expected: dict[str, int] = {}
        for raw, code in HOSTILE:
            expected[code] = expected.get(code, 0) + ITEMS.get(raw, 1)
        assert reasons == expected
        rows = query(settings, "SELECT tenant_id, sum(total_cost) FROM tokenmeter.usage_events "
                               "FINAL GROUP BY tenant_id")
        assert {t: Decimal(c) for t, c in rows} == truth(events)
        with urllib.request.urlopen(f"{settings.web_url}/health", timeout=5) as r:
            assert r.status == 200
        assert proc.poll() is None
        stored = query(settings, "SELECT max(length(raw)) FROM tokenmeter.dlq_events FINAL")
        assert int(stored[0][0]) < 20_000  # payloads are size-capped in the DLQ
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
