"""Faust baselines for `tokenmeter bench`, each run in its own process.

floor: an agent that only counts messages with ``stream.take()`` (Faust's per-message cost).
naive: a straightforward per-event agent that decodes a Record and updates a windowed table.

Usage: python -m pipeline.benchmark.faust_baselines floor|naive BOOTSTRAP TOPIC N PARTITIONS
Prints one JSON line {"events_per_s": ...} measured from the first to the N-th event.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from datetime import timedelta


def main() -> None:
    import faust

    kind, bootstrap, topic_name, n, partitions = sys.argv[1:6]
    total = int(n)
    app = faust.App(
        f"bench-{kind}-{uuid.uuid4().hex[:6]}", broker=f"kafka://{bootstrap}", store="memory://",
        web_enabled=False, autodiscover=False, topic_partitions=int(partitions),
        consumer_auto_offset_reset="earliest", broker_session_timeout=6,
        broker_rebalance_timeout=6, broker_heartbeat_interval=1,
    )
    state = {"count": 0, "t0": 0.0}

    def done() -> None:
        elapsed = time.perf_counter() - state["t0"]
        print(json.dumps({"events_per_s": total / elapsed, "seconds": elapsed}), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    if kind == "floor":
        topic = app.topic(topic_name, value_type=bytes, value_serializer="raw")

        @app.agent(topic)
        async def floor(stream):  # type: ignore[no-untyped-def]
            async for batch in stream.take(2000, within=0.2):
                if not state["t0"]:
                    state["t0"] = time.perf_counter()
                state["count"] += len(batch)
                if state["count"] >= total:
                    done()
    else:

        class Usage(faust.Record, serializer="json"):
            event_id: str
            timestamp: str
            tenant_id: str
            model: str
            input_tokens: int = 0
            output_tokens: int = 0

        topic = app.topic(topic_name, value_type=Usage)
        table = app.Table("spend", default=int, partitions=int(partitions)).tumbling(
            timedelta(hours=1), expires=timedelta(hours=2))

        @app.agent(topic)
        async def naive(stream):  # type: ignore[no-untyped-def]
            async for event in stream:
                if not state["t0"]:
                    state["t0"] = time.perf_counter()
                table[event.tenant_id] += event.input_tokens + event.output_tokens
                state["count"] += 1
                if state["count"] >= total:
                    done()

    worker = faust.Worker(app, loglevel="ERROR", quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass


if __name__ == "__main__":
    main()
