"""The read-only query surface used by `tokenmeter query` and `POST /api/query`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from pipeline.errors import QueryRefused, StoreError
from pipeline.store import sql_guard
from pipeline.store.client import Store

MAX_SQL_CHARS = 100_000
READ_ONLY_LIMITS: dict[str, Any] = {
    "max_execution_time": 30,
    "max_result_rows": 100_000,
    "result_overflow_mode": "throw",
    "max_memory_usage": 2_000_000_000,
}
_FIRST = re.compile(r"^\s*\(*\s*(select|with|show|describe|desc|explain|exists)\b", re.I)
_DENIED_WORDS = re.compile(
    r"\b(insert|alter|drop|create|system(?!\s*\.)|set|truncate|rename|optimize|kill|grant|revoke|"
    r"attach|detach|delete|update|exchange|move|backup|restore|settings|outfile|infile)\b",
    re.I,
)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Column names and JSON-safe rows."""

    columns: list[str]
    rows: list[list[Any]]


def check_read_only(sql: str) -> str:
    """Return the single statement to run, or raise QueryRefused saying why."""
    if len(sql) > MAX_SQL_CHARS:
        raise QueryRefused(f"query is {len(sql)} characters; the limit is {MAX_SQL_CHARS}")
    bare = sql_guard.bare(sql).strip()
    statement = sql.strip()
    if bare.endswith(";"):
        bare = bare[:-1].rstrip()
        statement = statement.rstrip().rstrip(";").rstrip()
    if not bare:
        raise QueryRefused("empty query")
    if ";" in bare:
        raise QueryRefused("only one statement per query is allowed")
    if not _FIRST.match(bare):
        raise QueryRefused(
            "only read-only queries run here (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN)"
        )
    word = _DENIED_WORDS.search(bare)
    if word:
        raise QueryRefused(f"{word.group(1).upper()} is not allowed in a read-only query")
    io = sql_guard.io_refusal(bare)
    if io:
        raise QueryRefused(f"{io}; queries read tokenmeter's tables only")
    heavy = sql_guard.heavy_refusal(bare)
    if heavy:
        raise QueryRefused(heavy)
    return statement


def json_safe(value: Any) -> Any:
    """Convert a ClickHouse value into something JSON can carry without losing money."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat() if value.tzinfo else value.isoformat() + "Z"
    if isinstance(value, date | UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def run_read_only(store: Store, sql: str) -> QueryResult:
    """Check and run one read-only query against ``store`` (default database set)."""
    return execute_read_only(store, check_read_only(sql))


def execute_read_only(store: Store, statement: str) -> QueryResult:
    """Run ``statement`` in the read-only session, after ClickHouse's own parse of it passes.

    ``readonly=1`` stops writes and the file/url table functions, but chDB still runs the
    scalar ``file()`` and ``INTO OUTFILE`` under it, so the parsed statement is checked too:
    that check holds whatever quoting or escaping fooled the textual one. chDB runs every
    statement of a multi-statement text, so ``EXPLAIN AST`` only sees text that
    ``formatQuery`` (which takes it as a bound string and never runs it) parsed as one.
    """
    session = store.readonly(READ_ONLY_LIMITS)
    try:
        session.query("SELECT formatQuery({q:String})", parameters={"q": statement})
        ast = "\n".join(str(row[0]) for row in session.query(f"EXPLAIN AST {statement}")
                        .result_rows)
        refusal = sql_guard.ast_refusal(ast, heavy=True)
        if refusal is None:
            result = session.query(statement)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"query failed: {message[:500]}") from None
    if refusal is not None:
        raise QueryRefused(f"{refusal}; queries read tokenmeter's tables only")
    return QueryResult(
        columns=list(result.column_names),
        rows=[[json_safe(v) for v in row] for row in result.result_rows],
    )
