import pytest

from pipeline.errors import QueryRefused
from pipeline.store.queries import check_read_only, json_safe

ALLOWED = [
    "SELECT 1",
    "select count() from tokenmeter.usage_events FINAL",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    "SELECT 'DROP TABLE x; SYSTEM' AS s",
    "SELECT 1;",
    "  SELECT 1 ; ",
    "SHOW TABLES FROM tokenmeter",
    "DESCRIBE TABLE tokenmeter.usage_events",
    "EXPLAIN SELECT 1",
    "SELECT 1 -- trailing comment; DROP",
    "(SELECT 1) UNION ALL (SELECT 2)",
    "SELECT tenant_id AS created, sum(total_cost) AS updated FROM tokenmeter.usage_events GROUP BY tenant_id",
]

REFUSED = [
    "DROP TABLE tokenmeter.usage_events",
    "drop database tokenmeter",
    "INSERT INTO tokenmeter.usage_events SELECT * FROM tokenmeter.usage_events",
    "ALTER TABLE tokenmeter.usage_events DELETE WHERE 1",
    "TRUNCATE TABLE tokenmeter.usage_events",
    "SYSTEM SHUTDOWN",
    "SET readonly = 0",
    "CREATE TABLE x (a Int8) ENGINE = Memory",
    "SELECT 1; DROP TABLE tokenmeter.usage_events",
    "SELECT 1; SELECT 2",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM url('http://169.254.169.254/latest', 'LineAsString')",
    "SELECT * FROM remote('other:9000', system.one)",
    "SELECT * FROM remoteSecure('other:9440', system.one)",
    "SELECT * FROM s3('https://bucket/x.csv')",
    "SELECT * FROM input('a Int8')",
    "SELECT * FROM mysql('h:3306', 'db', 't', 'u', 'p')",
    "SELECT * FROM executable('sh -c id', 'LineAsString', 'x String')",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM hdfs('hdfs://x')",
    "SELECT * FROM FILE ('/etc/passwd')",
    "SELECT * FROM fiLe/**/('/etc/passwd')",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT 1 /* ; */ ; DROP TABLE x",
    "KILL QUERY WHERE 1",
    "OPTIMIZE TABLE tokenmeter.usage_events FINAL",
    "GRANT ALL ON *.* TO default",
    "ATTACH TABLE x",
    "RENAME TABLE a TO b",
    "",
    "   ",
    "-- only a comment",
    "SELECT " + "1," * 60000 + "1",
    # hidden from a lexer that ends a comment at the first */
    "SELECT count() FROM /* /* */ ' */ numbers_mt(100000000000) --'",
    "SELECT count() FROM /* /* */ ' */ merge('system', '^one$') --'",
    "SELECT 1 /* /* */ ' */; DROP TABLE tokenmeter.usage_events --'",
    # ClickHouse could not read these either
    "SELECT 1 /* /* */",
    "SELECT 'unclosed",
]

