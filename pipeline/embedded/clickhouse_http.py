"""ClickHouse's HTTP interface over an embedded chDB store, for several local processes.

chDB opens a data directory in one process only, so two workers on one machine cannot both
embed it. This adapter owns the directory and answers the subset of ClickHouse's HTTP
protocol that clickhouse-connect's HTTP client speaks (queries in any format, inserts with a
data body, settings, ``param_`` bindings, sessions for ``SET``), so workers reach it with an
``http://`` DSN: the production code path, with only the server being embedded.

Any web page the operator opens can send requests to loopback, so every request is checked
before it reaches the engine (``request_refusal``, ``statement_refusal``): a loopback Host
header (DNS rebinding sends the attacker's name), no browser headers (``Origin``,
``Sec-Fetch-Site``), the run's credential (HTTP basic auth or ``X-ClickHouse-Key``, as
clickhouse-connect sends it), read-only statements only over GET, and no functions that reach
files or the network in any statement.

The credential's holder is not trusted with the machine either: every statement (an insert's
statement part included) is checked twice, by ClickHouse's lexer rules (``sql_guard.bare``) and
by ClickHouse's own parse (``EXPLAIN AST``, after ``formatQuery`` proved it one statement), and
only an allow-list runs: reads, inserts into tables, and the DDL the workers send (MergeTree
family, Memory or Null tables, views, Atomic databases). chDB's ``default`` database is
clickhouse-local's, where a table name can be a file, so it is not served: requests without a
database run in ``system``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import json
import logging
import re
import tempfile
import threading
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import SecretStr

from pipeline.errors import QueryRefused, StoreError
from pipeline.store import sql_guard

log = logging.getLogger(__name__)

# request parameters that steer the HTTP protocol and are not ClickHouse settings
PROTOCOL_PARAMS = frozenset({
    "query", "database", "default_format", "query_id", "session_id", "session_timeout",
    "session_check", "compress", "decompress", "enable_http_compression",
    "wait_end_of_query", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "client_protocol_version", "user", "password", "quota_key", "buffer_size",
    "http_response_buffer_size", "role", "add_http_cors_header",
})
_INSERT_WITH_DATA = re.compile(
    rb"^\s*(INSERT\s+INTO\s+.+?)\s+(?:SETTINGS\s+(.+?)\s+)?FORMAT\s+(\w+)[ \t]*(?:\r?\n|$)",
    re.IGNORECASE | re.DOTALL)
_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_SET = re.compile(r"^\s*SET\s+(.+?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_CODE = re.compile(r"Code:\s*(\d+)")
_MAX_CONNECTIONS = 16
_MAX_VERDICTS = 512
_DATABASE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# chDB's `default` database reads files named like tables, so requests without a database
# run in `system` (the workers name every table with its database anyway)
NO_DATABASE = "system"
_LOOPBACK_HOST = re.compile(r"(?:127\.0\.0\.1|localhost|\[::1\])(?::\d{1,5})?", re.I)
# headers only browsers send: a request carrying one came from a web page, whatever it says
BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site")


class RequestRefused(StoreError):
    """A request the served store will not run; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name.lower())


def host_allowed(host: str | None) -> bool:
    """True for a loopback Host header (127.0.0.1, localhost, [::1], with or without port)."""
    return host is not None and _LOOPBACK_HOST.fullmatch(host.strip()) is not None


