"""Shared test helpers: the pinned clock every test reads instead of the wall clock.

The suite never depends on when it runs. ``NOW`` is a fixed instant (override with
``TOKENMETER_TEST_NOW`` to run date-sensitive tests at a month end, a year end or a DST
change: ``make test-clocks``); worker subprocesses get the same instant as
``TOKENMETER_CLOCK_START`` and their clock runs on from it, like ``now()`` here.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.core.catalog import load_catalog
from pipeline.core.events import PricedUsage, UsageEvent
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.core.simulate import Simulator
from pipeline.store.client import Store
from pipeline.store.sink import Sink
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage

DEFAULT_NOW = "2026-06-17T10:20:30+00:00"
# the instants `make test-clocks` runs the date-sensitive tests at (UTC): just after a month
# starts (and a year), the last minutes of a year, and both (US) DST change days
CLOCKS = (
    "2027-01-01T00:05:00+00:00",
    "2026-12-31T23:55:00+00:00",
    "2026-03-08T07:30:00+00:00",
    "2026-11-01T06:30:00+00:00",
)


def pinned_now() -> datetime:
    """The suite's fixed "now" (whole seconds, UTC)."""
    raw = (os.environ.get("TOKENMETER_TEST_NOW") or DEFAULT_NOW).replace("Z", "+00:00")
    value = datetime.fromisoformat(raw)
    if value.tzinfo is None:
        raise ValueError(f"TOKENMETER_TEST_NOW needs a timezone: {raw!r}")
    return value.astimezone(timezone.utc).replace(microsecond=0)


NOW = pinned_now()
HOUR = NOW.replace(minute=0, second=0)  # recent traffic: the previous and the current hour
METER = Meter(load_catalog(), load_policy())


class DefectiveMeter(Meter):
    """A Meter with a defect on the event ``poison``: an exception no reason code names
    (a fault validation cannot be made to raise for real)."""

    def price(self, event: UsageEvent) -> PricedUsage:
        """Raise for ``poison``; price the rest."""
        if event.event_id == "poison":
            raise RuntimeError("boom")
        return super().price(event)
_ORIGIN = time.monotonic()


def now() -> datetime:
    """The pinned clock, running on with real time (what a worker started with NOW reads)."""
    return NOW + timedelta(seconds=time.monotonic() - _ORIGIN)


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def process_gone(pid: int) -> bool:
    """True when the process has exited (a zombie counts: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line for line in f)
    except FileNotFoundError:
        return True


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# a real `tokenmeter worker` subprocess and its HTTP API

def subprocess_env(settings: Any) -> dict[str, str]:
    """Environment for a `tokenmeter` subprocess using ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    env.update({
        "TOKENMETER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TOKENMETER_DATA_DIR": str(settings.data_dir),
        "TOKENMETER_WEB_PORT": str(settings.web_port),
        "TOKENMETER_TOPIC_PREFIX": settings.topic_prefix,
        "TOKENMETER_APP_ID": settings.app_id,
        "TOKENMETER_PARTITIONS": str(settings.partitions),
        # the worker's clock starts at the suite's pinned instant, never the wall clock's date
        "TOKENMETER_CLOCK_START": now().isoformat(),
    })
    return env


def start_worker(settings: Any, *, wall_clock: bool = False) -> subprocess.Popen:
    """A worker subprocess on the pinned clock (``wall_clock``: for producers that stamp
    events with the wall clock themselves, such as LiteLLM's callback)."""
    env = subprocess_env(settings)
    if wall_clock:
        del env["TOKENMETER_CLOCK_START"]
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"],
                            env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def get(settings: Any, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{settings.web_url}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}
    except OSError:
        return 0, {}


