"""Pure checks of SQL text that reaches the store from outside (the query API, the served store).

A textual check is only as good as its lexer, so this one splits tokens exactly where
ClickHouse's Lexer.cpp does (nested /* */ comments, `$` inside names, heredocs only at a token
start, '' and backslash escapes, typographic quotes, // and # comments) and refuses what that
lexer could not read. ``ast_refusal`` and ``served_refusal`` read ClickHouse's own parse
(``EXPLAIN AST``), which no quoting or escaping can fool; callers that can ask the engine use
both.
"""

from __future__ import annotations

import re

from pipeline.errors import QueryRefused

# table functions (and the scalar file()) that read or write files, or reach the network or
# other processes: refused everywhere, whatever the statement
IO_FUNCTIONS = frozenset(name.lower() for name in (
    "file", "fileCluster", "url", "urlCluster", "s3", "s3Cluster", "gcs", "oss", "cosn",
    "hdfs", "hdfsCluster", "remote", "remoteSecure", "cluster", "clusterAllReplicas",
    "mysql", "postgresql", "jdbc", "odbc", "sqlite", "mongodb", "redis", "executable",
    "azureBlobStorage", "azureBlobStorageCluster", "hive", "input", "python", "arrowFlight",
    "ytsaurus",
    # disk(type = local, path = '/anywhere') in a table's SETTINGS stores parts anywhere
    "disk",
))
# families with many members (icebergS3, deltaLakeCluster, ...), and the Filesystem engine
_IO_PREFIXES = ("iceberg", "deltalake", "hudi", "paimon", "filesystem")
# table functions that only burn the worker's time or memory, or read outside the ledger
HEAVY_FUNCTIONS = frozenset(name.lower() for name in (
    "dictionary", "loop", "merge", "view", "generateRandom", "numbers_mt", "fuzzJSON",
    "fuzzQuery",
))
_CALL = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_FILE_CLAUSE = re.compile(r"\b(INTO\s+OUTFILE|FROM\s+INFILE)\b", re.I)
_AST_FUNCTION = re.compile(r"^\s*Function (\S+)", re.M)
# `INTO OUTFILE 'path'` is the only clause that puts a string literal directly under a query
# node (a nested EXPLAIN hoists it or keeps it on the inner query, so any depth counts)
_QUERY_NODES = ("SelectWithUnionQuery", "Explain", "Show", "Describe", "Exists")


_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
# ClickHouse's quoted strings and names written with typographic quotes: ‘...’ and “...”
_UNICODE_QUOTES = {"\u2018": ("\u2019", "string"), "\u201c": ("\u201d", "qident")}
# token kinds after which a `.` is a qualifier and digits are a plain integer (x.1.1)
_BEFORE_DOT = frozenset({"close", "word", "qident", "number"})


def _separator(sql: str, i: int, start_of_block: bool, hexa: bool) -> bool:
    """ClickHouse's isNumberSeparator: an `_` between two digits of one number."""
    if start_of_block or sql[i] != "_" or i + 1 >= len(sql):
        return False
    return sql[i + 1] in (_HEX if hexa else _DIGITS)


def _digits(sql: str, i: int, digits: frozenset[str], block: bool, hexa: bool) -> int:
    while i < len(sql) and (sql[i] in digits or _separator(sql, i, block, hexa)):
        i += 1
        block = False
    return i


def _number(sql: str, i: int, prev: str) -> tuple[int, str]:
    """End and kind of the number (or 1abc word) at ``i``, as ClickHouse's lexer reads it."""
    n, start = len(sql), i
    if prev == "dot":  # x.1.1 is x . 1 . 1
        i = _digits(sql, i + 1, _DIGITS, False, False)
    else:
        block = hexa = False
        if i + 2 < n and sql[i] == "0" and sql[i + 1] in "xXbB":
            valid = sql[i + 2] in _HEX if sql[i + 1] in "xX" else sql[i + 2] in "01"
            hexa = valid and sql[i + 1] in "xX"
            i, block = (i + 2, True) if valid else (i + 1, False)
        else:
            i += 1
        digits = _HEX if hexa else _DIGITS
        i = _digits(sql, i, digits, block, hexa)
        if i < n and sql[i] == ".":
            i = _digits(sql, i + 1, digits, True, hexa)
        if i + 1 < n and sql[i] in ("pP" if hexa else "eE"):
            i += 1
            if i + 1 < n and sql[i] in "-+":
                i += 1
            i = _digits(sql, i, _DIGITS, True, False)
    if i < n and sql[i] in _WORD:
        while i < n and sql[i] in _WORD:
            i += 1
        if any(c not in _WORD and c != "$" for c in sql[start:i]):
            raise QueryRefused(f"malformed number {sql[start:i]!r}")
        return i, "word"
    return i, "number"