def presented_secret(headers: Mapping[str, str]) -> str | None:
    """The password a request carries: ``X-ClickHouse-Key`` or HTTP basic auth.

    ``headers`` has lower-case names, as every function here expects.
    """
    key = _header(headers, "X-ClickHouse-Key")
    if key is not None:
        return key
    scheme, _, value = (_header(headers, "Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon else None


def request_refusal(method: str, path: str, headers: Mapping[str, str], secret: SecretStr,
                    hint: str = "") -> RequestRefused | None:
    """Why a request must not reach the engine (None: it may); never echoes a credential."""
    if not host_allowed(_header(headers, "Host")):
        return RequestRefused(403, "Host header not allowed: the served store answers only "
                                   "to 127.0.0.1, localhost or [::1]")
    for name in BROWSER_HEADERS:
        if _header(headers, name) is not None:
            return RequestRefused(403, f"request carries the browser header {name}: web pages "
                                       "may not use the served store")
    if method not in ("GET", "POST"):
        return RequestRefused(405, f"{method} is not supported; use GET or POST")
    if urlsplit(path).path.rstrip("/") == "/ping":
        return None  # liveness only, as ClickHouse answers it
    given = presented_secret(headers)
    if given is None or not hmac.compare_digest(given.encode(),
                                                secret.get_secret_value().encode()):
        return RequestRefused(401, "authentication failed: the served store needs this run's "
                                   "credential as the password (TOKENMETER_CLICKHOUSE_PASSWORD)"
                                   + (f"; {hint}" if hint else ""))
    return None


def statement_refusal(sql: str, method: str) -> RequestRefused | None:
    """Why a statement must not run, by its text: one statement only, no I/O functions
    anywhere, nothing but a read over GET (the parse-level check follows in ``Server``)."""
    try:
        bare = sql_guard.bare(sql).strip()
        if ";" in bare.rstrip(";"):
            # chDB runs every statement of a multi-statement text
            raise QueryRefused("only one statement per request is allowed")
        io = sql_guard.io_refusal(bare)
        if io is not None:
            return RequestRefused(403, f"{io} on the served store")
        if method != "POST":
            from pipeline.store.queries import check_read_only

            check_read_only(sql)
    except QueryRefused as exc:
        if method != "POST":
            return RequestRefused(405, f"{exc}; GET runs read-only statements only, send "
                                       "others by POST")
        return RequestRefused(403, f"{exc} on the served store")
    return None


def parsed_refusal(sql: str, explain_ast: str, method: str) -> RequestRefused | None:
    """Why a statement must not run, by ClickHouse's parse of it (``EXPLAIN AST`` output)."""
    try:
        refusal = sql_guard.served_refusal(sql_guard.bare(sql), explain_ast, method)
    except QueryRefused as exc:
        refusal = str(exc)
    if refusal is None:
        return None
    if method != "POST" and "read-only" in refusal:
        return RequestRefused(405, f"{refusal}; send others by POST")
    where = "" if "served store" in refusal else " on the served store"
    return RequestRefused(403, f"{refusal}{where}")


def database_refusal(database: str) -> RequestRefused | None:
    """Why a request's ``database`` parameter may not be used (it becomes a ``USE``)."""
    if not _DATABASE.fullmatch(database):
        return RequestRefused(400, f"database {database[:80]!r} is not a plain name "
                                   "(letters, digits, _)")
    if database == "default":
        return RequestRefused(403, "the `default` database is not served: in chDB it reads "
                                   "files named like tables; use tokenmeter's database")
    return None


def settings_refusal(settings: Mapping[str, str]) -> RequestRefused | None:
    """Why settings sent with a request (URL parameters or a session SET) may not be used."""
    for name in settings:
        refusal = sql_guard.setting_refusal(name)
        if refusal is not None:
            return RequestRefused(403, f"{refusal} on the served store")
    return None


def split_insert(body: bytes) -> tuple[str, str | None, str, bytes] | None:
    """(``INSERT INTO t (cols)``, settings clause or None, format, data) of an insert with data."""
    m = _INSERT_WITH_DATA.match(body)
    if m is None:
        return None
    settings = m.group(2).decode() if m.group(2) else None
    return m.group(1).decode(), settings, m.group(3).decode(), body[m.end():]


def parse_set(sql: str) -> dict[str, str] | None:
    """The assignments of a ``SET a = 1, b = 'x'`` statement, or None if ``sql`` is not one."""
    m = _SET.match(sql)
    if m is None:
        return None
    out = {}
    for part in re.split(r",(?=(?:[^']*'[^']*')*[^']*$)", m.group(1)):
        if "=" not in part:
            return None
        key, value = part.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1].replace("\\'", "'")
        out[key.strip()] = value
    return out


def settings_clause(settings: dict[str, str]) -> str:
    """``k = v, ...`` with strings quoted and numbers bare."""
    parts = []
    for key, value in settings.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"invalid setting name {key!r}")
        bare = re.fullmatch(r"-?\d+(\.\d+)?", value)
        quoted = value.replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key} = {value}" if bare else f"{key} = '{quoted}'")
    return ", ".join(parts)


def decode_body(data: bytes, encoding: str | None) -> bytes:
    """Undo a request's Content-Encoding."""
    if not encoding or encoding == "identity":
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding in ("lz4", "zstd"):
        import cramjam

        codec = cramjam.lz4 if encoding == "lz4" else cramjam.zstd
        return bytes(codec.decompress(data))
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


