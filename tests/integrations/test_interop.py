"""Producers that are not our SDK: kcat (C, librdkafka) and LiteLLM's callback, both metered
by a real worker on the real embedded broker."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import litellm  # conftest points it at its bundled price map: no network here
import pytest

from pipeline.integrations.litellm import TokenmeterCallback
from pipeline.sdk import UsageProducer
from pipeline.settings import Settings
from tests.helpers import now as clock_now
from tests.helpers import (
    produce,
    query,
    start_worker,
    wait_events,
    wait_ready,
)

pytestmark = pytest.mark.integration


def librdkafka_dir(tmp_path: Path) -> Path:
    """A directory holding a librdkafka >= 2.2 as librdkafka.so.1 (from confluent-kafka's wheel).

    Debian bookworm's librdkafka 2.0.2 mis-skips KIP-482 tagged fields (fixed upstream in
    librdkafka PR #4278) and the embedded broker sends them, so kcat needs a newer library.
    """
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    lib = next(libs.glob("librdkafka-*.so*"))
    out = tmp_path / "rdkafka"
    out.mkdir()
    (out / "librdkafka.so.1").symlink_to(lib)
    return out


def kcat(settings: Settings, libdir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    binary = shutil.which("kcat")
    assert binary, "kcat missing: `make test` installs Debian's kcat (make system-deps)"
    return subprocess.run([binary, "-b", settings.kafka_bootstrap, *args], input=stdin,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LD_LIBRARY_PATH": str(libdir)})


def event(tenant: str, **counts: int) -> dict:
    stamp = clock_now() - timedelta(minutes=1)
    return {"event_id": str(uuid.uuid4()), "timestamp": stamp.isoformat(), "tenant_id": tenant,
            "provider": "openai", "model": "gpt-4o-mini", **counts}


async def acompletion_then_callbacks(**kwargs: object) -> Any:
    """litellm.acompletion, then let the success callbacks it scheduled on this loop run."""
    response = await litellm.acompletion(**kwargs)
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.wait(pending, timeout=10) if pending else None
    return response


def test_kcat_and_litellm_events_are_metered(settings: Settings, tmp_path: Path) -> None:
    asyncio.run(produce(settings, []))  # topics exist before kcat's producer looks them up
    # LiteLLM stamps its events with the wall clock (its call's end time): so does this
    # worker's clock; nothing here depends on the date (kcat's events are pinned-clock old)
    worker = start_worker(settings, wall_clock=True)
    try:
        wait_ready(settings, worker)
        libdir = librdkafka_dir(tmp_path)
        single = event("kcat-a", input_tokens=1000, output_tokens=100)
        envelope = [event("kcat-b", input_tokens=10, output_tokens=5) for _ in range(3)]
        lines = f"kcat-a|{json.dumps(single)}\nkcat-b|{json.dumps(envelope)}\nkcat-a|{{not json\n"
        sent = kcat(settings, libdir, "-P", "-t", settings.topic("usage-events"), "-K", "|",
                    stdin=lines)
        assert sent.returncode == 0, sent.stderr

        callback = TokenmeterCallback(
            UsageProducer(settings.kafka_bootstrap, topic=settings.topic("usage-events")))
        litellm.callbacks = [callback]
        try:
            first = litellm.completion(model="gpt-4o", mock_response="Hello from a mock",
                                       messages=[{"role": "user", "content": "Say hello"}],
                                       metadata={"tenant_id": "llm-a", "feature": "greeting"})
            second = asyncio.run(acompletion_then_callbacks(
                model="anthropic/claude-3-5-sonnet-20241022", mock_response="Hi",
                messages=[{"role": "user", "content": "Hi"}], user="llm-b"))
            got = wait_events(settings, 6)
        finally:
            litellm.callbacks = []
            callback.recorder.close()  # type: ignore[attr-defined]
        assert got == 6, f"{got} of 6 events metered"
        rows = query(settings, "SELECT tenant_id, model, input_tokens, output_tokens, feature "
                               "FROM tokenmeter.usage_events FINAL ORDER BY tenant_id, event_id")
        by_tenant: dict[str, list] = {}
        for tenant, model, inp, out, feature in rows:
            by_tenant.setdefault(tenant, []).append((model, int(inp), int(out), feature))
        assert by_tenant["kcat-a"] == [("gpt-4o-mini", 1000, 100, "")]
        assert by_tenant["kcat-b"] == [("gpt-4o-mini", 10, 5, "")] * 3
        # LiteLLM's own usage numbers, not ours
        assert by_tenant["llm-a"] == [("gpt-4o", first.usage.prompt_tokens,
                                       first.usage.completion_tokens, "greeting")]
        assert by_tenant["llm-b"] == [("claude-3-5-sonnet-20241022", second.usage.prompt_tokens,
                                       second.usage.completion_tokens, "")]
        assert callback.recorded == 2 and callback.skipped == 0
        deadline = time.monotonic() + 30
        while not (dlq := query(settings, "SELECT reason_code FROM tokenmeter.dlq_events")):
            assert time.monotonic() < deadline, "the malformed kcat message never reached the DLQ"
            time.sleep(0.3)
        assert dlq == [["invalid_json"]]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
