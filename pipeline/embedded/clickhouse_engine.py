"""The chDB engine behind the served store: connections keyed by database and settings.

chDB opens a data directory in one process only; ``Engine`` holds it open and runs the
server's statements, parse checks and inserts one call at a time.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pipeline.embedded.clickhouse_guard import escape_param, repr_path, settings_clause

_MAX_CONNECTIONS = 16


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