def _quoted(sql: str, i: int) -> int:
    """End of the '...', "..." or `...` token at ``i`` (backslash escapes, doubled quotes)."""
    quote, n = sql[i], len(sql)
    i += 1
    while True:
        while i < n and sql[i] not in (quote, "\\"):
            i += 1
        if i >= n:
            break
        if sql[i] == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 2  # a backslash and the character it escapes
        if i > n:
            break
    what = "string" if quote == "'" else "quoted name"
    raise QueryRefused(f"unclosed {what} (a {quote} without its closing {quote})")


def _unquote(ident: str) -> str:
    if "\\" in ident:
        # ClickHouse decodes escapes in quoted names (`fi\x6ce` is file): refuse, not decode
        raise QueryRefused("escape sequences in quoted identifiers are not allowed: write the "
                           "name plainly")
    # a quoted name reads as the bare word it spells, so `file`( is seen as file(
    return re.sub(r"\W", "_", ident) or "_"


def _comment_end(sql: str, i: int) -> int:
    """End of the /* comment starting at ``i``: ClickHouse nests them, /* /* */ */ is one."""
    n, depth = len(sql), 1
    i += 2
    while i + 2 <= n:
        pair = sql[i:i + 2]
        if pair == "/*":
            i, depth = i + 2, depth + 1
        elif pair == "*/":
            i, depth = i + 2, depth - 1
            if depth == 0:
                return i
        else:
            i += 1
    raise QueryRefused("unclosed /* comment (ClickHouse nests /* */ comments: count them)")


def _tokens(sql: str) -> list[tuple[str, str]]:
    """(kind, text) of every token, split exactly where ClickHouse's lexer (Lexer.cpp) splits.

    Kinds: space, comment, string (incl. heredocs), qident (text is the bare name), word,
    number, close, dot, other. Unclosed strings and comments are refused: ClickHouse could
    not parse them either.
    """
    out: list[tuple[str, str]] = []
    n, i, prev = len(sql), 0, "other"
    while i < n:
        c, start = sql[i], i
        kind = "other"
        if c in " \t\n\r\f\v":
            while i < n and sql[i] in " \t\n\r\f\v":
                i += 1
            kind = "space"
        elif c in _DIGITS:
            i, kind = _number(sql, i, prev)
        elif c == "'":
            i, kind = _quoted(sql, i), "string"
        elif c in "\"`":
            i, kind = _quoted(sql, i), "qident"
        elif c == ".":
            if i > 0 and (not (i + 1 < n and sql[i + 1] in _DIGITS) or prev in _BEFORE_DOT):
                i, kind = i + 1, "dot"
            else:
                i = _digits(sql, i + 1, _DIGITS, True, False)
                if i + 1 < n and sql[i] in "eE":
                    i += 1
                    if i + 1 < n and sql[i] in "-+":
                        i += 1
                    i = _digits(sql, i, _DIGITS, True, False)
                kind = "number"
        elif c == "-" and sql.startswith("--", i) or c == "/" and sql.startswith("//", i) \
                or c == "#" and i + 1 < n and sql[i + 1] in " !":
            end = sql.find("\n", i)
            i, kind = (n if end < 0 else end), "comment"
        elif c == "/" and sql.startswith("/*", i):
            i, kind = _comment_end(sql, i), "comment"
        elif c in "-<>=!|:@\\":
            i += 2 if sql[i:i + 2] in ("->", "<=", "<>", ">=", "==", "!=", "||", "::", "@@",
                                       "\\G") else 1
            if sql[start:start + 3] == "<=>":
                i = start + 3
        elif c in ")]":
            i, kind = i + 1, "close"
        elif c in _UNICODE_QUOTES:
            closing, kind = _UNICODE_QUOTES[c]
            end = sql.find(closing, i + 1)
            if end < 0:
                raise QueryRefused(f"unclosed {c} quote")
            i = end + 1
        elif c == "$" and (tag_end := sql.find("$", i + 1)) >= 0 \
                and (close := sql.find(sql[i:tag_end + 1], tag_end + 1)) >= 0:
            # a heredoc only where a token starts ($tag$ ... $tag$, any tag): x$a$ is a name
            i, kind = close + tag_end + 1 - i, "string"
        elif c == "$" and (i + 1 == n or sql[i + 1] not in _WORD):
            i += 1
        elif c in "xXbB" and i + 2 < n and sql[i + 1] == "'":
            j = i + 2
            while j < n and sql[j] in (_HEX if c in "xX" else "01"):
                j += 1
            if j >= n or sql[j] != "'":
                raise QueryRefused(f"malformed {c}'...' literal")
            i, kind = j + 1, "string"
        elif c in _WORD or c == "$":
            while i < n and (sql[i] in _WORD or sql[i] == "$"):
                i += 1
            kind = "word"
        else:
            # other ASCII punctuation is one token; anything else outside quotes is
            # whitespace to ClickHouse (U+00A0, U+2003, ...) or an error
            i += 1
            if not c.isascii():
                kind = "space"
        text = sql[start:i]
        if kind == "qident":
            text = text[1:-1]
        out.append((kind, text))
        if kind not in ("space", "comment"):
            prev = kind
        elif not c.isascii():
            prev = "other"  # ClickHouse reads it as a minus or an error, never as a name
    return out


