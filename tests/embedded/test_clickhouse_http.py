"""The request parsing of the embedded ClickHouse HTTP server (pure helpers)."""

from __future__ import annotations

import base64
import gzip
import stat

import pytest
from pydantic import SecretStr

from pipeline.embedded.clickhouse_http import (
    decode_body,
    host_allowed,
    parse_set,
    presented_secret,
    request_refusal,
    settings_clause,
    split_insert,
    statement_refusal,
)

SECRET = SecretStr("s3cret-of-this-run")


@pytest.mark.parametrize(("body", "expected"), [
    (b"INSERT INTO db.t (a, b) FORMAT Native\n\x01\x02",
     ("INSERT INTO db.t (a, b)", None, "Native", b"\x01\x02")),
    (b"insert into t format TabSeparated\n1\tx\n", ("insert into t", None, "TabSeparated",
                                                     b"1\tx\n")),
    (b"INSERT INTO t (a) SETTINGS async_insert=0 FORMAT CSV\n1\n",
     ("INSERT INTO t (a)", "async_insert=0", "CSV", b"1\n")),
    (b"INSERT INTO t (a) FORMAT RowBinary", ("INSERT INTO t (a)", None, "RowBinary", b"")),
    (b"INSERT INTO t VALUES (1)", None),
    (b"INSERT INTO t SELECT * FROM s", None),
    (b"SELECT 1 FORMAT Native", None),
])
def test_split_insert(body: bytes, expected: tuple | None) -> None:
    assert split_insert(body) == expected


@pytest.mark.parametrize(("sql", "expected"), [
    ("SET readonly = 1", {"readonly": "1"}),
    ("set a = 'x, y', b=2;", {"a": "x, y", "b": "2"}),
    ("SET s = 'it\\'s'", {"s": "it's"}),
    ("SELECT 1", None),
    ("SET nonsense", None),
])
def test_parse_set(sql: str, expected: dict | None) -> None:
    assert parse_set(sql) == expected


def test_settings_clause_quotes_strings_and_refuses_bad_names() -> None:
    assert settings_clause({"n": "3", "f": "0.5", "s": "a'b"}) == "n = 3, f = 0.5, s = 'a\\'b'"
    with pytest.raises(ValueError, match="invalid setting name"):
        settings_clause({"a; DROP": "1"})


@pytest.mark.parametrize("encoding", [None, "identity", "gzip", "lz4", "zstd"])
def test_decode_body(encoding: str | None) -> None:
    data = b"INSERT INTO t FORMAT CSV\n" + b"1,2\n" * 100
    if encoding == "gzip":
        sent = gzip.compress(data)
    elif encoding in ("lz4", "zstd"):
        import cramjam

        sent = bytes((cramjam.lz4 if encoding == "lz4" else cramjam.zstd).compress(data))
    else:
        sent = data
    assert decode_body(sent, encoding) == data


def test_decode_body_refuses_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unsupported Content-Encoding 'br2'"):
        decode_body(b"", "br2")


def test_embedded_store_is_served_on_loopback_only(tmp_path) -> None:
    from pipeline.errors import ConfigError
    from pipeline.runtime.cluster import EmbeddedClickHouse
    from pipeline.settings import load_settings

    with pytest.raises(ConfigError, match="loopback only"):
        EmbeddedClickHouse(load_settings(data_dir=str(tmp_path)), "0.0.0.0", 8123)  # noqa: S104
    with pytest.raises(ConfigError, match="already a ClickHouse server"):
        EmbeddedClickHouse(load_settings(clickhouse_dsn="http://db:8123"), "127.0.0.1", 8123)


# --- who may drive the served store ------------------------------------------------------

def _basic(password: str, user: str = "default") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _headers(**extra: str) -> dict[str, str]:
    """Lower-case header names, as the handler passes them; the run's credential included."""
    return {"host": "127.0.0.1:8123", "authorization": _basic(SECRET.get_secret_value()),
            **{k.lower().replace("_", "-"): v for k, v in extra.items()}}


@pytest.mark.parametrize(("host", "ok"), [
    ("127.0.0.1", True), ("127.0.0.1:8123", True), ("localhost:8123", True),
    ("LOCALHOST", True), ("[::1]:8123", True), ("[::1]", True),
    ("evil.example:8123", False), ("127.0.0.1.evil.example", False), ("localhost.", False),
    ("127.0.0.2:8123", False), ("0.0.0.0:8123", False), ("", False), (None, False),
    ("127.0.0.1:8123@evil", False), ("::1", False),
])
def test_host_allowed_only_for_loopback_names(host: str | None, ok: bool) -> None:
    assert host_allowed(host) is ok


