"""The served store's screening of requests and statements, and its parsing helpers.

Pure functions over a request's method, path, headers, statement text and settings (no
sockets, no chDB): the Host and browser-header checks, the credential, the textual and
parse-level statement checks, the ``database`` and settings checks, and the parsing of
inserts with data, ``SET`` statements, settings clauses, bodies, parameters and paths.
The server (``clickhouse_http``) calls them before a request reaches the engine.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import re
import zlib
from collections.abc import Mapping
from urllib.parse import urlsplit

from pydantic import SecretStr

from pipeline.errors import QueryRefused, StoreError
from pipeline.store import sql_guard

_INSERT_WITH_DATA = re.compile(
    rb"^\s*(INSERT\s+INTO\s+.+?)\s+(?:SETTINGS\s+(.+?)\s+)?FORMAT\s+(\w+)[ \t]*(?:\r?\n|$)",
    re.IGNORECASE | re.DOTALL)
_SET = re.compile(r"^\s*SET\s+(.+?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_DATABASE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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


def escape_param(value: str) -> str:
    """A query parameter value as ClickHouse reads one (the escaped text format)."""
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r").replace("\0", "\\0"))


def repr_path(path: str) -> str:
    """A file path as a ClickHouse string literal."""
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"
