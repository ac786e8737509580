"""End to end: `tokenmeter up` as a subprocess, traffic in, SQL out, clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ARTIFACTS, free_port, process_gone
from tests.helpers import now as clock_now

pytestmark = pytest.mark.e2e
TM = [sys.executable, "-m", "pipeline.cli"]


def _env(tmp: Path, kafka_port: int, web_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    env.update(TOKENMETER_KAFKA_BOOTSTRAP=f"127.0.0.1:{kafka_port}",
               TOKENMETER_WEB_PORT=str(web_port), TOKENMETER_DATA_DIR=str(tmp / "data"),
               TOKENMETER_PARTITIONS="4", TOKENMETER_CLOCK_START=clock_now().isoformat())
    return env


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _wait_count(env: dict[str, str], n: int, select: str = "count() AS n") -> list[dict]:
    """Rows of `tokenmeter query` over the ledger once it holds n events (or after 30 s)."""
    deadline = time.monotonic() + 30
    rows: list[dict] = []
    while time.monotonic() < deadline:
        q = subprocess.run([*TM, "query", "--format", "json",
                            f"SELECT {select} FROM tokenmeter.usage_events FINAL"],
                           env=env, capture_output=True, text=True, timeout=60)
        assert q.returncode == 0, q.stderr
        rows = json.loads(q.stdout)
        if rows[0]["n"] == n:
            break
        time.sleep(0.3)
    return rows


def test_up_simulate_query_stop(tmp_path: Path) -> None:
    kafka_port, web_port = free_port(), free_port()
    env = _env(tmp_path, kafka_port, web_port)
    started = time.monotonic()
    proc = subprocess.Popen([*TM, "up"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        seen_503 = False
        while time.monotonic() - started < 60:
            status = _health(web_port)
            seen_503 |= status == 503
            if status == 200:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        ready_s = time.monotonic() - started
        assert _health(web_port) == 200
        children = _children(proc.pid)
        assert children, "the embedded broker runs as a child"

        sim = subprocess.run([*TM, "simulate", "--tenants", "5", "--rate", "400",
                              "--duration", "1", "--seed", "3"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert sim.returncode == 0, sim.stderr
        bad = subprocess.run([*TM, "produce", "-"], env=env, capture_output=True, text=True,
                             input='{"event_id": "x"}\n', timeout=60)
        assert bad.returncode == 1 and "line 1: rejected: schema" in bad.stderr

        rows = _wait_count(env, 400, "count() AS n, sum(total_cost) AS cost")
        assert rows[0]["n"] == 400
        assert float(rows[0]["cost"]) > 0 and isinstance(rows[0]["cost"], str)

        drop = subprocess.run([*TM, "query", "DROP TABLE tokenmeter.usage_events"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert drop.returncode == 1
        assert drop.stderr.count("\n") == 1 and "read-only" in drop.stderr
        assert "Traceback" not in drop.stderr

        stop_started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        stop_s = time.monotonic() - stop_started
        assert all(process_gone(c) for c in children), "broker child left behind"
        for port in (kafka_port, web_port):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "up_timings.json").write_text(json.dumps(
            {"ready_s": round(ready_s, 2), "stop_s": round(stop_s, 2), "saw_503": seen_503}))
        # after the worker stopped, query opens the store directly and sees the same data
        q = subprocess.run([*TM, "query", "--format", "csv",
                            "SELECT count() FROM tokenmeter.usage_events FINAL"],
                           env=env, capture_output=True, text=True, timeout=60)
        assert q.returncode == 0, q.stderr
        assert q.stdout.splitlines() == ["count()", "400"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_taken_web_port_is_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        env = _env(tmp_path, free_port(), s.getsockname()[1])
        out = subprocess.run([*TM, "up"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert "web port" in out.stderr and "TOKENMETER_WEB_PORT" in out.stderr


def test_taken_kafka_port_is_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        env = _env(tmp_path, s.getsockname()[1], free_port())
        out = subprocess.run([*TM, "up"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "already in use" in out.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["worker", "--clickhouse", "ftp://x"], "unsupported scheme"),
        (["worker", "--kafka", "nope"], "TOKENMETER_KAFKA_BOOTSTRAP"),
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    env = _env(tmp_path, free_port(), free_port())
    out = subprocess.run([*TM, *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and fragment in out.stderr


def test_worker_with_unreachable_kafka_is_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path, free_port(), free_port())
    out = subprocess.run([*TM, "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "cannot reach Kafka" in out.stderr


def test_up_with_two_workers_meters_and_stops_every_child(tmp_path: Path) -> None:
    kafka_port, web_port, store_port = free_port(), free_port(), free_port()
    while web_port + 1 in (kafka_port, store_port):
        web_port = free_port()
    env = {**_env(tmp_path, kafka_port, web_port),
           "TOKENMETER_CLICKHOUSE_HTTP_PORT": str(store_port)}
    proc = subprocess.Popen([*TM, "up", "--workers", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (
                _health(web_port) == 200 and _health(web_port + 1) == 200):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        assert _health(web_port) == 200 and _health(web_port + 1) == 200
        children = _children(proc.pid)
        assert len(children) >= 3, "broker and two workers run as children"
        sim = subprocess.run([*TM, "simulate", "--tenants", "8", "--rate", "500",
                              "--duration", "1", "--seed", "4"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert sim.returncode == 0, sim.stderr
        # the data dir is held by `up` (it serves it), so query goes through a worker
        assert _wait_count(env, 500)[0]["n"] == 500
        # the workers metered through a store that serves no one without this run's credential
        credential = tmp_path / "data" / "clickhouse-http.credential"
        assert stat.S_IMODE(credential.stat().st_mode) == 0o600
        secret = credential.read_text().strip()
        drop = urllib.request.Request(f"http://127.0.0.1:{store_port}/?query="
                                      "DROP%20TABLE%20tokenmeter.usage_events")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(drop, timeout=10)  # noqa: S310
        assert refused.value.code == 401
        assert _wait_count(env, 500)[0]["n"] == 500
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        output = proc.stdout.read() if proc.stdout else ""
        assert "served at" in output and secret not in output
        assert not credential.exists(), "the credential outlived the run"
        assert all(process_gone(c) for c in children), "a child outlived `up`"
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", store_port)) != 0, "store port still open"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