def test_presented_secret_reads_what_clickhouse_connect_sends() -> None:
    assert presented_secret({"authorization": _basic("pw")}) == "pw"
    assert presented_secret({"authorization": _basic("p:w", user="u")}) == "p:w"
    assert presented_secret({"x-clickhouse-key": "pw", "x-clickhouse-user": "default"}) == "pw"
    assert presented_secret({}) is None
    assert presented_secret({"authorization": "Bearer pw"}) is None
    assert presented_secret({"authorization": "Basic !!!"}) is None


def test_request_with_the_credential_passes() -> None:
    assert request_refusal("POST", "/?database=x", _headers(), SECRET) is None
    assert request_refusal("GET", "/?query=SELECT+1", _headers(), SECRET) is None
    key_only = {"host": "localhost", "x-clickhouse-key": SECRET.get_secret_value()}
    assert request_refusal("POST", "/", key_only, SECRET) is None


@pytest.mark.parametrize(("method", "path", "headers", "status"), [
    ("GET", "/?query=DROP+TABLE+tokenmeter.usage_events", {"host": "127.0.0.1:8123"}, 401),
    ("POST", "/", {"host": "127.0.0.1:8123"}, 401),
    ("POST", "/", {"host": "127.0.0.1", "authorization": _basic("guess")}, 401),
    ("POST", "/", {"host": "127.0.0.1", "x-clickhouse-key": ""}, 401),
    ("POST", "/?password=s3cret-of-this-run", {"host": "127.0.0.1"}, 401),  # not in URLs
    ("POST", "/", _headers(host="evil.example:8123"), 403),
    ("POST", "/", {k: v for k, v in _headers().items() if k != "host"}, 403),
    ("POST", "/", _headers(origin="https://evil.example"), 403),
    ("POST", "/", _headers(origin="null"), 403),
    ("POST", "/", _headers(sec_fetch_site="cross-site"), 403),
    ("POST", "/", _headers(sec_fetch_site="same-origin"), 403),
    ("GET", "/ping", _headers(origin="https://evil.example"), 403),
    ("GET", "/ping", {"host": "rebound.evil.example:8123"}, 403),
])
def test_request_refused(method: str, path: str, headers: dict[str, str], status: int) -> None:
    refusal = request_refusal(method, path, headers, SECRET, hint="see /x/credential")
    assert refusal is not None and refusal.status == status
    assert SECRET.get_secret_value() not in str(refusal)
    if status == 401:
        assert "see /x/credential" in str(refusal)


def test_ping_needs_no_credential_but_a_loopback_host() -> None:
    assert request_refusal("GET", "/ping", {"host": "127.0.0.1:8123"}, SECRET) is None


@pytest.mark.parametrize("sql", [
    "DROP TABLE tokenmeter.usage_events",
    "INSERT INTO tokenmeter.usage_daily (tenant_id) VALUES ('x')",
    "TRUNCATE TABLE tokenmeter.usage_events",
    "ALTER TABLE tokenmeter.usage_events DELETE WHERE 1",
    "SET readonly = 0",
])
def test_get_runs_read_only_statements_only(sql: str) -> None:
    refusal = statement_refusal(sql, "GET")
    assert refusal is not None and refusal.status == 405
    assert statement_refusal(sql, "POST") is None  # the workers' own writes go by POST


@pytest.mark.parametrize("sql", [
    "SELECT 1", "SELECT count() FROM tokenmeter.usage_events FINAL FORMAT JSON",
    "SHOW TABLES FROM tokenmeter", "DESCRIBE TABLE tokenmeter.usage_events",
    "WITH 1 AS a SELECT a", "EXISTS TABLE tokenmeter.usage_events",
])
def test_get_reads_pass(sql: str) -> None:
    assert statement_refusal(sql, "GET") is None


