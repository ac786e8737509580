"""`tokenmeter ingest`, the standalone process, against the real embedded broker."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.embedded.broker import EmbeddedBroker
from pipeline.settings import Settings, load_settings
from tests.helpers import free_port, now, start_worker, subprocess_env, wait_events, wait_ready

pytestmark = pytest.mark.integration
TOKEN = "standalone-ingest-token"  # noqa: S105 - a test credential


def event(eid: str, tenant: str = "tenant-00003") -> dict[str, Any]:
    return {"event_id": eid, "timestamp": (now() - timedelta(seconds=3)).isoformat(),
            "tenant_id": tenant, "provider": "anthropic", "model": "claude-3-5-haiku-20241022",
            "input_tokens": 2000, "output_tokens": 300}


def start_ingest(settings: Settings, port: int, *extra: str,
                 token: str | None = TOKEN) -> subprocess.Popen[str]:
    env = subprocess_env(settings)
    if token:
        env["TOKENMETER_API_TOKEN"] = token
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "ingest", "--listen",
                             f"127.0.0.1:{port}", *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def post(port: int, body: bytes, headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/api/events", body=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}",
            **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        return (resp.status, {k.lower(): v for k, v in resp.getheaders()},
                json.loads(data) if data else None)
    finally:
        conn.close()


def wait_listening(proc: subprocess.Popen[str], port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read() if proc.stderr else "exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("ingest not listening")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture()
def ingest_port() -> int:
    return free_port()


def test_the_standalone_process_feeds_a_worker(settings: Settings, ingest_port: int) -> None:
    worker = start_worker(settings)
    ingest = start_ingest(settings, ingest_port)
    try:
        wait_ready(settings, worker)
        wait_listening(ingest, ingest_port)
        batch = [event(f"sa-{i}", tenant=f"tenant-{i % 4:05d}") for i in range(40)]
        status, _, body = post(ingest_port, json.dumps(batch).encode())
        assert (status, body["accepted"]) == (200, 40), body
        lines = "\n".join(json.dumps(event(f"sa-nd-{i}")) for i in range(10)) + "\n{bad"
        status, _, body = post(ingest_port, lines.encode(),
                               {"Content-Type": "application/x-ndjson"})
        assert (status, body["accepted"], body["rejected"]) == (207, 10, 1)
        assert body["results"][-1]["reason_code"] == "invalid_json"
        # the same rules as the worker's API: token, Host, content type
        assert post(ingest_port, json.dumps(event("x")).encode(),
                    {"Authorization": "Bearer wrong"})[0] == 401
        assert post(ingest_port, json.dumps(event("x")).encode(),
                    {"Host": "evil.example"})[0] == 403
        assert post(ingest_port, json.dumps(event("x")).encode(),
                    {"Content-Type": "text/plain"})[0] == 415
        assert wait_events(settings, 50, timeout=60) == 50
    finally:
        stop(ingest)
        stop(worker)


def test_beyond_loopback_it_needs_a_token(settings: Settings, ingest_port: int) -> None:
    env = subprocess_env(settings)
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", "--listen",
                          f"0.0.0.0:{ingest_port}"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert "TOKENMETER_API_TOKEN" in out.stderr


@pytest.fixture()
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker("127.0.0.1", free_port(), log_path=tmp_path / "broker.log")
    b.start()
    yield b
    b.stop()


def test_kafka_gone_is_503_with_retry_after(own_broker: EmbeddedBroker, tmp_path: Path,
                                            ingest_port: int) -> None:
    prefix = f"g{uuid.uuid4().hex[:6]}-"
    settings = load_settings(kafka_bootstrap=own_broker.bootstrap, topic_prefix=prefix,
                             data_dir=str(tmp_path / "data"), web_port=free_port(),
                             app_id=f"tm-{prefix}", partitions=2)
    ingest = start_ingest(settings, ingest_port, "--ack-timeout", "2")
    try:
        wait_listening(ingest, ingest_port)
        assert post(ingest_port, json.dumps(event("up-1")).encode())[0] == 200
        own_broker.stop()
        started = time.monotonic()
        status, headers, body = post(ingest_port, json.dumps(event("down-1")).encode())
        assert status == 503, body
        assert headers["retry-after"] == "5"
        assert "resend" in body["error"]
        assert time.monotonic() - started < 10  # bounded by --ack-timeout, not hanging
    finally:
        stop(ingest)