def bare(sql: str) -> str:
    """``sql`` with strings blanked, comments removed and quoted identifiers unquoted.

    What stays is what ClickHouse reads as code, token for token, so a word check on it
    sees every keyword and function name the engine will.
    """
    parts = []
    for kind, text in _tokens(sql):
        if kind == "string":
            parts.append("''")
        elif kind == "comment":
            parts.append(" ")
        elif kind == "qident":
            parts.append(_unquote(text))
        elif kind == "space" and not text.isascii():
            parts.append(" ")
        else:
            parts.append(text)
    return "".join(parts)


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


def _ast_lines(explain_ast: str) -> list[tuple[int, str]]:
    """(depth, node) of each line of ``EXPLAIN AST`` output (one space of indent per level)."""
    out = []
    for line in explain_ast.splitlines():
        node = line.lstrip(" ")
        if node:
            out.append((len(line) - len(node), node))
    return out


def heavy_refusal(text: str) -> str | None:
    """Why ``text`` (already ``bare``) must not run, if it calls a ``HEAVY_FUNCTIONS`` one."""
    for m in _CALL.finditer(text):
        if m.group(1).lower() in HEAVY_FUNCTIONS:
            return (f"table function {m.group(1)}() is not allowed: queries read tokenmeter's "
                    "tables only")
    return None


def ast_refusal(explain_ast: str, *, heavy: bool = False) -> str | None:
    """Why a statement must not run, judged from its ``EXPLAIN AST`` output.

    ``heavy`` also refuses the table functions that only burn time or memory
    (``HEAVY_FUNCTIONS``), as the read-only query API does.
    """
    for name in _AST_FUNCTION.findall(explain_ast):
        if is_io_function(name):
            return f"function {name}() is not allowed: it reads or writes files or the network"
        if heavy and name.lower() in HEAVY_FUNCTIONS:
            return (f"table function {name}() is not allowed: queries read tokenmeter's "
                    "tables only")
    parents: list[str] = []  # the node at each depth on the path to the current line
    for depth, node in _ast_lines(explain_ast):
        del parents[depth:]
        parent = parents[depth - 1] if depth and len(parents) >= depth else ""
        if node.startswith("Literal '") and parent.startswith(_QUERY_NODES):
            return "INTO OUTFILE is not allowed"
        if parent.startswith("InsertQuery") and depth == 1:
            # an insert's only literal child is FROM INFILE's path (or its COMPRESSION)
            if node.startswith("Literal"):
                return "FROM INFILE is not allowed: send the data in the request body"
            if node.startswith("Function"):
                return "INSERT INTO FUNCTION is not allowed: insert into a table"
        if node.startswith(("TableIdentifier ", "Identifier ")) and "/" in node:
            # clickhouse-local's default database reads a file named like a table
            return f"{node.split(' ', 1)[1]!r} looks like a file path: name a table"
        parents.extend([""] * (depth - len(parents)))
        parents.append(node)
    return None


# --- the served store: what a credential holder may run ------------------------------------

_READ_ROOTS = ("SelectWithUnionQuery", "SelectIntersectExceptQuery", "Explain", "Show",
               "Describe", "Exists")
# what tokenmeter's own processes send (migrations, sink, ledger, reprice, budgets)
_WRITE_ROOTS = frozenset({"InsertQuery", "CreateQuery", "AlterQuery", "DropQuery",
                          "TruncateQuery", "OptimizeQuery", "DeleteQuery", "Rename"})
_CREATE_KIND = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?(TABLE|VIEW|MATERIALIZED\s+VIEW|"
    r"DATABASE)\b", re.I)