@pytest.mark.parametrize("sql", [
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM `file`('/etc/passwd', 'LineAsString')",
    'SELECT * FROM "file"(\'/etc/passwd\')',
    "SELECT * FROM FILE /* c */ ('/etc/passwd')",
    "select * from File\n  ('/etc/passwd')",
    "SELECT `file`('/etc/passwd')",
    "SELECT `fi\\x6ce`('/etc/passwd')",
    "SELECT * FROM url('http://169.254.169.254/', 'LineAsString')",
    "SELECT * FROM s3('https://b/x.csv')",
    "SELECT * FROM hdfs('hdfs://x/y')",
    "SELECT * FROM remote('h:9000', system.one)",
    "SELECT * FROM remoteSecure('h:9440', system.one)",
    "SELECT * FROM mysql('h:3306', 'd', 't', 'u', 'p')",
    "SELECT * FROM postgresql('h:5432', 'd', 't', 'u', 'p')",
    "SELECT * FROM jdbc('x', 'y')",
    "SELECT * FROM odbc('x', 'y')",
    "SELECT * FROM executable('id', 'LineAsString', 'x String')",
    "SELECT * FROM azureBlobStorage('x')",
    "SELECT * FROM gcs('https://x')",
    "SELECT * FROM clusterAllReplicas('default', system.one)",
    "SELECT * FROM input('a Int8')",
    "CREATE TABLE t (a String) ENGINE = File(LineAsString, '/etc/passwd')",
    "INSERT INTO tokenmeter.usage_daily SELECT * FROM url('http://x/', 'CSV')",
    "SELECT 1 INTO OUTFILE '/home/u/.bashrc' TRUNCATE",
    "INSERT INTO t FROM INFILE '/etc/passwd' FORMAT LineAsString",
    "SELECT 1 -- it's\n, file('/etc/passwd') -- '",
])
def test_io_functions_refused_in_any_statement(sql: str) -> None:
    for method in ("GET", "POST"):
        refusal = statement_refusal(sql, method)
        assert refusal is not None and refusal.status in (403, 405), (sql, method)
        assert "not allowed" in str(refusal)


def test_credential_file_is_private_and_secret_stays_out_of_reprs(tmp_path) -> None:
    from pipeline.runtime.cluster import EmbeddedClickHouse, write_secret
    from pipeline.settings import load_settings

    path = tmp_path / "d" / "cred"
    write_secret(path, SECRET)
    assert path.read_text() == SECRET.get_secret_value() + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    write_secret(path, SECRET)  # a stale, wider file is replaced, not reused
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    settings = load_settings(data_dir=str(tmp_path))
    a = EmbeddedClickHouse(settings, "127.0.0.1", 1)
    b = EmbeddedClickHouse(settings, "127.0.0.1", 1)
    assert a.secret.get_secret_value() != b.secret.get_secret_value()
    assert len(a.secret.get_secret_value()) >= 32
    for shown in (repr(a.secret), str(a.secret), repr(vars(a)), a.dsn):
        assert a.secret.get_secret_value() not in shown
    given = EmbeddedClickHouse(settings, "127.0.0.1", 1, secret=SECRET)
    assert given.secret is SECRET
    assert given.secret_file.parent == tmp_path.resolve()


def test_a_previous_runs_credential_is_reused_only_if_private_and_well_formed(tmp_path) -> None:
    import os

    from pipeline.runtime.cluster import CREDENTIAL_FILE, EmbeddedClickHouse, write_secret
    from pipeline.settings import load_settings

    settings = load_settings(data_dir=str(tmp_path))
    path = tmp_path / CREDENTIAL_FILE
    kept = SecretStr("k" * 43)
    write_secret(path, kept)
    again = EmbeddedClickHouse(settings, "127.0.0.1", 1)
    assert again.secret.get_secret_value() == kept.get_secret_value()
    for mode, text in ((0o644, "k" * 43), (0o600, "short"), (0o600, "a b" * 20)):
        path.write_text(text + "\n")
        path.chmod(mode)
        fresh = EmbeddedClickHouse(settings, "127.0.0.1", 1)
        assert fresh.secret.get_secret_value() != text
        assert len(fresh.secret.get_secret_value()) >= 32
    path.unlink()
    os.symlink(tmp_path / "elsewhere", path)
    (tmp_path / "elsewhere").write_text("k" * 43 + "\n")
    (tmp_path / "elsewhere").chmod(0o600)
    assert EmbeddedClickHouse(settings, "127.0.0.1", 1).secret.get_secret_value() != "k" * 43