# table functions (and the scalar file()) hidden by quoting, case, comments and whitespace
QUOTED_IO = [
    "SELECT * FROM `file`('/etc/passwd', 'LineAsString')",
    'SELECT * FROM "file"(\'/etc/passwd\', \'LineAsString\')',
    "SELECT * FROM `FiLe`('/etc/passwd')",
    "SELECT * FROM `file` /* x */ ('/etc/passwd')",
    "SELECT * FROM `file`\n\t ('/etc/passwd')",
    "SELECT * FROM `url`('http://169.254.169.254/latest', 'LineAsString')",
    'SELECT * FROM "remoteSecure"(\'h:9440\', system.one)',
    "SELECT * FROM `s3`('https://bucket/x.csv')",
    "SELECT `file`('/etc/passwd')",
    "SELECT `fi\\x6ce`('/etc/passwd')",
    'SELECT "fi\\x6ce"(\'/etc/passwd\')',
    "SELECT * FROM `icebergS3`('https://b/x')",
    # a quote inside a comment or a heredoc must not hide what follows from the check
    "SELECT 1 -- it's\n, file('/etc/passwd') -- '",
    "SELECT 1 # it's\n, file('/etc/passwd') -- '",
    "SELECT $$'$$, file('/etc/passwd') -- '",
    "SELECT $t$'$t$, file('/etc/passwd') -- '",
    "SELECT 1 /* ' */, file('/etc/passwd') -- '",
    # ClickHouse's lexer, not a simpler one: nested /* */ comments end at the matching */
    "SELECT /* /* */ ' */ file('/etc/hostname') AS c",
    "SELECT 1 /* /* */ ' */, file('/etc/hostname') AS c --'",
    "SELECT 1 /* /* /* */ */ ' */, file('/etc/hostname') AS c --'",
    # `$` inside a name is part of it (x$a$ is a name, not a heredoc opener)
    "SELECT 1 AS x$a$, file('/etc/hostname') AS y$a$",
    "SELECT 1 AS $a, file('/etc/hostname') AS b$a$",
    # // is a line comment, typographic quotes quote, heredoc tags may be any text
    "SELECT 1 // it's\n, file('/etc/passwd') -- '",
    "SELECT \u2018'\u2019, file('/etc/passwd') -- '",
    "SELECT \u201cx'\u201d, file('/etc/passwd') -- '",
    "SELECT $'$ x $'$, file('/etc/passwd') -- '",
    "SELECT \u201cfile\u201d('/etc/passwd')",
    "SELECT file\u2003('/etc/passwd')",
    # writing files needs no table function
    "SELECT 1 INTO OUTFILE '/tmp/x'",
    "SELECT 1 INTO/**/OUTFILE '/tmp/x' TRUNCATE",
    "EXPLAIN SELECT 1 into outfile '/tmp/x'",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed(sql: str) -> None:
    assert check_read_only(sql)


@pytest.mark.parametrize("sql", REFUSED)
def test_refused_with_reason(sql: str) -> None:
    with pytest.raises(QueryRefused) as info:
        check_read_only(sql)
    assert str(info.value)


@pytest.mark.parametrize("sql", QUOTED_IO)
def test_quoted_and_hidden_io_functions_are_refused(sql: str) -> None:
    with pytest.raises(QueryRefused, match="not allowed"):
        check_read_only(sql)


@pytest.mark.parametrize("sql", [
    "SELECT `tenant_id`, \"total_cost\" FROM tokenmeter.usage_events",
    "SELECT 'file(' AS s, $$url($$ AS t",
    "SELECT 1 -- file('/etc/passwd')",
    "SELECT profile(1)",  # not a whole-word match of file(
    "SELECT 1 AS x$a$, 2 AS y$a$",
    "SELECT $a$ file('x') $a$ AS s",
    "SELECT /* /* file('x') */ */ 1",
    "SELECT 1.5e-3, 0x1F, 1_000, x'1F', (1, 2).1",
])
def test_quoted_names_and_strings_that_only_look_like_io_pass(sql: str) -> None:
    assert check_read_only(sql)


def test_json_safe_keeps_money_exact() -> None:
    from datetime import datetime
    from decimal import Decimal

    assert json_safe(Decimal("0.000000000001")) == "0.000000000001"
    assert json_safe(datetime(2025, 1, 1)) == "2025-01-01T00:00:00Z"  # noqa: DTZ001 - chDB gives naive UTC
    assert json_safe({"a": [Decimal("1.5")]}) == {"a": ["1.5"]}


# --- the engine's side: what runs if the textual check were fooled --------------------------

def _secret_file(tmp_path) -> str:
    path = tmp_path / "secret.txt"
    path.write_text("top-secret\n")
    return str(path)


def test_readonly_session_refuses_writes_and_file_url_table_functions(store, tmp_path) -> None:
    """The session itself, called directly (no textual check), refuses these."""
    from pipeline.store.queries import READ_ONLY_LIMITS

    secret = _secret_file(tmp_path)
    session = store.readonly(READ_ONLY_LIMITS)
    db = store.database
    for sql in (f"SELECT * FROM file('{secret}', 'LineAsString')",
                f"SELECT * FROM `file`('{secret}', 'LineAsString')",
                f'SELECT * FROM "file"(\'{secret}\', \'LineAsString\')',
                "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
                f"DROP TABLE {db}.usage_events",
                f"INSERT INTO {db}.usage_daily (tenant_id) VALUES ('x')",
                f"CREATE TABLE {db}.x (a Int8) ENGINE = Memory"):
        with pytest.raises(Exception, match="READONLY|readonly"):
            session.query(sql)
    assert store.rows(f"EXISTS TABLE {db}.usage_events") == [(1,)]


def test_chdb_readonly_alone_lets_scalar_file_and_outfile_through(store, tmp_path) -> None:
    """Measured fact behind the AST check: readonly=1 on chDB does not stop these two."""
    from pipeline.store.queries import READ_ONLY_LIMITS

    secret = _secret_file(tmp_path)
    session = store.readonly(READ_ONLY_LIMITS)
    assert session.query(f"SELECT `file`('{secret}')").result_rows == [("top-secret\n",)]
    session.query(f"SELECT 1 INTO OUTFILE '{tmp_path / 'out.txt'}'")
    assert (tmp_path / "out.txt").exists()


@pytest.mark.parametrize("template", [
    "SELECT `file`('{secret}')",
    "SELECT `fi\\x6ce`('{secret}')",
    "SELECT * FROM `file`('{secret}', 'LineAsString')",
    "SELECT 1 INTO OUTFILE '{out}'",
    "SELECT 1 FROM system.one INTO OUTFILE '{out}' TRUNCATE",
    "EXPLAIN SELECT 1 INTO OUTFILE '{out}'",
    "SELECT 1 -- it's\n, file('{secret}') -- '",
])
def test_parsed_statement_check_holds_without_the_textual_one(store, tmp_path,
                                                               template: str) -> None:
    """execute_read_only (the path after check_read_only) refuses by ClickHouse's own parse."""
    from pipeline.store.queries import execute_read_only

    sql = template.format(secret=_secret_file(tmp_path), out=tmp_path / "out.txt")
    with pytest.raises(QueryRefused, match="not allowed"):
        execute_read_only(store, sql)
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.parametrize("template", [
    "SELECT `file`('{secret}')",
    "SELECT * FROM \"file\"('{secret}', 'LineAsString')",
    "SELECT 1 -- it's\n, file('{secret}') -- '",
    "SELECT 1 INTO OUTFILE '{out}'",
])
def test_run_read_only_refuses_quoted_io(store, tmp_path, template: str) -> None:
    from pipeline.store.queries import run_read_only

    sql = template.format(secret=_secret_file(tmp_path), out=tmp_path / "out.txt")
    with pytest.raises(QueryRefused, match="not allowed"):
        run_read_only(store, sql)
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.parametrize("sql", [
    "SELECT count() FROM merge('system', '^one$')",
    "SELECT count() FROM numbers_mt(10)",
    "SELECT * FROM view(SELECT 1)",
    "SELECT count() FROM generateRandom('a Int8') LIMIT 1",
])
def test_parsed_statement_check_refuses_heavy_table_functions(store, sql: str) -> None:
    """The textual list of heavy table functions holds at the parse too (a lexer slip)."""
    from pipeline.store.queries import execute_read_only

    with pytest.raises(QueryRefused, match="not allowed"):
        execute_read_only(store, sql)


def test_parsed_statement_check_never_runs_a_second_statement(store, tmp_path) -> None:
    """chDB runs every statement of a text: EXPLAIN AST must not see two (it ran the second)."""
    from pipeline.errors import StoreError
    from pipeline.store.queries import execute_read_only

    out = tmp_path / "out.txt"
    with pytest.raises((QueryRefused, StoreError)):
        execute_read_only(store, f"SELECT 1; SELECT 1 INTO OUTFILE '{out}'")
    assert not out.exists()


def test_run_read_only_still_answers(store) -> None:
    from pipeline.store.queries import run_read_only

    result = run_read_only(store, f"SELECT count() AS n FROM `{store.database}`.usage_events")
    assert (result.columns, result.rows) == (["n"], [[0]])
    assert run_read_only(store, f"SHOW TABLES FROM {store.database}").rows
    assert run_read_only(store, f"DESCRIBE TABLE {store.database}.usage_events").rows
    assert run_read_only(store, "EXPLAIN SELECT 1").rows
