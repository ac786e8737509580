"""sdk.reserve against a stand-in worker on loopback: what it sends and when it releases.

Inside ``meter_run`` a reservation (and a decision) names the run as the run's events do, so
a run budget applies to it (#18 review 3). Leaving a block releases the hold after the
events recorded inside are counted: the worker keeps the rest held for calls still in
flight (review 8c).
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from pipeline.errors import ValidationFailed
from pipeline.sdk import AsyncUsageProducer, decide, meter_run, reserve
from tests.helpers import NOW

ALLOW = {"decision": "allow", "model": "gpt-4o", "reservation_id": "r-1", "tenant_id": "acme"}


class Worker(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, Any]] = []
    script: list[int] = []  # statuses to answer first, in turn (then each route's own)

    def answer(self, status: int, body: dict[str, Any]) -> None:
        if self.script:
            status = self.script.pop(0)
            if status != 200:
                body = {"error": "the owner of tenant acme is not known yet, retry"}
        out = json.dumps(body).encode()
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, body))
        self.answer(200, ALLOW)

    def do_DELETE(self) -> None:  # noqa: N802
        self.seen.append(("DELETE", self.path, None))
        self.answer(200, {"released": "r-1"})

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append(("GET", self.path, None))
        self.answer(200, {"decision": "allow"})

    def log_message(self, *args: Any) -> None:
        pass


SCRIPT: list[int] = []


@pytest.fixture
def worker() -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    seen: list[tuple[str, str, Any]] = []
    SCRIPT.clear()
    handler = type("W", (Worker,), {"seen": seen, "script": SCRIPT})
    srv = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}", seen
    finally:
        srv.shutdown()
        thread.join(5)


def body_of(seen: list[tuple[str, str, Any]]) -> dict[str, Any]:
    posted: dict[str, Any] = next(b for m, _, b in seen if m == "POST")
    return posted


def test_a_reservation_inside_a_run_names_the_run(worker: Any) -> None:
    url, seen = worker
    with meter_run("run-42"), reserve(url, tenant_id="acme", model="gpt-4o",
                                      estimated_input_tokens=1000,
                                      estimated_output_tokens=100):
        pass
    body = body_of(seen)
    assert (body["trace_id"], body["attributes"]) == ("run-42", {"run_id": "run-42"})
    # the caller's own keys win; outside a run nothing is added
    seen.clear()
    with meter_run("run-42"), reserve(url, tenant_id="acme", model="gpt-4o",
                                      estimated_input_tokens=1, estimated_output_tokens=0,
                                      trace_id="t-1", attributes={"run_id": "mine", "k": "v"}):
        pass
    assert (body_of(seen)["trace_id"], body_of(seen)["attributes"]) == (
        "t-1", {"run_id": "mine", "k": "v"})
    seen.clear()
    with reserve(url, tenant_id="acme", model="gpt-4o", estimated_input_tokens=1,
                 estimated_output_tokens=0):
        pass
    assert "trace_id" not in body_of(seen) and "attributes" not in body_of(seen)
    seen.clear()
    with meter_run("run-7"):
        decide(url, tenant_id="acme", model="gpt-4o", estimated_input_tokens=1,
               estimated_output_tokens=0)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(seen[0][1]).query)
    assert (query["trace_id"], query["attr.run_id"]) == (["run-7"], ["run-7"])


class Kafka:
    """Stands in for aiokafka's producer: every send is acked at once."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def deletes(seen: list[tuple[str, str, Any]]) -> list[dict[str, list[str]]]:
    return [urllib.parse.parse_qs(urllib.parse.urlsplit(p).query)
            for m, p, _ in seen if m == "DELETE"]


def test_leaving_a_block_releases_after_its_events(worker: Any) -> None:
    url, seen = worker
    meter = AsyncUsageProducer("unused:9092", clock=lambda: NOW)
    meter._producer = Kafka()

    async def block(calls: int, bad: bool = False) -> None:
        with reserve(url, tenant_id="acme", model="gpt-4o", estimated_input_tokens=1000,
                     estimated_output_tokens=100) as r:
            for _ in range(calls):
                await meter.record(tenant_id="acme", provider="openai", model=r.model,
                                   input_tokens=400, output_tokens=40)
            if bad:  # refused at the call site: never sent, so never counted
                with pytest.raises(ValidationFailed):
                    await meter.record(tenant_id="acme", provider="openai", model=r.model,
                                       input_tokens=-1)
        await meter.flush()

    asyncio.run(block(2, bad=True))
    sent = [json.loads(v) for v in meter._producer.sent]
    events = [e for batch in sent for e in (batch if isinstance(batch, list) else [batch])]
    assert [e["reservation_id"] for e in events] == ["r-1", "r-1"]
    # the worker keeps what is left of the hold until both events are counted
    assert deletes(seen) == [{"tenant_id": ["acme"], "after_events": ["2"]}]
    seen.clear()
    asyncio.run(block(0))
    assert deletes(seen) == [{"tenant_id": ["acme"]}]  # no event: released at once


def test_a_503_while_the_owner_is_not_known_is_retried(worker: Any) -> None:
    url, seen = worker
    SCRIPT.extend([503, 503])
    r = reserve(url, tenant_id="acme", model="gpt-4o", estimated_input_tokens=10,
                estimated_output_tokens=5)
    assert r.reservation_id == "r-1"
    assert [m for m, _, _ in seen] == ["POST", "POST", "POST"]


def test_a_503_that_lasts_is_raised(worker: Any) -> None:
    url, seen = worker
    SCRIPT.extend([503] * 10)
    with pytest.raises(urllib.error.HTTPError):
        reserve(url, tenant_id="acme", model="gpt-4o", estimated_input_tokens=10,
                estimated_output_tokens=5)
    assert len(seen) == 4


def test_leaving_a_block_never_raises_when_the_release_fails(worker: Any) -> None:
    url, seen = worker
    r = reserve(url, tenant_id="acme", model="gpt-4o", estimated_input_tokens=10,
                estimated_output_tokens=5)
    SCRIPT.append(503)
    with r:
        pass  # the model call was made and paid for: its result must reach the caller
    assert [m for m, _, _ in seen] == ["POST", "DELETE"]
    gone = reserve(url, tenant_id="acme", model="gpt-4o", estimated_input_tokens=10,
                   estimated_output_tokens=5)
    gone._url = "http://127.0.0.1:9"  # nothing listens there: connection refused
    with gone:
        pass
    assert gone.release() is False