def test_workers_get_the_credential_as_their_clickhouse_password(tmp_path, monkeypatch) -> None:
    from pipeline.runtime.cluster import worker_env
    from pipeline.settings import load_settings

    settings = load_settings(data_dir=str(tmp_path))
    env = worker_env(settings, "127.0.0.1:9092", "http://127.0.0.1:8123", 0, SECRET)
    assert env["TOKENMETER_CLICKHOUSE_PASSWORD"] == SECRET.get_secret_value()
    monkeypatch.setenv("TOKENMETER_CLICKHOUSE_PASSWORD", env["TOKENMETER_CLICKHOUSE_PASSWORD"])
    worker = load_settings(clickhouse_dsn=env["TOKENMETER_CLICKHOUSE_DSN"])
    assert worker.clickhouse_password is not None
    assert worker.clickhouse_password.get_secret_value() == SECRET.get_secret_value()
    assert SECRET.get_secret_value() not in repr(worker)


# --- what a credential holder may run: an allow-list judged by ClickHouse's own parse ------

def _verdict(store, sql: str, method: str = "POST"):
    """The served store's verdict on ``sql``: its textual check, then the parse check."""
    from pipeline.embedded.clickhouse_http import RequestRefused, parsed_refusal

    refusal = statement_refusal(sql, method)
    if refusal is not None:
        return refusal
    try:
        ast = str(store.command(f"EXPLAIN AST {sql}"))
    except Exception as exc:  # the engine cannot even parse it (RabbitMQ is not built in)
        return RequestRefused(500, str(exc))
    return parsed_refusal(sql, ast, method)


SERVED_REFUSED = [
    # lexer tricks (nested comments, $ in names) around I/O functions and file clauses
    "SELECT /* /* */ ' */ file('/etc/hostname') AS c",
    "SELECT 1 AS x$a$, file('/etc/hostname') AS y$a$",
    "SELECT 1 /* /* */ ' */ INTO OUTFILE '/tmp/x.txt' --'",
    "INSERT INTO FUNCTION /* /* */ ' */ file('/tmp/x.txt', 'CSV', 'a String') --'\nVALUES ('x')",
    "INSERT INTO FUNCTION null('a Int8') VALUES (1)",
    "SELECT 1; CREATE DATABASE fsdb ENGINE = Filesystem('/etc')",
    # databases, dictionaries and tables that reach files, processes or the network
    "CREATE DATABASE fsdb ENGINE = Filesystem('/etc')",
    "CREATE DATABASE d ENGINE = Lazy(1)",
    "CREATE DATABASE d ENGINE = MySQL('h:3306', 'db', 'u', 'p')",
    "CREATE DICTIONARY dx (a String) PRIMARY KEY a SOURCE(EXECUTABLE_POOL(command 'id' "
    "format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)",
    "CREATE DICTIONARY dh (a String) PRIMARY KEY a SOURCE(HTTP(url 'http://127.0.0.1:1/' "
    "format 'TSV')) LAYOUT(COMPLEX_KEY_HASHED()) LIFETIME(0)",
    "CREATE TABLE t (a String) ENGINE = FileLog('/etc/hostname', 'LineAsString')",
    "CREATE TABLE t (a String) ENGINE = S3Queue('http://x/*', 'CSV')",
    "CREATE TABLE t (a String) ENGINE = Kafka('h:9092', 't', 'g', 'JSONEachRow')",
    "CREATE TABLE t (a String) ENGINE = RabbitMQ SETTINGS rabbitmq_host_port = 'h:5672'",
    "CREATE TABLE t (a String) ENGINE = NATS SETTINGS nats_url = 'h:4222'",
    "CREATE TABLE t (a String) ENGINE = MaterializedPostgreSQL('h:5432', 'd', 't', 'u', 'p')",
    "CREATE TABLE t (a String) ENGINE = ExecutablePool('id', 'TSV')",
    "CREATE TABLE t (a String) ENGINE = Executable('id', 'TSV')",
    "CREATE TABLE t (a String) ENGINE = URL('http://x/', 'CSV')",
    "CREATE TABLE t (a String) ENGINE = File(CSV, '/etc/passwd')",
    "CREATE TABLE t (a String) ENGINE = ReplicatedMergeTree('/zk/t', 'r') ORDER BY a",
    "CREATE TABLE t (a String) ENGINE = Distributed('c', 'db', 't')",
    "CREATE TABLE t (a Int8) ENGINE = MergeTree ORDER BY a "
    "SETTINGS disk = disk(type = 'local', path = '/tmp/elsewhere/')",
    "CREATE TABLE t AS numbers(10)",
    "CREATE TABLE t AS default.`/etc/passwd`",
    "CREATE FUNCTION f AS x -> x",
    "CREATE USER u",
    # clickhouse-local's default database reads a file named like a table
    "SELECT * FROM '/etc/hostname'",
    "SELECT * FROM `/etc/hostname`",
    "SELECT * FROM default.`pyproject.toml`",
    "INSERT INTO default.t VALUES (1)",
    "DROP DATABASE default",
    # backups, attach, system, access, settings that name files
    "BACKUP TABLE tokenmeter.usage_events TO Disk('backups', '1.zip')",
    "RESTORE TABLE tokenmeter.usage_events FROM Disk('backups', '1.zip')",
    "ATTACH TABLE tokenmeter.x",
    "DETACH TABLE tokenmeter.usage_events",
    "SYSTEM FLUSH LOGS",
    "SYSTEM RELOAD DICTIONARIES",
    "KILL QUERY WHERE 1",
    "GRANT ALL ON *.* TO default",
    "ALTER TABLE tokenmeter.usage_events FETCH PARTITION 1 FROM '/zk/t'",
    "ALTER TABLE tokenmeter.usage_events MOVE PARTITION 1 TO DISK 'd'",
    "ALTER TABLE tokenmeter.usage_events FREEZE",
    "SELECT 1 SETTINGS format_template_resultset = '/etc/passwd' FORMAT Template",
]