class Engine:
    """chDB connections keyed by (database, settings), used one call at a time."""

    def __init__(self, path: Path) -> None:
        import chdb

        self._chdb: Any = chdb  # untyped module
        self.path = str(path.resolve())
        self.lock = threading.Lock()
        self._conns: OrderedDict[tuple[str, frozenset[tuple[str, str]]], Any] = OrderedDict()
        self.sessions: dict[str, dict[str, str]] = {}
        self._root = self._chdb.connect(self.path)  # holds the engine open between requests

    def _conn(self, database: str, settings: dict[str, str]) -> Any:
        key = (database, frozenset(settings.items()))
        conn = self._conns.get(key)
        if conn is not None:
            self._conns.move_to_end(key)
            return conn
        conn = self._chdb.connect(self.path)
        try:
            if database:
                conn.query(f"USE `{database}`")
            if settings:
                conn.query(f"SET {settings_clause(settings)}")
        except Exception:
            conn.close()
            raise
        self._conns[key] = conn
        while len(self._conns) > _MAX_CONNECTIONS:
            _, old = self._conns.popitem(last=False)
            old.close()
        return conn

    def query(self, sql: str, *, database: str, settings: dict[str, str],
              params: dict[str, str], fmt: str) -> Any:
        """Run one statement that carries no data."""
        with self.lock:
            return self._conn(database, settings).query(sql, fmt, params=params)

    def explain(self, sql: str, *, database: str, settings: dict[str, str],
                params: dict[str, str]) -> str:
        """ClickHouse's parse of ``sql`` (``EXPLAIN AST``), which must be one statement."""
        with self.lock:
            conn = self._conn(database, settings)
            # formatQuery takes the text as a bound string: it parses, never runs, and
            # refuses a second statement that EXPLAIN AST would run
            conn.query("SELECT formatQuery({q:String})", "TSVRaw",
                       params={"q": escape_param(sql)})
            result = conn.query(f"EXPLAIN AST {sql}", "TSVRaw", params=params)
            return str(result.bytes().decode())

    def insert(self, target: str, data: bytes, fmt: str, *, database: str,
               settings: dict[str, str]) -> Any:
        """``INSERT INTO t (cols)`` with ``data`` in ``fmt`` (chDB reads it from a file)."""
        clause = f" SETTINGS {settings_clause(settings)}" if settings else ""
        with self.lock, tempfile.NamedTemporaryFile(suffix=".insert") as tmp:
            tmp.write(data)
            tmp.flush()
            # per-insert settings (dedup tokens) ride in the statement, not on a connection
            return self._conn(database, {}).query(
                f"{target} FROM INFILE {repr_path(tmp.name)}{clause} FORMAT {fmt}",
                "TabSeparated")

    def close(self) -> None:
        """Close every connection."""
        with self.lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
            self._root.close()


def escape_param(value: str) -> str:
    """A query parameter value as ClickHouse reads one (the escaped text format)."""
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r").replace("\0", "\\0"))


def repr_path(path: str) -> str:
    """A file path as a ClickHouse string literal."""
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Handler(BaseHTTPRequestHandler):
    """One ClickHouse HTTP request: ``/ping``, or a statement in the URL and/or body."""

    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            raw = b"".join(chunks)
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return decode_body(raw, self.headers.get("Content-Encoding"))

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, refusal: RequestRefused) -> None:
        # a refused request says nothing about the store; the log names no credential
        log.warning("refused %s %s from %s: %s", self.command, urlsplit(self.path).path,
                    self.address_string(), refusal)
        self.close_connection = True
        code = "516" if refusal.status == 401 else "497"
        self._reply(refusal.status, (str(refusal) + "\n").encode(), {
            "X-ClickHouse-Exception-Code": code, "Content-Type": "text/plain; charset=UTF-8"})

    def _handle(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        refusal = request_refusal(self.command, self.path, headers, self.server.secret,
                                  self.server.hint)
        if refusal is not None:
            self._refuse(refusal)
            return
        url = urlsplit(self.path)
        if url.path.rstrip("/") == "/ping":
            self._reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        query_id = uuid.uuid4().hex
        try:
            body = self._body()
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            status, out, fmt = self.server.run(params, body, method=self.command)
            headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": "UTC",
                       "X-ClickHouse-Summary": json.dumps(out[1]),
                       "Content-Type": "application/octet-stream"}
            if fmt:
                headers["X-ClickHouse-Format"] = fmt
            self._reply(status, out[0], headers)
        except RequestRefused as exc:
            self._refuse(exc)
        except Exception as exc:  # every error goes back to the client as ClickHouse would
            message = str(exc).strip() or type(exc).__name__
            code = _CODE.search(message)
            self._reply(500 if code else 400, (message + "\n").encode(), {
                "X-ClickHouse-Exception-Code": code.group(1) if code else "1001",
                "X-ClickHouse-Query-Id": query_id,
                "Content-Type": "text/plain; charset=UTF-8"})


