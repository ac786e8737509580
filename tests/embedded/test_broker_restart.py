"""Fault: the embedded broker restarts (its memory, topics and offsets are gone)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from pipeline.settings import load_settings
from tests.helpers import (
    free_port,
    get,
    make_traffic,
    produce,
    query,
    subprocess_env,
    truth,
    wait_events,
    wait_ready,
)

pytestmark = pytest.mark.integration


def test_worker_survives_broker_restart(tmp_path, topic_prefix: str) -> None:
    port = free_port()
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{port}",
                             data_dir=str(tmp_path / "data"), web_port=free_port(),
                             topic_prefix=topic_prefix, app_id="restart", partitions=4)
    env = subprocess_env(settings)

    def broker() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "broker"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    b = broker()
    time.sleep(1.0)
    worker = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(settings, worker)
        first, second = make_traffic(500, seed=21), make_traffic(500, seed=22)
        asyncio.run(produce(settings, [(e["tenant_id"].encode(), json.dumps(e).encode())
                                       for e in first]))
        assert wait_events(settings, 500) == 500
        b.send_signal(signal.SIGTERM)
        b.wait(10)
        time.sleep(3.0)  # the worker sees the broker gone, keeps serving its API
        assert get(settings, "/health")[0] == 200
        b = broker()
        time.sleep(1.5)
        # a producer recreates the topics (the SDK/CLI do); the worker re-joins and reads on
        msgs = [(e["tenant_id"].encode(), json.dumps(e).encode()) for e in second + first[:100]]
        asyncio.run(produce(settings, msgs))
        assert wait_events(settings, 1000, timeout=90) == 1000
        time.sleep(1.0)
        rows = query(settings, "SELECT tenant_id, sum(total_cost) FROM tokenmeter.usage_events "
                               "FINAL GROUP BY tenant_id")
        assert {t: Decimal(c) for t, c in rows} == truth(first + second)
        raw = int(query(settings, "SELECT count() FROM tokenmeter.usage_events")[0][0])
        assert raw == 1000  # the 100 re-sent old events were recognised as duplicates
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        b.send_signal(signal.SIGTERM)
        b.wait(10)
