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

The screening is in ``clickhouse_guard`` (pure functions) and the chDB engine in
``clickhouse_engine``; this module is the HTTP server and keeps their names importable.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import SecretStr

from pipeline.embedded.clickhouse_engine import Engine
from pipeline.embedded.clickhouse_guard import (
    RequestRefused,
    database_refusal,
    decode_body,
    host_allowed,
    parse_set,
    parsed_refusal,
    presented_secret,
    request_refusal,
    settings_clause,
    settings_refusal,
    split_insert,
    statement_refusal,
)

__all__ = [
    "NO_DATABASE",
    "PROTOCOL_PARAMS",
    "Engine",
    "Handler",
    "RequestRefused",
    "Server",
    "database_refusal",
    "decode_body",
    "host_allowed",
    "parse_set",
    "parsed_refusal",
    "presented_secret",
    "request_refusal",
    "serve",
    "settings_clause",
    "settings_refusal",
    "split_insert",
    "statement_refusal",
]

log = logging.getLogger(__name__)

# request parameters that steer the HTTP protocol and are not ClickHouse settings
PROTOCOL_PARAMS = frozenset({
    "query", "database", "default_format", "query_id", "session_id", "session_timeout",
    "session_check", "compress", "decompress", "enable_http_compression",
    "wait_end_of_query", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "client_protocol_version", "user", "password", "quota_key", "buffer_size",
    "http_response_buffer_size", "role", "add_http_cors_header",
})
_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_CODE = re.compile(r"Code:\s*(\d+)")
_MAX_VERDICTS = 512
# chDB's `default` database reads files named like tables, so requests without a database
# run in `system` (the workers name every table with its database anyway)
NO_DATABASE = "system"


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
