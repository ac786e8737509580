"""ClickHouse's HTTP interface over an embedded chDB store, for several local processes.

chDB opens a data directory in one process only, so two workers on one machine cannot both
embed it. This adapter owns the directory and answers the subset of ClickHouse's HTTP
protocol that clickhouse-connect's HTTP client speaks (queries in any format, inserts with a
data body, settings, ``param_`` bindings, sessions for ``SET``), so workers reach it with an
``http://`` DSN: the production code path, with only the server being embedded.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import tempfile
import threading
import uuid
import zlib
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

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

    def _handle(self) -> None:
        url = urlsplit(self.path)
        if url.path.rstrip("/") == "/ping":
            self._reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        query_id = uuid.uuid4().hex
        try:
            body = self._body()
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            status, out, fmt = self.server.run(params, body)
            headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": "UTC",
                       "X-ClickHouse-Summary": json.dumps(out[1]),
                       "Content-Type": "application/octet-stream"}
            if fmt:
                headers["X-ClickHouse-Format"] = fmt
            self._reply(status, out[0], headers)
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

    def __init__(self, address: tuple[str, int], engine: Engine) -> None:
        super().__init__(address, Handler)
        self.engine = engine

    def close(self) -> None:
        """Stop serving and close the engine's connections."""
        self.shutdown()
        self.engine.close()

    def run(self, params: dict[str, str], body: bytes
            ) -> tuple[int, tuple[bytes, dict[str, str]], str | None]:
        """(status, (body, summary), format) of one request."""
        query = params.get("query")
        database = params.get("database", "")
        session = params.get("session_id")
        settings = dict(self.engine.sessions.get(session, {})) if session else {}
        settings.update({k: v for k, v in params.items()
                         if k not in PROTOCOL_PARAMS and not k.startswith("param_")})
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        text = (query.encode() + (b"\n" + body if body else b"")) if query else body
        insert = split_insert(text)
        if insert is not None and insert[3].strip():
            target, inline, fmt, data = insert
            if inline:
                settings.update(parse_set("SET " + inline) or {})
            result = self.engine.insert(target, data, fmt, database=database, settings=settings)
            return 200, (b"", _summary(result, written=True)), None
        sql = text.decode()
        assignments = parse_set(sql)
        if assignments is not None:
            if session:
                self.engine.sessions.setdefault(session, {}).update(assignments)
            return 200, (b"", {}), None
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


def serve(path: Path, host: str, port: int) -> Server:
    """A started server (in a thread) over the chDB store at ``path``."""
    server = Server((host, port), Engine(path))
    threading.Thread(target=server.serve_forever, name="clickhouse-http", daemon=True).start()
    return server
