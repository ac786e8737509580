from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.errors import ConfigError
from pipeline.settings import Settings, load_settings, parse_dsn


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(__import__("os").environ):
        if k.startswith("TOKENMETER_"):
            monkeypatch.delenv(k)
    s = load_settings()
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.web_host == "127.0.0.1"
    assert s.web_port == 6066
    assert s.partitions == 8
    assert s.data_dir == Path(".tokenmeter")
    assert s.dsn == f"chdb://{(Path('.tokenmeter') / 'clickhouse').resolve()}"
    assert s.embedded_store


def test_env_then_flags_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENMETER_WEB_PORT", "7000")
    monkeypatch.setenv("TOKENMETER_PARTITIONS", "3")
    s = load_settings(web_port=7100, partitions=None)
    assert s.web_port == 7100  # flag beats env
    assert s.partitions == 3  # env used when flag absent


def test_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError):
        s.web_port = 1  # type: ignore[misc]


def test_secret_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENMETER_CLICKHOUSE_PASSWORD", "hunter2")
    s = load_settings()
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.model_dump())
    assert s.clickhouse_password is not None
    assert s.clickhouse_password.get_secret_value() == "hunter2"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"kafka_bootstrap": "nohostport"}, "TOKENMETER_KAFKA_BOOTSTRAP"),
        ({"web_port": 70000}, "TOKENMETER_WEB_PORT"),
        ({"partitions": 0}, "TOKENMETER_PARTITIONS"),
        ({"clickhouse_dsn": "mysql://x"}, "unsupported scheme"),
        ({"clickhouse_dsn": "chdb://"}, "no data directory"),
    ],
)
def test_bad_settings_name_the_fix(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(**overrides)


@pytest.mark.parametrize(
    "dsn, scheme, path, host, port, db",
    [
        ("chdb:///var/lib/tm/clickhouse", "chdb", "/var/lib/tm/clickhouse", None, None, None),
        ("chdb://rel/dir", "chdb", "rel/dir", None, None, None),
        ("http://ch:8123", "http", None, "ch", 8123, None),
        ("http://ch", "http", None, "ch", 8123, None),
        ("https://u@ch.example.com/analytics", "https", None, "ch.example.com", 8443, "analytics"),
        ("https://ch:9443", "https", None, "ch", 9443, None),
    ],
)
def test_parse_dsn(dsn: str, scheme: str, path: str | None, host: str | None,
                   port: int | None, db: str | None) -> None:
    d = parse_dsn(dsn)
    assert (d.scheme, d.path, d.host, d.port, d.database) == (scheme, path, host, port, db)


def test_http_dsn_is_not_embedded() -> None:
    assert not Settings(clickhouse_dsn="http://ch:8123").embedded_store


def test_topic_prefix() -> None:
    assert Settings(topic_prefix="x-").topic("usage-events") == "x-usage-events"


def test_kafka_security_options() -> None:
    import ssl

    from pipeline.stream.topics import kafka_client_options

    plain = kafka_client_options(load_settings(kafka_bootstrap="k:9092"))
    assert plain == {"bootstrap_servers": "k:9092"}
    s = load_settings(kafka_bootstrap="k:9093", kafka_security_protocol="SASL_SSL",
                      kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="svc",
                      kafka_sasl_password="p4ss")
    opts = kafka_client_options(s)
    assert opts["security_protocol"] == "SASL_SSL"
    assert isinstance(opts["ssl_context"], ssl.SSLContext)
    assert (opts["sasl_mechanism"], opts["sasl_plain_username"],
            opts["sasl_plain_password"]) == ("SCRAM-SHA-512", "svc", "p4ss")
    assert "p4ss" not in repr(s) and "p4ss" not in str(s.model_dump())


def test_clickhouse_tls_dsn() -> None:
    d = parse_dsn("https://analyst@ch.internal:8443/tokenmeter")
    assert (d.scheme, d.host, d.port, d.username, d.database) == (
        "https", "ch.internal", 8443, "analyst", "tokenmeter")
