"""The request parsing of the embedded ClickHouse HTTP server (pure helpers)."""

from __future__ import annotations

import gzip

import pytest

from pipeline.store.http_server import decode_body, parse_set, settings_clause, split_insert


@pytest.mark.parametrize(("body", "expected"), [
    (b"INSERT INTO db.t (a, b) FORMAT Native\n\x01\x02",
     ("INSERT INTO db.t (a, b)", None, "Native", b"\x01\x02")),
    (b"insert into t format TabSeparated\n1\tx\n", ("insert into t", None, "TabSeparated",
                                                     b"1\tx\n")),
    (b"INSERT INTO t (a) SETTINGS async_insert=0 FORMAT CSV\n1\n",
     ("INSERT INTO t (a)", "async_insert=0", "CSV", b"1\n")),
    (b"INSERT INTO t (a) FORMAT RowBinary", ("INSERT INTO t (a)", None, "RowBinary", b"")),
    (b"INSERT INTO t VALUES (1)", None),
    (b"INSERT INTO t SELECT * FROM s", None),
    (b"SELECT 1 FORMAT Native", None),
])
def test_split_insert(body: bytes, expected: tuple | None) -> None:
    assert split_insert(body) == expected


@pytest.mark.parametrize(("sql", "expected"), [
    ("SET readonly = 1", {"readonly": "1"}),
    ("set a = 'x, y', b=2;", {"a": "x, y", "b": "2"}),
    ("SET s = 'it\\'s'", {"s": "it's"}),
    ("SELECT 1", None),
    ("SET nonsense", None),
])
def test_parse_set(sql: str, expected: dict | None) -> None:
    assert parse_set(sql) == expected


def test_settings_clause_quotes_strings_and_refuses_bad_names() -> None:
    assert settings_clause({"n": "3", "f": "0.5", "s": "a'b"}) == "n = 3, f = 0.5, s = 'a\\'b'"
    with pytest.raises(ValueError, match="invalid setting name"):
        settings_clause({"a; DROP": "1"})


@pytest.mark.parametrize("encoding", [None, "identity", "gzip", "lz4", "zstd"])
def test_decode_body(encoding: str | None) -> None:
    data = b"INSERT INTO t FORMAT CSV\n" + b"1,2\n" * 100
    if encoding == "gzip":
        sent = gzip.compress(data)
    elif encoding in ("lz4", "zstd"):
        import cramjam

        sent = bytes((cramjam.lz4 if encoding == "lz4" else cramjam.zstd).compress(data))
    else:
        sent = data
    assert decode_body(sent, encoding) == data


def test_decode_body_refuses_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unsupported Content-Encoding 'br2'"):
        decode_body(b"", "br2")


def test_embedded_store_is_served_on_loopback_only(tmp_path) -> None:
    from pipeline.errors import ConfigError
    from pipeline.settings import load_settings
    from pipeline.stream.cluster import EmbeddedClickHouse

    with pytest.raises(ConfigError, match="only on loopback"):
        EmbeddedClickHouse(load_settings(data_dir=str(tmp_path)), "0.0.0.0", 8123)  # noqa: S104
    with pytest.raises(ConfigError, match="already a ClickHouse server"):
        EmbeddedClickHouse(load_settings(clickhouse_dsn="http://db:8123"), "127.0.0.1", 8123)
