"""Scale-out on one machine: the embedded store over HTTP, two workers in one group."""

from __future__ import annotations

import base64
import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.core.simulate import Simulator
from pipeline.settings import Settings, load_settings
from pipeline.store.client import Store, open_store
from pipeline.store.migrations import migrate
from pipeline.store.sink import USAGE_COLUMNS
from tests.helpers import free_port, get, produce, subprocess_env
from tests.helpers import now as clock_now

pytestmark = pytest.mark.integration
METER = Meter(load_catalog(), load_policy())


class Served(NamedTuple):
    """A running `tokenmeter clickhouse`: where it listens, its credential, its data dir."""

    dsn: str
    password: str
    data: Path


def _start_served(data: Path) -> tuple[subprocess.Popen[str], str]:
    """`tokenmeter clickhouse` over ``data`` in a subprocess, answering /ping; (proc, dsn)."""
    port = free_port()
    # stderr to a file: read at any time, and DEBUG logs every request it gets
    with open(data / "stderr.log", "a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "clickhouse", "--listen",
             f"127.0.0.1:{port}", "--log-level", "DEBUG"],
            env={**subprocess_env(load_settings()), "TOKENMETER_DATA_DIR": str(data)},
            stdout=subprocess.DEVNULL, stderr=err, text=True)
    dsn = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{dsn}/ping", timeout=2) as r:  # noqa: S310
                assert r.read() == b"Ok.\n"
                return proc, dsn
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((data / "stderr.log").read_text()) from None
            time.sleep(0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`tokenmeter clickhouse` in a subprocess (this process already embeds another chDB)."""
    data = tmp_path_factory.mktemp("served")
    proc, dsn = _start_served(data)
    credential = data / "clickhouse-http.credential"
    yield Served(dsn, credential.read_text().strip(), data)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def test_restarted_served_store_keeps_its_credential(tmp_path: Path) -> None:
    """Workers still running keep working when a standalone served store restarts.

    A new credential per start failed every worker request with 516 (terminal to the sink).
    """
    import stat

    credential = tmp_path / "clickhouse-http.credential"
    proc, dsn = _start_served(tmp_path)
    password = credential.read_text().strip()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600
    proc, dsn = _start_served(tmp_path)
    try:
        worker = open_store(load_settings(clickhouse_dsn=dsn, clickhouse_password=password,
                                          data_dir=str(tmp_path / "w")))
        assert worker.rows("SELECT 1") == [(1,)]
        worker.close()
        assert password not in (tmp_path / "stderr.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.fixture()
def http_store(served: Served, tmp_path: Path) -> Iterator[Store]:
    db = f"t_{time.monotonic_ns()}"
    store = open_store(load_settings(clickhouse_dsn=served.dsn, clickhouse_database=db,
                                     clickhouse_password=served.password,
                                     data_dir=str(tmp_path)))
    migrate(store)
    yield store
    store.command(f"DROP DATABASE IF EXISTS {db}")
    store.close()


def test_clickhouse_connect_talks_to_the_served_store(http_store: Store) -> None:
    now = clock_now()
    p = METER.meter_object(Simulator(tenants=1, seed=3, text_share=0.0).event(now), now=now)
    from pipeline.store.sink import usage_row

    row = usage_row(p, late=False, partition=0, offset=1, ingested_at=now)
    token = {"insert_deduplication_token": "t-1",
             "deduplicate_blocks_in_dependent_materialized_views": 1}
    for _ in range(2):  # a retried insert with the same token lands once, rollups included
        http_store.insert("usage_events", [row], USAGE_COLUMNS, settings=token)
    db = http_store.database
    assert http_store.rows(f"SELECT event_id, total_cost, timestamp FROM {db}.usage_events") == [
        (p.event_id, p.total_cost, p.timestamp.replace(  # naive UTC, milliseconds, as chDB
            tzinfo=None, microsecond=p.timestamp.microsecond // 1000 * 1000))]
    assert http_store.rows(f"SELECT sum(events) FROM {db}.usage_hourly") == [(1,)]
    assert http_store.rows("SELECT {t:String}, {n:UInt8}",
                           parameters={"t": "a'b\tc", "n": 7}) == [("a'b\tc", 7)]
    with pytest.raises(Exception, match="UNKNOWN_TABLE|Code: 60"):
        http_store.rows(f"SELECT * FROM {db}.nope")
    ro = http_store.readonly({"max_execution_time": 5})
    assert ro.rows("SELECT getSetting('readonly')") == [(1,)]
    with pytest.raises(Exception, match="readonly|READONLY"):
        ro.command(f"INSERT INTO {db}.usage_daily (tenant_id) VALUES ('x')")
    # the read-only session does not leak into the writer's
    assert http_store.rows("SELECT getSetting('readonly')") == [(0,)]


def _raw(served: Served, sql: str, *, method: str = "POST", password: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body) of one request to the served store, as any local program could send."""
    import base64
    from urllib.parse import quote

    url = f"{served.dsn}/?query={quote(sql)}" if method == "GET" else f"{served.dsn}/"
    req = urllib.request.Request(url, method=method,
                                 data=sql.encode() if method == "POST" else None)
    if password is not None:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(f"default:{password}".encode()).decode())
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_served_store_cannot_be_driven_by_a_web_page(served: Served, http_store: Store,
                                                      tmp_path: Path) -> None:
    db, pw = http_store.database, served.password
    table = f"{db}.usage_events"
    exists = f"SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'usage_events'"
    assert _raw(served, exists, method="GET", password=pw) == (200, "1\n")

    # <img src="http://127.0.0.1:8123/?query=DROP TABLE ...">: no credential
    assert _raw(served, f"DROP TABLE {table}", method="GET")[0] == 401
    assert _raw(served, f"DROP TABLE {table}")[0] == 401
    assert _raw(served, f"DROP TABLE {table}", password="guess")[0] == 401
    assert _raw(served, exists, method="GET")[0] == 401  # reads need it too
    # with the credential, GET still runs reads only
    status, body = _raw(served, f"DROP TABLE {table}", method="GET", password=pw)
    assert status == 405 and "read-only" in body
    # DNS rebinding: the browser sends the attacker's name as Host
    assert _raw(served, exists, method="GET", password=pw,
                headers={"Host": f"rebind.evil.example:{served.dsn.rsplit(':', 1)[1]}"})[0] == 403
    # a page's fetch() carries Origin / Sec-Fetch-Site
    assert _raw(served, exists, password=pw, headers={"Origin": "https://evil.example"})[0] == 403
    assert _raw(served, exists, password=pw, headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert http_store.rows(exists) == [(1,)], "the ledger table was dropped"

    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret\n")
    out = tmp_path / "out.txt"
    for sql in (f"SELECT * FROM file('{secret}', 'LineAsString')",
                f"SELECT * FROM `file`('{secret}', 'LineAsString')",
                f'SELECT * FROM "file"(\'{secret}\', \'LineAsString\')',
                f"SELECT * FROM FILE /* c */ ('{secret}', 'LineAsString')",
                f"SELECT `file`('{secret}')",
                "SELECT * FROM file('/etc/passwd', 'LineAsString')",
                "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
                f"SELECT 1 INTO OUTFILE '{out}'"):
        for method in ("GET", "POST"):
            status, body = _raw(served, sql, method=method, password=pw)
            assert status in (403, 405) and "not allowed" in body, (sql, method, status, body)
            assert "top-secret" not in body and "root:" not in body
    assert not out.exists()

    # the real client still works: reads, writes and inserts by POST (see the test above)
    assert http_store.rows("SELECT 1") == [(1,)]
    log = (served.data / "stderr.log").read_text()
    assert "refused" in log and pw not in log, "the credential reached the log"


def test_served_store_lets_nothing_out_of_the_store(served: Served, http_store: Store,
                                                     tmp_path: Path) -> None:
    """With the credential, neither lexer tricks nor DDL reach files, processes or hosts."""
    from urllib.parse import quote

    pw = served.password
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret\n")
    out, out2 = tmp_path / "out.txt", tmp_path / "out2.txt"
    reads = [  # a lexer that ends /* at the first */, or takes x$a$ for a heredoc, missed these
        f"SELECT /* /* */ ' */ file('{secret}') AS c",
        f"SELECT 1 AS x$a$, file('{secret}') AS y$a$",
        f"SELECT * FROM '{secret}'",  # clickhouse-local's default database reads files
        f"SELECT * FROM `{secret}`",
    ]
    for sql in reads:
        for method in ("GET", "POST"):
            status, body = _raw(served, sql, method=method, password=pw)
            assert status in (403, 405) and "top-secret" not in body, (sql, method, body)
    writes = [
        f"SELECT 1 /* /* */ ' */ INTO OUTFILE '{out}' --'",
        f"INSERT INTO FUNCTION /* /* */ ' */ file('{out2}', 'CSV', 'a String') --'\n"
        "VALUES ('x')",
        f"SELECT 1; SELECT 1 INTO OUTFILE '{out}'",
        f"CREATE DATABASE fsdb ENGINE = Filesystem('{tmp_path}')",
        "CREATE DICTIONARY dx (a String) PRIMARY KEY a SOURCE(EXECUTABLE_POOL(command 'id' "
        "format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)",
        "CREATE DICTIONARY dh (a String) PRIMARY KEY a SOURCE(HTTP(url 'http://127.0.0.1:9/' "
        "format 'TSV')) LAYOUT(COMPLEX_KEY_HASHED()) LIFETIME(0)",
        f"CREATE TABLE {http_store.database}.fl (a String) ENGINE = File(LineAsString, "
        f"'{secret}')",
        f"BACKUP TABLE {http_store.database}.usage_events TO File('{out}')",
        "SYSTEM FLUSH LOGS",
    ]
    for sql in writes:
        status, body = _raw(served, sql, password=pw)
        assert status in (403, 405), (sql, status, body)
    assert not out.exists() and not out2.exists()
    status, body = _raw(served, "SELECT * FROM fsdb.`secret.txt`", password=pw)
    assert status != 200 and "top-secret" not in body
    assert http_store.rows("SELECT count() FROM system.dictionaries") == [(0,)]
    # the database parameter becomes a USE: a name only, never a second statement
    injected = f"system`; CREATE DATABASE fsdb2 ENGINE = Filesystem('{tmp_path}'); --"
    url = f"{served.dsn}/?database={quote(injected)}"
    req = urllib.request.Request(url, method="POST", data=b"SELECT 1")
    req.add_header("Authorization", "Basic " + base64.b64encode(f"default:{pw}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    assert status == 400
    assert http_store.rows("SELECT count() FROM system.databases WHERE name LIKE 'fsdb%'") \
        == [(0,)]


def test_reprice_runs_on_the_served_store(http_store: Store) -> None:
    """The worker's re-pricing statements (staging table, ATTACH PARTITION FROM) pass."""
    from datetime import timedelta as td

    from pipeline.store.reprice import reprice
    from pipeline.store.sink import usage_row

    now = clock_now()
    p = METER.meter_object(Simulator(tenants=1, seed=5, text_share=0.0).event(now), now=now)
    row = usage_row(p, late=False, partition=0, offset=1, ingested_at=now)
    row[USAGE_COLUMNS.index("total_cost")] = p.total_cost + 1  # a wrong stored price
    http_store.insert("usage_events", [row], USAGE_COLUMNS)
    done = reprice(http_store, load_catalog(), now - td(days=1), now + td(days=1), now,
                   dry_run=False)
    assert done["events_repriced"] == 1
    db = http_store.database
    assert http_store.rows(f"SELECT sum(total_cost) FROM {db}.usage_events FINAL") \
        == [(p.total_cost,)]
    assert http_store.rows(f"SELECT count() FROM system.tables WHERE database = '{db}' "
                           "AND name LIKE 'reprice_staging%'") == [(0,)]


def test_reprice_after_a_crash_finishes_on_the_served_store(http_store: Store) -> None:
    """A run that stopped after its journal is finished by the next one (its journal and
    batch queries pass the served store's checks), counted once in the rollups."""
    from datetime import timedelta as td

    from pipeline.store.reprice import reprice
    from pipeline.store.sink import usage_row

    now = clock_now()
    p = METER.meter_object(Simulator(tenants=1, seed=6, text_share=0.0).event(now), now=now)
    row = usage_row(p, late=False, partition=0, offset=1, ingested_at=now)
    row[USAGE_COLUMNS.index("total_cost")] = p.total_cost + 1  # a wrong stored price
    http_store.insert("usage_events", [row], USAGE_COLUMNS)

    def crash(stage: str, day: object) -> None:
        if stage == "journal":
            raise RuntimeError("stopped after the journal")

    with pytest.raises(RuntimeError):
        reprice(http_store, load_catalog(), now - td(days=1), now + td(days=1), now,
                dry_run=False, hook=crash)
    done = reprice(http_store, load_catalog(), now - td(days=1), now + td(days=1), now,
                   dry_run=False)
    assert done["events_repriced"] == 1
    db = http_store.database
    assert http_store.rows(f"SELECT sum(total_cost) FROM {db}.usage_events FINAL") \
        == [(p.total_cost,)]
    for table in ("usage_hourly", "usage_daily"):
        assert http_store.rows(f"SELECT sum(total_cost) FROM {db}.{table}") \
            == [(p.total_cost,)]


def _metrics(settings: Settings) -> dict[str, float]:
    with urllib.request.urlopen(f"{settings.web_url}/metrics", timeout=5) as r:  # noqa: S310
        return {k: float(v) for k, v in (line.split() for line in r.read().decode().splitlines()
                                         if line and not line.startswith("#") and "{" not in line)}


def _worker(settings: Settings) -> subprocess.Popen[str]:
    assert settings.clickhouse_dsn is not None and settings.clickhouse_password is not None
    env = {**subprocess_env(settings), "TOKENMETER_CLICKHOUSE_DSN": settings.clickhouse_dsn,
           "TOKENMETER_CLICKHOUSE_PASSWORD": settings.clickhouse_password.get_secret_value(),
           "TOKENMETER_CLICKHOUSE_DATABASE": settings.clickhouse_database}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(what: str, check: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workers_share_partitions_and_totals_stay_exact(
        served: Served, tmp_path: Path, broker, topic_prefix: str) -> None:
    base = dict(kafka_bootstrap=broker.bootstrap, clickhouse_dsn=served.dsn,
                clickhouse_password=served.password,
                clickhouse_database=f"c_{topic_prefix.strip('-_')}", topic_prefix=topic_prefix,
                app_id=f"tm-{topic_prefix}", partitions=4)
    a = load_settings(**base, data_dir=str(tmp_path / "a"), web_port=free_port())
    b = load_settings(**base, data_dir=str(tmp_path / "b"), web_port=free_port())
    rng = random.Random(11)
    hour = clock_now().replace(minute=0, second=0, microsecond=0)
    sim = Simulator(tenants=12, seed=11, text_share=0.0)
    events = [sim.event(hour + timedelta(seconds=rng.randint(0, 3599))) for _ in range(4500)]
    now = clock_now()
    truth = sum((METER.meter_object(e, now=now).total_cost for e in events), Decimal(0))

    def msgs(batch: list[dict]) -> list[tuple[bytes, bytes]]:
        return [(e["tenant_id"].encode(), json.dumps(e).encode()) for e in batch]

    def produce_sync(batch: list[dict]) -> None:
        import asyncio

        asyncio.run(produce(a, msgs(batch)))

    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(_worker(a))
        _wait("worker A ready", lambda: get(a, "/health")[0] == 200)
        produce_sync(events[:1500])
        _wait("A stores 1500", lambda: _metrics(a)["tokenmeter_events_total"] >= 1500)
        assert _metrics(a)["tokenmeter_assigned_partitions"] == 4

        procs.append(_worker(b))
        _wait("B ready", lambda: get(b, "/health")[0] == 200)
        _wait("partitions split", lambda: _metrics(a)["tokenmeter_assigned_partitions"]
              + _metrics(b)["tokenmeter_assigned_partitions"] == 4
              and _metrics(b)["tokenmeter_assigned_partitions"] > 0)
        # the second third, plus exact re-sends of the first: whoever owns a tenant's
        # partition now must recognise ids the other worker stored
        produce_sync(events[1500:3000] + rng.sample(events[:1500], 300))
        both = lambda: _metrics(a)["tokenmeter_events_total"] + _metrics(b)[  # noqa: E731
            "tokenmeter_events_total"]
        _wait("3000 stored", lambda: both() >= 3000)
        assert _metrics(b)["tokenmeter_events_total"] > 0, "worker B took no share"

        procs[0].send_signal(signal.SIGTERM)  # A leaves: B takes every partition
        assert procs[0].wait(60) == 0, procs[0].stderr.read() if procs[0].stderr else ""
        _wait("B owns all", lambda: _metrics(b)["tokenmeter_assigned_partitions"] == 4)
        produce_sync(events[3000:] + rng.sample(events[:3000], 300))

        _wait("4500 in the ledger", lambda: int(
            _rows(b, "SELECT count() FROM {db}.usage_events")[0][0]) >= 4500)
        time.sleep(1.0)  # anything still in flight (a duplicate would land now)
        [[count, unique, cost]] = _rows(b, "SELECT count(), uniqExact(event_id), "
                                          "sum(total_cost) FROM {db}.usage_events")
        assert (int(count), int(unique), Decimal(cost)) == (4500, 4500, truth)
        [[events_, cost_]] = _rows(b, "SELECT sum(events), sum(total_cost) FROM {db}.usage_hourly")
        assert (int(events_), Decimal(cost_)) == (4500, truth)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)


def _rows(settings: Settings, sql: str) -> list[list]:
    req = urllib.request.Request(
        f"{settings.web_url}/api/query", method="POST",
        data=json.dumps({"sql": sql.format(db=settings.clickhouse_database)}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
        rows: list[list] = json.loads(r.read())["rows"]
        return rows
