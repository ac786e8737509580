"""Pure checks of SQL text that reaches the store from outside (the query API, the served store).

A textual check is only as good as its lexer, so this one follows ClickHouse's where it matters
(one left-to-right pass over strings, heredocs, quoted identifiers and comments) and errs on the
side of refusing. ``functions_in_ast`` reads ClickHouse's own parse (``EXPLAIN AST``), which no
quoting or escaping can fool; callers that can ask the engine use both.
"""

from __future__ import annotations

import re

from pipeline.errors import QueryRefused

# one ClickHouse lexeme that can hide text: a string, heredoc, quoted identifier or comment.
# `#` starts a comment only before a space or `!` (ClickHouse's lexer rejects a bare `#`);
# nested /* */ comments end later in ClickHouse than here, so more text is checked, not less.
_LEXEME = re.compile(
    r"'(?:[^'\\]|\\.|'')*'"
    r"|\$(?P<tag>[A-Za-z0-9_]*)\$.*?\$(?P=tag)\$"
    r"|\"(?P<dq>(?:[^\"\\]|\\.|\"\")*)\""
    r"|`(?P<bq>(?:[^`\\]|\\.|``)*)`"
    r"|--[^\n]*|#[ !][^\n]*|/\*.*?\*/",
    re.S,
)
# table functions (and the scalar file()) that read or write files, or reach the network or
# other processes: refused everywhere, whatever the statement
IO_FUNCTIONS = frozenset(name.lower() for name in (
    "file", "fileCluster", "url", "urlCluster", "s3", "s3Cluster", "gcs", "oss", "cosn",
    "hdfs", "hdfsCluster", "remote", "remoteSecure", "cluster", "clusterAllReplicas",
    "mysql", "postgresql", "jdbc", "odbc", "sqlite", "mongodb", "redis", "executable",
    "azureBlobStorage", "azureBlobStorageCluster", "hive", "input", "python", "arrowFlight",
    "ytsaurus",
))
# families with many members (icebergS3, deltaLakeCluster, ...)
_IO_PREFIXES = ("iceberg", "deltalake", "hudi", "paimon")
_CALL = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_FILE_CLAUSE = re.compile(r"\b(INTO\s+OUTFILE|FROM\s+INFILE)\b", re.I)
_AST_FUNCTION = re.compile(r"^\s*Function (\S+)", re.M)
# `INTO OUTFILE 'path'` is the only clause that puts a string literal directly under a query
# node (a nested EXPLAIN hoists it or keeps it on the inner query, so any depth counts)
_QUERY_NODES = ("SelectWithUnionQuery", "Explain", "Show", "Describe", "Exists")


def _unquote(match: re.Match[str]) -> str:
    ident = match.group("dq") if match.group("dq") is not None else match.group("bq")
    if ident is None:
        return " " if match.group(0)[0] in "-#/" else "''"
    if "\\" in ident:
        # ClickHouse decodes escapes in quoted names (`fi\x6ce` is file): refuse, not decode
        raise QueryRefused("escape sequences in quoted identifiers are not allowed: write the "
                           "name plainly")
    # a quoted name reads as the bare word it spells, so `file`( is seen as file(
    return re.sub(r"\W", "_", ident) or "_"


def bare(sql: str) -> str:
    """``sql`` with strings blanked, comments removed and quoted identifiers unquoted."""
    return _LEXEME.sub(_unquote, sql)


def is_io_function(name: str) -> bool:
    """True for a function that touches files, the network or other processes."""
    low = name.lower()
    return low in IO_FUNCTIONS or low.startswith(_IO_PREFIXES)


def io_refusal(text: str) -> str | None:
    """Why ``text`` (already ``bare``) must not run, if it calls an I/O function or file clause."""
    clause = _FILE_CLAUSE.search(text)
    if clause:
        return f"{' '.join(clause.group(1).upper().split())} is not allowed"
    for m in _CALL.finditer(text):
        if is_io_function(m.group(1)):
            return (f"function {m.group(1)}() is not allowed: it reads or writes files or the "
                    "network")
    return None


def ast_refusal(explain_ast: str) -> str | None:
    """Why a statement must not run, judged from its ``EXPLAIN AST`` output."""
    for name in _AST_FUNCTION.findall(explain_ast):
        if is_io_function(name):
            return f"function {name}() is not allowed: it reads or writes files or the network"
    parents: list[str] = []  # the node at each depth on the path to the current line
    for line in explain_ast.splitlines():
        node = line.lstrip(" ")
        depth = len(line) - len(node)
        del parents[depth:]
        if node.startswith("Literal '") and depth and parents[depth - 1].startswith(_QUERY_NODES):
            return "INTO OUTFILE is not allowed"
        parents.extend([""] * (depth - len(parents)))
        parents.append(node)
    return None
