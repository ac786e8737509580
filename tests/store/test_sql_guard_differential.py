"""Differential test: the textual SQL check against ClickHouse's own parse of the same text.

For generated statements that mix I/O function calls with comments, quotes, heredocs and
``$``-names, whenever chDB's ``EXPLAIN AST`` shows an I/O function, the textual check must
refuse (no false negatives). Texts chDB cannot parse as one statement are skipped: nothing
runs them (``formatQuery`` refuses them before ``EXPLAIN AST`` sees them).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import QueryRefused
from pipeline.store import sql_guard

# pieces ClickHouse's lexer treats specially, and calls the check must see
PIECES = [
    "1", " ", "\n", ",", "(", ")", ".", "-", "e", "x", "a", "AS", "y",
    "/*", "*/", "--", "//", "# ", "#", "'", "''", "\\", '"', "`", "$", "$$", "$a$", "$a",
    "x$a$", "a$", "\u2018", "\u2019", "\u201c", "\u201d", "\u2003", "1e-", ".5", "0x1F",
    "x'1F'", "b'01'",
    "file('/nonexistent/a2')", "`file`('/nonexistent/a2')", '"file"(\'/nonexistent/a2\')',
    "\u201cfile\u201d('/nonexistent/a2')", "url('http://127.0.0.1:9/')", "file",
]
statements = st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map(
    lambda parts: "SELECT " + "".join(parts))


def _text_refuses(sql: str) -> bool:
    try:
        return sql_guard.io_refusal(sql_guard.bare(sql)) is not None
    except QueryRefused:
        return True


def _parse(store, sql: str) -> str | None:
    """chDB's EXPLAIN AST of ``sql``, or None if it is not one parseable statement."""
    try:
        store.rows("SELECT formatQuery({q:String})", parameters={"q": sql})
        return str(store.command(f"EXPLAIN AST {sql}"))
    except Exception:  # noqa: BLE001 - any parse error: nothing would run it
        return None


@pytest.mark.parametrize("sql", [
    # the review's bypasses, so the property is seen to bite on known cases
    "SELECT /* /* */ ' */ file('/nonexistent/a2') AS c",
    "SELECT 1 AS x$a$, file('/nonexistent/a2') AS y$a$",
])
def test_known_bypasses_are_io_by_the_parse_and_refused_by_the_text(store, sql: str) -> None:
    ast = _parse(store, sql)
    assert ast is not None and sql_guard.ast_refusal(ast) is not None
    assert _text_refuses(sql)


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sql=statements)
def test_text_check_refuses_whenever_the_parse_shows_an_io_function(store, sql: str) -> None:
    ast = _parse(store, sql)
    if ast is None or not any(sql_guard.is_io_function(name)
                              for name in sql_guard._AST_FUNCTION.findall(ast)):
        return
    assert _text_refuses(sql), (sql, ast)