_ENGINES = frozenset({"Memory", "Null", "Atomic"})
_ALTER_COMMANDS = frozenset({
    "ADD_COLUMN", "DROP_COLUMN", "MODIFY_COLUMN", "RENAME_COLUMN", "COMMENT_COLUMN",
    "CLEAR_COLUMN", "MATERIALIZE_COLUMN", "MODIFY_SETTING", "RESET_SETTING", "DELETE",
    "UPDATE", "REPLACE_PARTITION", "ATTACH_PARTITION", "DROP_PARTITION", "ADD_INDEX",
    "DROP_INDEX", "MATERIALIZE_INDEX", "CLEAR_INDEX", "MODIFY_TTL", "REMOVE_TTL",
    "MODIFY_ORDER_BY", "MODIFY_COMMENT", "MODIFY_QUERY", "ADD_PROJECTION", "DROP_PROJECTION",
    "MATERIALIZE_PROJECTION", "CLEAR_PROJECTION",
})
# chDB's `default` database is clickhouse-local's: a table name there can be a file's
_DEFAULT_DB = re.compile(r"(?<![\w$.])default\s*\.")
# format settings that name files the engine reads or writes (schemas, templates)
_FILE_SETTING = re.compile(
    r"\b(?:output_)?format_(?:schema\w*|template_\w+|capn_proto\w*|protobuf\w*)\b", re.I)


def engine_allowed(name: str) -> bool:
    """True for an engine that keeps data inside the store: MergeTree family, Memory, Null."""
    if name in _ENGINES:
        return True
    return name.endswith("MergeTree") and not name.startswith(("Replicated", "Shared"))


def setting_refusal(name: str) -> str | None:
    """Why a setting may not be set on the served store (it names a file), if it may not."""
    if _FILE_SETTING.fullmatch(name.strip()):
        return f"setting {name.strip()} is not allowed: it names a file the engine reads"
    return None


def served_refusal(bare_sql: str, explain_ast: str, method: str) -> str | None:
    """Why the served store must not run a statement, by its bare text and ClickHouse's parse.

    An allow-list: reads (any method); by POST also inserts into tables and the DDL the
    migrations, the sink and re-pricing send. Everything else (SYSTEM, BACKUP, RESTORE,
    ATTACH, dictionaries, databases or tables on other engines, ...) is refused.
    """
    refusal = ast_refusal(explain_ast)
    if refusal is not None:
        return refusal
    lines = _ast_lines(explain_ast)
    if not lines:
        return "empty statement"
    root = lines[0][1].split(" ", 1)[0]
    words = bare_sql.split()
    first = words[0].upper() if words else root
    is_read = root.startswith(_READ_ROOTS)
    if not is_read and root not in _WRITE_ROOTS:
        return (f"{first} statements are not allowed on the served store: it runs reads, "
                "inserts and the DDL tokenmeter's migrations use")
    if not is_read and method != "POST":
        return f"{first} is not read-only: GET runs read-only statements only"
    if root == "CreateQuery" and not _CREATE_KIND.match(bare_sql):
        kind = words[1].upper() if len(words) > 1 else ""
        return (f"CREATE {kind} is not allowed on the served store: only tables, views and "
                "databases")
    if _DEFAULT_DB.search(bare_sql):
        return ("the `default` database is not served: in chDB it reads files named like "
                "tables; use tokenmeter's database")
    setting = _FILE_SETTING.search(bare_sql)
    if setting:
        return f"setting {setting.group(0)} is not allowed: it names a file the engine reads"
    for i, (depth, node) in enumerate(lines):
        if node.startswith("Dictionary definition"):
            return "dictionaries are not allowed on the served store"
        if depth == 1 and node == "Identifier default":
            return ("the `default` database is not served: in chDB it reads files named like "
                    "tables; use tokenmeter's database")
        if node.startswith("Storage definition"):
            child = lines[i + 1] if i + 1 < len(lines) else (0, "")
            if child[0] == depth + 1 and child[1].startswith("Function "):
                engine = child[1].split()[1]
                if not engine_allowed(engine):
                    return (f"ENGINE = {engine} is not allowed on the served store: use the "
                            "MergeTree family, Memory or Null (Atomic for databases)")
        if root == "CreateQuery" and depth == 1 and node.startswith("Function "):
            return "tables backed by a table function are not allowed on the served store"
        if node.startswith("AlterCommand "):
            command = node.split()[1]
            if command not in _ALTER_COMMANDS:
                return f"ALTER ... {command.replace('_', ' ')} is not allowed on the served store"
    return None