class Server(ThreadingHTTPServer):
    """The HTTP server: parses requests into engine calls."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Engine, secret: SecretStr,
                 hint: str = "") -> None:
        super().__init__(address, Handler)
        self.engine = engine
        self.secret = secret
        self.hint = hint  # where an operator finds the credential (never the credential)
        # parse verdicts of statements seen before: the sink sends the same insert each batch
        self._verdicts: OrderedDict[tuple[str, str, str], RequestRefused | None] = OrderedDict()
        self._verdicts_lock = threading.Lock()

    def check(self, sql: str, method: str, *, database: str, settings: dict[str, str],
              params: dict[str, str]) -> None:
        """Raise RequestRefused unless ``sql`` passes the textual and the parse-level checks."""
        key = (sql, method, database)
        with self._verdicts_lock:
            known = key in self._verdicts
            verdict = self._verdicts.get(key)
        if not known:
            verdict = statement_refusal(sql, method)
            if verdict is None:
                ast = self.engine.explain(sql, database=database, settings=settings,
                                          params=params)
                verdict = parsed_refusal(sql, ast, method)
            with self._verdicts_lock:
                self._verdicts[key] = verdict
                while len(self._verdicts) > _MAX_VERDICTS:
                    self._verdicts.popitem(last=False)
        if verdict is not None:
            raise verdict

    def close(self) -> None:
        """Stop serving and close the engine's connections."""
        self.shutdown()
        self.engine.close()

    def run(self, params: dict[str, str], body: bytes, method: str = "POST"
            ) -> tuple[int, tuple[bytes, dict[str, str]], str | None]:
        """(status, (body, summary), format) of one request; RequestRefused if it may not run."""
        if method != "POST" and body:
            raise RequestRefused(405, "GET carries no body; send statements with data by POST")
        query = params.get("query")
        database = params.get("database") or NO_DATABASE
        refusal = database_refusal(database)
        if refusal is not None:
            raise refusal
        session = params.get("session_id")
        settings = dict(self.engine.sessions.get(session, {})) if session else {}
        settings.update({k: v for k, v in params.items()
                         if k not in PROTOCOL_PARAMS and not k.startswith("param_")})
        if method != "POST":
            settings["readonly"] = "1"  # as ClickHouse runs a GET, should the check miss one
        refusal = settings_refusal(settings)
        if refusal is not None:
            raise refusal
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        text = (query.encode() + (b"\n" + body if body else b"")) if query else body
        insert = split_insert(text)
        if insert is not None and insert[3].strip():
            target, inline, fmt, data = insert
            # the data is not SQL; the statement around it is, checked as it will run
            # (the server adds FROM INFILE for the data itself)
            clause = f" SETTINGS {inline}" if inline else ""
            self.check(f"{target}{clause} FORMAT {fmt}", method, database=database,
                       settings=settings, params=binds)
            if inline:
                extra = parse_set("SET " + inline) or {}
                refusal = settings_refusal(extra)
                if refusal is not None:
                    raise refusal
                settings.update(extra)
            result = self.engine.insert(target, data, fmt, database=database, settings=settings)
            return 200, (b"", _summary(result, written=True)), None
        sql = text.decode()
        assignments = parse_set(sql)
        if assignments is not None:
            # kept for the session's later statements, never run here
            refusal = statement_refusal(sql, method) or settings_refusal(assignments)
            if refusal is not None:
                raise refusal
            if session:
                self.engine.sessions.setdefault(session, {}).update(assignments)
            return 200, (b"", {}), None
        self.check(sql, method, database=database, settings=settings, params=binds)
        m = _FORMAT.search(sql)
        fmt = m.group(1) if m else params.get("default_format", "TabSeparated")
        result = self.engine.query(sql, database=database, settings=settings, params=binds,
                                   fmt=fmt)
        return 200, (result.bytes() or b"", _summary(result)), fmt


def _summary(result: Any, written: bool = False) -> dict[str, str]:
    rows, size = str(result.rows_read()), str(result.bytes_read())
    return {"read_rows": "0" if written else rows, "read_bytes": "0" if written else size,
            "written_rows": rows if written else "0", "written_bytes": size if written else "0",
            "elapsed_ns": str(int(result.elapsed() * 1e9))}


def serve(path: Path, host: str, port: int, secret: SecretStr, hint: str = "") -> Server:
    """A started server (in a thread) over the chDB store at ``path``, for ``secret`` only."""
    server = Server((host, port), Engine(path), secret, hint)
    threading.Thread(target=server.serve_forever, name="clickhouse-http", daemon=True).start()
    return server
