"""Sample a real worker with py-spy while it works through pre-loaded messages.

Usage: .venv/bin/python -m pipeline.benchmark.profile_worker [N_EVENTS] [ENVELOPE_SIZE] [SECONDS]
Prints the functions with the most samples (own time) and per-thread totals; the raw
collapsed stacks go to $TMPDIR/tm-worker-profile.txt.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from pipeline.benchmark.throughput import (
    _metrics,
    envelope_messages,
    free_port,
    make_events,
    preload,
    single_messages,
)
from pipeline.embedded.broker import EmbeddedBroker


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 60_000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    out = Path(tempfile.gettempdir()) / "tm-worker-profile.txt"
    broker = EmbeddedBroker("127.0.0.1", free_port(),
                            log_path=Path(tempfile.gettempdir()) / "tm-prof-broker.log")
    broker.start()
    try:
        events = make_events(n)
        msgs = single_messages(events) if size == 1 else envelope_messages(events, size)
        asyncio.run(preload(broker.bootstrap, "p-usage-events", msgs, 4))
        port = free_port()
        with tempfile.TemporaryDirectory() as data:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
            env.update(TOKENMETER_KAFKA_BOOTSTRAP=broker.bootstrap, TOKENMETER_DATA_DIR=data,
                       TOKENMETER_WEB_PORT=str(port), TOKENMETER_TOPIC_PREFIX="p-",
                       TOKENMETER_APP_ID="prof", TOKENMETER_PARTITIONS="4")
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env)
            try:
                while True:
                    try:
                        if _metrics(f"http://127.0.0.1:{port}").get(
                                "tokenmeter_events_total", 0) > 0:
                            break
                    except OSError:
                        pass
                    time.sleep(0.05)
                # --gil: only samples that hold the GIL, i.e. where Python time goes
                spy = str(Path(sys.executable).parent / "py-spy")
                subprocess.run([spy, "record", "-p", str(proc.pid), "-d", str(seconds), "-f",
                                "raw", "-o", str(out), "-r", "100", "--threads", "--gil",
                                "--nonblocking"], check=True, capture_output=True)
                done = _metrics(f"http://127.0.0.1:{port}")["tokenmeter_events_total"]
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    finally:
        broker.stop()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        c = int(count)
        total += c
        threads[frames[0]] += c
        own[frames[-1]] += c
        mine = [f for f in frames if "pipeline/" in f]
        if mine:
            ours[mine[0]] += c
    print(f"{done:.0f} events stored; {total} samples")
    print("\nper thread:")
    for name, c in threads.most_common(6):
        print(f"  {c / total:6.1%}  {name}")
    print("\nown time:")
    for name, c in own.most_common(30):
        print(f"  {c / total:6.1%}  {name}")
    print("\nentered our code at:")
    for name, c in ours.most_common(12):
        print(f"  {c / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
