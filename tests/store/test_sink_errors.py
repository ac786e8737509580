"""The sink retries only what a retry can fix; a refused insert fails loudly, at once."""

from __future__ import annotations

import asyncio
import socket
import struct
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    DataError,
    OperationalError,
    ProgrammingError,
)

from pipeline.errors import StoreWriteFailed
from pipeline.store.client import Store
from pipeline.store.sink import STATUS_COLUMNS, Fault, Sink, classify_store_error

AT = datetime(2026, 6, 17, 10, 20, 30, tzinfo=timezone.utc)


def ch(code: int, name: str, cls: type[Exception] = DatabaseError) -> Exception:
    return cls(f"Code: {code}. DB::Exception: fault injected. ({name})", code=code, name=name)


@pytest.mark.parametrize(
    "exc, fault",
    [
        # the server or the path to it: the same insert can succeed later
        (ConnectionRefusedError("Connection refused"), Fault.transient),
        (ConnectionResetError("reset by peer"), Fault.transient),
        (TimeoutError("timed out"), Fault.transient),
        (socket.gaierror("Name or service not known"), Fault.transient),
        (OperationalError("Error executing HTTP request attempt 1"), Fault.transient),
        (DatabaseError("HTTP driver received HTTP status 503, server response: busy"),
         Fault.transient),
        (ch(252, "TOO_MANY_PARTS"), Fault.transient),
        (ch(159, "TIMEOUT_EXCEEDED"), Fault.transient),
        (ch(209, "SOCKET_TIMEOUT"), Fault.transient),
        (ch(210, "NETWORK_ERROR"), Fault.transient),
        (ch(241, "MEMORY_LIMIT_EXCEEDED"), Fault.transient),
        (ch(202, "TOO_MANY_SIMULTANEOUS_QUERIES"), Fault.transient),
        (ch(242, "TABLE_IS_READ_ONLY"), Fault.transient),
        (ch(319, "UNKNOWN_STATUS_OF_INSERT", OperationalError), Fault.transient),
        # the rows or the schema: every retry fails the same way
        (ch(407, "DECIMAL_OVERFLOW"), Fault.terminal),
        (ch(69, "ARGUMENT_OUT_OF_BOUND"), Fault.terminal),
        (ch(6, "CANNOT_PARSE_TEXT"), Fault.terminal),
        (ch(53, "TYPE_MISMATCH"), Fault.terminal),
        (ch(27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED"), Fault.terminal),
        (ch(16, "NO_SUCH_COLUMN_IN_TABLE"), Fault.terminal),
        (ch(47, "UNKNOWN_IDENTIFIER"), Fault.terminal),
        (ch(62, "SYNTAX_ERROR"), Fault.terminal),
        (ch(60, "UNKNOWN_TABLE"), Fault.terminal),
        # the HTTP client marks a retried request Operational even with a terminal code
        (ch(407, "DECIMAL_OVERFLOW", OperationalError), Fault.terminal),
        (DatabaseError("HTTP driver received HTTP status 400, server response: bad"),
         Fault.terminal),
        (DataError("Unable to create native array for column `percent`: error"),
         Fault.terminal),
        (ProgrammingError("Unrecognized column 'nosuch' in table x"), Fault.terminal),
        (InvalidOperation([InvalidOperation]), Fault.terminal),
        (struct.error("argument out of range"), Fault.terminal),
        (OverflowError("int too big to convert"), Fault.terminal),
        (TypeError("unsupported type"), Fault.terminal),
        (DatabaseError("The ClickHouse server returned an error", code=12345), Fault.terminal),
    ],
)
def test_classify_store_error(exc: Exception, fault: Fault) -> None:
    assert classify_store_error(exc) is fault


def status_row(percent: Decimal) -> list[Any]:
    return ["b1", "acme", AT, AT, "cost", Decimal("0.25"), Decimal("0.000001"), percent,
            "soft", AT]


class CountingStore:
    """The real store, counting insert attempts; optionally failing the first few."""

    def __init__(self, real: Store, fail_first: int = 0) -> None:
        self.real = real
        self.fail_first = fail_first
        self.attempts = 0

    def insert(self, *args: Any, **kwargs: Any) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            # a fault chDB cannot be made to raise for real: the connection dropping
            raise OperationalError("Error executing HTTP request attempt 1: "
                                   "Connection refused (fault injected)")
        self.real.insert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.integration
def test_terminal_insert_is_not_retried_and_surfaces_as_failure(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    counting = CountingStore(store)
    sink = Sink(counting, max_backoff_s=0.05)  # type: ignore[arg-type]
    # 10^40 percent fits no ClickHouse Decimal(76, 6): a real refusal by the real client
    too_big = Decimal(10) ** 71

    async def run() -> None:
        await asyncio.wait_for(
            sink.write_rows("budget_status", [status_row(too_big)], STATUS_COLUMNS), 10)

    with pytest.raises(StoreWriteFailed, match="budget_status.*for good"):
        asyncio.run(run())
    assert counting.attempts == 1  # not retried
    assert sink.failure is not None and "restart the worker" in sink.failure
    assert not sink.healthy
    assert any(r.levelname == "ERROR" and "for good" in r.getMessage() for r in caplog.records)
    n = store.rows(f"SELECT count() FROM {store.database}.budget_status")[0][0]
    assert n == 0


@pytest.mark.integration
def test_transient_insert_is_retried_and_lands_once(store: Store) -> None:
    counting = CountingStore(store, fail_first=2)
    sink = Sink(counting, max_backoff_s=0.05)  # type: ignore[arg-type]

    async def run() -> None:
        await asyncio.wait_for(
            sink.write_rows("budget_status", [status_row(Decimal("25000000"))],
                            STATUS_COLUMNS), 10)

    asyncio.run(run())
    assert counting.attempts == 3
    assert sink.failures == 2 and sink.healthy and sink.failure is None
    rows = store.rows(f"SELECT budget_id, percent FROM {store.database}.budget_status")
    assert rows == [("b1", Decimal("25000000"))]
