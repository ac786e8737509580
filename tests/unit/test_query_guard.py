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
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed(sql: str) -> None:
    assert check_read_only(sql)


@pytest.mark.parametrize("sql", REFUSED)
def test_refused_with_reason(sql: str) -> None:
    with pytest.raises(QueryRefused) as info:
        check_read_only(sql)
    assert str(info.value)


def test_json_safe_keeps_money_exact() -> None:
    from datetime import datetime
    from decimal import Decimal

    assert json_safe(Decimal("0.000000000001")) == "0.000000000001"
    assert json_safe(datetime(2025, 1, 1)) == "2025-01-01T00:00:00Z"  # noqa: DTZ001 - chDB gives naive UTC
    assert json_safe({"a": [Decimal("1.5")]}) == {"a": ["1.5"]}