def http(settings: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One JSON request to a worker's API: (status, decoded answer), errors included."""
    req = urllib.request.Request(f"{settings.web_url}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class MeteringRecorder:
    """A producer double that meters what it is asked to record, as the pipeline would."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.priced: list[PricedUsage] = []

    def record(self, *, tenant_id: str, provider: str, model: str,
               input_tokens: int | None = None, output_tokens: int | None = None,
               **fields: Any) -> str:
        event = {"tenant_id": tenant_id, "provider": provider, "model": model,
                 "input_tokens": input_tokens, "output_tokens": output_tokens, **fields}
        self.priced.append(METER.meter_object(event, now=self.now))
        return str(fields["event_id"])


def query(settings: Any, sql: str) -> list[list]:
    req = urllib.request.Request(f"{settings.web_url}/api/query",
                                 data=json.dumps({"sql": sql}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["rows"]


def wait_ready(settings: Any, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get(settings, "/health")[0] == 200:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        time.sleep(0.1)
    raise AssertionError("worker not ready")


async def produce(settings: Any, messages: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    from pipeline.stream.topics import ensure_topics

    await ensure_topics(settings)
    p = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await p.start()
    try:
        for k, v in messages:
            await p.send(settings.topic("usage-events"), v, key=k)
        await p.flush()
    finally:
        await p.stop()


def wait_events(settings: Any, n: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        got = int(query(settings, "SELECT count() FROM tokenmeter.usage_events FINAL")[0][0])
        if got >= n:
            return got
        time.sleep(0.3)
    return got




class ApiWorker:
    """A `tokenmeter worker` subprocess and raw HTTP calls to it (every header is the caller's).

    Used by the HTTP API security and fuzz tests, which need to send what a browser or a
    stray client sends: a foreign ``Host``, ``text/plain`` bodies, an ``Origin``.
    """

    def __init__(self, settings: Any, env: dict[str, str]) -> None:
        self.settings = settings
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.token: str | None = env.get("TOKENMETER_API_TOKEN")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /health says ready; raises with the worker's stderr if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(self.proc.stderr.read() if self.proc.stderr else "exited")
            try:
                if self.call("GET", "/health", json_type=False)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("worker not ready")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def call(self, method: str, path: str, body: Any = None, *,
             headers: dict[str, str] | None = None, raw: bytes | None = None,
             json_type: bool = True, auth: bool = True,
             timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        """One request; ``Host`` is 127.0.0.1:port unless ``headers`` say otherwise."""
        import http.client
        import json

        conn = http.client.HTTPConnection("127.0.0.1", self.settings.web_port, timeout=timeout)
        sent = {"Host": f"127.0.0.1:{self.settings.web_port}"}
        if json_type:
            sent["Content-Type"] = "application/json"
        if auth and self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        sent.update(headers or {})
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in sent.items():
                conn.putheader(k, v)
            conn.putheader("Content-Length", str(len(data or b"")))
            conn.endheaders(data)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        """(status, decoded JSON answer or None)."""
        import json

        status, _, data = self.call(method, path, body, **kw)
        return status, json.loads(data) if data else None

    def sql(self, sql: str) -> list[list[Any]]:
        """Rows of a read-only query through POST /api/query."""
        status, answer = self.json("POST", "/api/query", {"sql": sql})
        assert status == 200, answer
        rows: list[list[Any]] = answer["rows"]
        return rows

    def budgets(self) -> list[dict[str, Any]]:
        """GET /api/budgets."""
        status, answer = self.json("GET", "/api/budgets")
        assert status == 200, answer
        items: list[dict[str, Any]] = answer["budgets"]
        return items


# traffic and truths shared by the worker tests

async def read_dlq(settings: Any, n: int) -> list[dict]:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(settings.topic("usage-events-dlq"), bootstrap_servers=settings.kafka_bootstrap,
                         auto_offset_reset="earliest", group_id=None)
    await c.start()
    out: list[dict] = []
    try:
        deadline = time.monotonic() + 30
        while len(out) < n and time.monotonic() < deadline:
            for msgs in (await c.getmany(timeout_ms=500)).values():
                out += [json.loads(m.value) for m in msgs]
    finally:
        await c.stop()
    return out


def make_traffic(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    sim = Simulator(tenants=8, seed=seed)
    now_ = now()
    return [sim.event(now_ - timedelta(seconds=rng.randint(0, 1200))) for _ in range(n)]


def truth(events: list[dict]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = defaultdict(Decimal)
    now_ = now()
    for e in events:
        out[e["tenant_id"]] += METER.meter_object(e, now=now_).total_cost
    return dict(out)


# the in-process metering step on the real chDB store

def make_processor(store: Store, max_ids: int = 100_000) -> tuple[Processor, list[bytes]]:
    published: list[bytes] = []

    async def publish(key: str | None, value: bytes) -> None:
        published.append(value)

    live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=max_ids)
    return Processor(METER, Sink(store), store, live, publish, clock=lambda: NOW), published


def traffic(seed: int = 1, n: int = 600) -> tuple[list[dict], list[dict]]:
    """On-time events (previous and current hour) and a few old (late) ones."""
    rng = random.Random(seed)
    sim = Simulator(tenants=6, seed=seed, text_share=0.05)
    # both hour windows stay open: the previous one closes at HOUR + grace (1 h), after
    # every timestamp here, whatever the wall-clock minute is when the test runs
    recent = [sim.event(HOUR + timedelta(seconds=rng.randint(-3600, 3599))) for _ in range(n)]
    old = [sim.event(NOW - timedelta(days=3, seconds=rng.randint(0, 3600))) for _ in range(20)]
    return recent, old


def partition_of(e: dict, partitions: int = 4) -> int:
    return int(e["tenant_id"].rsplit("-", 1)[-1]) % partitions


def messages(events: list[dict]) -> list[RawMessage]:
    out = []
    offsets: Counter[int] = Counter()
    for e in events:
        p = partition_of(e)
        out.append(RawMessage(json.dumps(e).encode(), "usage-events", p, offsets[p]))
        offsets[p] += 1
    return out


async def read_all(settings: Any, n: int) -> list:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(settings.topic("usage-events"), bootstrap_servers=settings.kafka_bootstrap,
                         auto_offset_reset="earliest", group_id=None)
    await c.start()
    out = []
    try:
        while sum(len(v) if isinstance(v, list) else 1 for _, v in out) < n:
            for msgs in (await c.getmany(timeout_ms=1000)).values():
                out += [(m.key.decode(), json.loads(m.value)) for m in msgs]
    finally:
        await c.stop()
    return out
