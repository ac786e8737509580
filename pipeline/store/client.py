"""ClickHouse client factory: ``chdb://`` (in-process) and ``http(s)://`` give one API."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import StoreError
from pipeline.settings import Settings, parse_dsn


@dataclass(frozen=True, slots=True)
class EncodedRows:
    """Rows already encoded for ``INSERT ... FORMAT fmt`` (store.columnar makes them)."""

    data: bytes
    fmt: str
    rows: int

    def __len__(self) -> int:
        return self.rows


class Store:
    """A ClickHouse client bound to one database; thread-safe (chDB is not re-entrant)."""

    def __init__(self, client: Any, database: str, lock_file: Any = None,
                 factory: Any = None, lock: threading.Lock | None = None) -> None:
        self.client = client
        self.database = database
        self._lock = lock or threading.Lock()
        self._lock_file = lock_file
        self._factory = factory
        self._readonly: Store | None = None
        # Arrow inserts are compressed as clickhouse-connect compresses its own requests
        # (lz4 over HTTP by default); the chDB client reads a local file, uncompressed
        codec = getattr(client, "write_compression", None)
        self.arrow_compression: str | None = codec if codec in ("lz4", "zstd") else None

    def with_database(self, database: str) -> Store:
        """The same engine and lock, another default database (tests use one each)."""
        return Store(self.client, database, factory=self._factory, lock=self._lock)

    def readonly(self, limits: dict[str, Any]) -> Store:
        """A second session on the same engine where the engine itself refuses writes.

        chDB applies per-call settings with SET and cannot restore ``readonly`` afterwards,
        so read-only queries get their own handle with ``readonly=1`` set once for good.
        """
        if self._readonly is None:
            if self._factory is None:
                raise StoreError("this store cannot open a read-only session")
            client = self._factory()
            for key, value in limits.items():
                client.command(f"SET {key} = {value!r}" if isinstance(value, str)
                               else f"SET {key} = {value}")
            client.command("SET readonly = 1")
            self._readonly = Store(client, self.database)
        return self._readonly

    def command(self, sql: str, settings: dict[str, Any] | None = None) -> Any:
        """Run a statement that returns no rows."""
        with self._lock:
            return self.client.command(sql, settings=settings)

    def query(self, sql: str, settings: dict[str, Any] | None = None,
              parameters: dict[str, Any] | None = None) -> Any:
        """Run a query; returns clickhouse-connect's QueryResult."""
        with self._lock:
            return self.client.query(sql, settings=settings, parameters=parameters)

    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Result rows of a query."""
        return list(self.query(sql, parameters=parameters).result_rows)

    def insert(self, table: str, rows: Sequence[Sequence[Any]] | EncodedRows,
               columns: Sequence[str], settings: dict[str, Any] | None = None) -> None:
        """Insert rows (or EncodedRows) into ``database.table``.

        Rows are serialized by clickhouse-connect value by value; EncodedRows are sent as
        they are (``INSERT ... FORMAT ArrowStream``, posted over HTTP, read from a file by chDB).
        """
        if isinstance(rows, EncodedRows):
            from clickhouse_connect.driver.binding import quote_identifier

            target = f"{quote_identifier(self.database)}.{quote_identifier(table)}"
            with self._lock:
                self.client.raw_insert(target, list(columns), rows.data, settings=settings,
                                       fmt=rows.fmt)
            return
        with self._lock:
            self.client.insert(table, rows, column_names=list(columns), database=self.database,
                               settings=settings)

    def close(self) -> None:
        """Close the client and release the data-dir lock."""
        if self._readonly is not None:
            self._readonly.client.close()
            self._readonly = None
        with self._lock:
            try:
                self.client.close()
            finally:
                if self._lock_file is not None:
                    self._lock_file.close()
                    self._lock_file = None


def lock_data_dir(path: Path) -> Any:
    """Hold ``path`` for this process (chDB opens a directory in one process only)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock = open(path.parent / f"{path.name}.lock", "a+")  # noqa: SIM115 - held for life
    except OSError as exc:
        raise StoreError(
            f"ClickHouse data dir {path} is not writable ({exc.strerror}); "
            "set TOKENMETER_DATA_DIR or --data-dir to a writable directory"
        ) from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StoreError(
            f"ClickHouse data dir {path} is held by another process (pid {holder}); chDB "
            "opens a directory in one process only: stop that process, or use "
            "`tokenmeter query` which goes through a running worker's HTTP API"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def open_store(settings: Settings, database: str | None = None) -> Store:
    """Open the configured ClickHouse (embedded chDB or server) and check it answers."""
    import clickhouse_connect

    dsn = parse_dsn(settings.dsn)
    db = database or settings.clickhouse_database
    lock = None
    try:
        if dsn.scheme == "chdb":
            assert dsn.path is not None
            path = Path(dsn.path)
            lock = lock_data_dir(path)
            chdb_dsn = f"chdb://{path.resolve()}"

            def factory() -> Any:
                return clickhouse_connect.get_client(dsn=chdb_dsn)

        else:
            extra: dict[str, Any] = {}
            if settings.clickhouse_password is not None:
                extra["password"] = settings.clickhouse_password.get_secret_value()

            def factory() -> Any:
                return clickhouse_connect.get_client(
                    dsn=dsn.raw, connect_timeout=5, send_receive_timeout=60, **extra
                )

        client = factory()
        client.command("SELECT 1")
    except StoreError:
        raise
    except Exception as exc:
        if lock is not None:
            lock.close()
        raise StoreError(
            f"cannot open ClickHouse at {dsn!r}: {str(exc).splitlines()[0][:200]}; "
            "check TOKENMETER_CLICKHOUSE_DSN or --clickhouse"
        ) from None
    return Store(client, db, lock, factory=factory)