@pytest.mark.parametrize("sql", SERVED_REFUSED)
def test_served_store_refuses_what_leaves_the_store(store, sql: str) -> None:
    refusal = _verdict(store, sql)
    assert refusal is not None, sql
    assert refusal.status in (403, 405) or "UNKNOWN_STORAGE" in str(refusal), str(refusal)


def _worker_statements(db: str) -> list[str]:
    """Every statement tokenmeter's own processes send the store (migrations, sink, reprice)."""
    from pipeline.store.migrations import discover

    migrations = [s for m in discover() for s in m.statements(db)]
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, "
        "applied_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree ORDER BY version",
        *migrations,
        f"INSERT INTO `{db}`.`usage_events` (`event_id`, `tenant_id`) FORMAT Native",
        f"INSERT INTO {db}.usage_daily (tenant_id) SETTINGS insert_deduplication_token = 'x' "
        "FORMAT RowBinary",
        f"CREATE TABLE {db}.reprice_staging_ab12 AS {db}.usage_events",
        f"TRUNCATE TABLE {db}.reprice_staging_ab12",
        f"SELECT DISTINCT _partition_id FROM {db}.reprice_staging_ab12",
        f"ALTER TABLE {db}.usage_events ATTACH PARTITION ID '202501' FROM "
        f"{db}.reprice_staging_ab12",
        f"DROP TABLE IF EXISTS {db}.reprice_staging_ab12 SYNC",
        f"ALTER TABLE {db}.usage_events DELETE WHERE tenant_id = 'x'",
        f"DELETE FROM {db}.usage_events WHERE tenant_id = 'x'",
        f"OPTIMIZE TABLE {db}.usage_events FINAL",
        f"EXCHANGE TABLES {db}.usage_hourly AND {db}.usage_daily",
        f"CREATE DATABASE {db}_2 ENGINE = Atomic",
        f"CREATE TABLE {db}.m (a Int8) ENGINE = Memory",
        f"DROP DATABASE IF EXISTS {db}_2",
        f"SELECT count() FROM {db}.usage_events FINAL FORMAT Native",
        "SELECT version(), timezone()",
    ]


def test_served_store_runs_what_the_workers_send(store) -> None:
    for sql in _worker_statements("tokenmeter"):
        assert _verdict(store, sql) is None, sql


@pytest.mark.parametrize("database", ["default", "x`; DROP DATABASE tokenmeter; --", "a b", ""])
def test_database_parameter_is_a_plain_name_and_not_default(database: str) -> None:
    from pipeline.embedded.clickhouse_http import database_refusal

    refusal = database_refusal(database)
    assert refusal is not None and refusal.status in (400, 403)
    assert database_refusal("tokenmeter") is None


def test_settings_that_name_files_are_refused() -> None:
    from pipeline.embedded.clickhouse_http import settings_refusal

    for name in ("format_schema", "format_template_resultset", "output_format_schema"):
        refusal = settings_refusal({name: "/etc/passwd"})
        assert refusal is not None and refusal.status == 403
    assert settings_refusal({"max_threads": "1", "insert_deduplication_token": "t"}) is None
