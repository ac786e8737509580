"""POST /api/events on a real worker (real embedded broker, real chDB ledger)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from pipeline.core.ingest import MAX_REQUEST_BYTES
from pipeline.embedded.broker import EmbeddedBroker
from pipeline.settings import load_settings
from tests.helpers import ApiWorker, free_port, now, subprocess_env

pytestmark = pytest.mark.integration
TOKEN = "ingest-test-token"  # noqa: S105 - a test credential


def event(eid: str, tenant: str = "tenant-00001", **extra: Any) -> dict[str, Any]:
    return {"event_id": eid, "timestamp": (now() - timedelta(seconds=5)).isoformat(),
            "tenant_id": tenant, "provider": "openai", "model": "gpt-4o-mini",
            "input_tokens": 1000, "output_tokens": 100, **extra}


@pytest.fixture(scope="module")
def worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ApiWorker]:
    """One worker with TOKENMETER_API_TOKEN set (ApiWorker sends it unless auth=False)."""
    tmp = tmp_path_factory.mktemp("ingest")
    prefix = f"in{uuid.uuid4().hex[:8]}-"
    settings = load_settings(kafka_bootstrap=broker.bootstrap, data_dir=str(tmp / "data"),
                             web_port=free_port(), topic_prefix=prefix, app_id=f"tm-{prefix}",
                             partitions=2)
    env = subprocess_env(settings)
    env["TOKENMETER_API_TOKEN"] = TOKEN
    w = ApiWorker(settings, env)
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


def stored(w: ApiWorker, ids: list[str], timeout: float = 30) -> int:
    """Rows of these event_ids in the ledger (no FINAL: a duplicate row would show) once
    there are at least len(ids), or what there is at the timeout."""
    listed = ",".join(f"'{i}'" for i in ids)
    deadline = time.monotonic() + timeout
    while True:
        n = int(w.sql(f"SELECT count() FROM tokenmeter.usage_events WHERE event_id IN "
                      f"({listed})")[0][0])
        if n >= len(ids) or time.monotonic() > deadline:
            return n
        time.sleep(0.2)


def post(w: ApiWorker, raw: bytes, content_type: str = "application/json",
         **kw: Any) -> tuple[int, dict[str, str], Any]:
    status, headers, data = w.call("POST", "/api/events", raw=raw, json_type=False,
                                   headers={"Content-Type": content_type, **kw.pop("headers",
                                                                                   {})}, **kw)
    return status, headers, json.loads(data) if data else None


def test_one_event_an_array_and_ndjson_are_stored(worker: ApiWorker) -> None:
    status, _, body = post(worker, json.dumps(event("one-1")).encode())
    assert status == 200, body
    assert body == {"accepted": 1, "rejected": 0,
                    "results": [{"index": 0, "event_id": "one-1", "status": "accepted"}]}
    batch = [event(f"arr-{i}", tenant=f"tenant-{i % 3:05d}") for i in range(250)]
    status, _, body = post(worker, json.dumps(batch).encode())
    assert (status, body["accepted"]) == (200, 250)
    lines = [event(f"nd-{i}") for i in range(5)]
    status, _, body = post(worker, "\n".join(json.dumps(e) for e in lines).encode(),
                           "application/x-ndjson")
    assert (status, body["accepted"]) == (200, 5)
    ids = ["one-1"] + [e["event_id"] for e in batch + lines]
    assert stored(worker, ids) == len(ids)


def test_bad_items_are_answered_one_by_one_and_good_ones_stored(worker: ApiWorker) -> None:
    items = [event("mix-0"), event("mix-1", input_tokens=-3), event("mix-2", model="nope-9"),
             {"event_id": "mix-3"}, event("mix-4")]
    status, _, body = post(worker, json.dumps(items).encode())
    assert status == 207, body
    assert (body["accepted"], body["rejected"]) == (2, 3)
    got = [(r["index"], r["status"], r.get("reason_code")) for r in body["results"]]
    assert got == [(0, "accepted", None), (1, "rejected", "negative_tokens"),
                   (2, "rejected", "unknown_model"), (3, "rejected", "schema"),
                   (4, "accepted", None)]
    assert stored(worker, ["mix-0", "mix-4"]) == 2
    assert stored(worker, ["mix-1", "mix-2", "mix-3"], timeout=1) == 0
    status, _, body = post(worker, b'{"x": 1}\n{oops\n', "application/x-ndjson")
    assert status == 400  # nothing accepted
    assert [r["reason_code"] for r in body["results"]] == ["schema", "invalid_json"]


def test_a_resend_is_stored_once(worker: ApiWorker) -> None:
    batch = [event(f"again-{i}", tenant="tenant-00002") for i in range(20)]
    for _ in range(3):  # the client did not hear the answer, and resent
        status, _, body = post(worker, json.dumps(batch).encode())
        assert (status, body["accepted"]) == (200, 20)
    ids = [e["event_id"] for e in batch]
    assert stored(worker, ids) == 20
    time.sleep(2)  # the resends are metered after the first copy: give them time to land
    assert stored(worker, ids, timeout=0) == 20


def test_request_limits_and_rules(worker: ApiWorker) -> None:
    status, headers, body = post(worker, b" " * (MAX_REQUEST_BYTES + 1))
    assert status == 413 and body["reason_code"] == "too_large"
    status, _, body = post(worker, json.dumps([event("x")] * 10_001).encode())
    assert status == 413 and "10000" in body["error"]
    assert post(worker, json.dumps(event("tp")).encode(), "text/plain")[0] == 415
    assert post(worker, json.dumps(event("fh")).encode(),
                headers={"Host": f"evil.example:{worker.settings.web_port}"})[0] == 403
    assert post(worker, json.dumps(event("or")).encode(),
                headers={"Origin": "http://evil.example"})[0] == 403
    assert post(worker, json.dumps(event("na")).encode(), auth=False)[0] == 401
    assert post(worker, b"[]")[0] == 400
    assert post(worker, b"{nope")[0] == 400
    assert stored(worker, ["tp", "fh", "or", "na"], timeout=1) == 0


def test_beyond_the_in_flight_bound_is_429_with_retry_after(worker: ApiWorker) -> None:
    # requests whose body never comes hold their slot (and declared bytes) while being read
    port = worker.settings.web_port
    held = []
    try:
        for _ in range(32):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall((f"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                       f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                       "Content-Length: 1000\r\n\r\n{").encode())
            held.append(s)
        time.sleep(0.5)
        status, headers, body = post(worker, json.dumps(event("busy")).encode())
        assert status == 429, body
        assert headers["retry-after"] == "1"
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while post(worker, json.dumps(event("after")).encode())[0] != 200:
        assert time.monotonic() < deadline, "slots not released"
        time.sleep(0.2)
    assert stored(worker, ["after"]) == 1


def test_a_body_that_never_arrives_is_408_and_frees_its_slot(settings: Any) -> None:
    # a client trickling its body would otherwise hold an in-flight slot for ever
    import asyncio

    from aiohttp import web

    from pipeline.stream.topics import kafka_producer
    from pipeline.web.ingest import Ingest
    from tests.helpers import METER

    async def scenario() -> tuple[int, int]:
        async with kafka_producer(settings, "test ingest") as producer:
            async def send(key: bytes, value: bytes) -> Any:
                return await producer.send(settings.topic("usage-events"), value, key=key)

            ingest = Ingest(METER, now, send, read_timeout=0.5)
            app = web.Application()
            app.router.add_post("/api/events", ingest.handle)
            runner = web.AppRunner(app)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                             b"application/json\r\nContent-Length: 500\r\n\r\n[")
                await writer.drain()
                status_line = await asyncio.wait_for(reader.readline(), 10)
                writer.close()
                return int(status_line.split()[1]), ingest.gate.requests
            finally:
                await runner.cleanup()

    assert asyncio.run(scenario()) == (408, 0)
