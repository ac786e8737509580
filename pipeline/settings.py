"""Runtime configuration: one frozen settings object, env prefix ``TOKENMETER_``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.errors import ConfigError

TOPIC_EVENTS = "usage-events"
TOPIC_DLQ = "usage-events-dlq"
TOPIC_BUDGETS = "budgets"
TOPIC_BREACHES = "budget-breaches"
TOPIC_OUTCOMES = "usage-outcomes"


class Settings(BaseSettings):
    """Everything configurable; built once at the entry point and passed down."""

    model_config = SettingsConfigDict(env_prefix="TOKENMETER_", frozen=True, extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        "PLAINTEXT"
    )
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # compressed record batches: Kafka stores and ships fewer bytes, and the embedded broker
    # (which keeps every record in memory) grows ~6x slower per event (docs/performance.md)
    producer_compression: Literal["none", "gzip", "lz4", "zstd"] = "zstd"
    clickhouse_dsn: str | None = Field(
        default=None, description="chdb:///<dir> (embedded) or http(s)://host:port"
    )
    clickhouse_password: SecretStr | None = None
    clickhouse_database: str = "tokenmeter"
    # `up --workers N` serves the embedded store to its workers over HTTP on this port
    clickhouse_http_port: int = Field(default=8123, ge=1, le=65535)
    data_dir: Path = Path("./.tokenmeter")
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    api_token: SecretStr | None = None
    # extra Host names the HTTP API answers to (behind a proxy or DNS name); comma-separated
    allowed_hosts: str = ""
    partitions: int = Field(default=8, ge=1, le=1024)
    app_id: str = "tokenmeter"
    topic_prefix: str = ""
    # Measured on Tansu: Faust's default timeouts made a fresh group wait ~30 s for its
    # assignment; these get it in ~4-6 s (docs/architecture.md, "Measured facts").
    session_timeout_s: float = 6.0
    rebalance_timeout_s: float = 6.0
    heartbeat_interval_s: float = 1.0
    sink_batch_rows: int = Field(default=5000, ge=1)
    sink_flush_s: float = Field(default=0.5, gt=0)
    take_max: int = Field(default=2000, ge=1)
    # Python's cyclic GC: a young collection after this many new container objects
    # (Python's default is 700). At 700 the worker spent ~20% of its time in the collector
    # (3.7 s of 17.6 s, docs/performance.md); 0 keeps Python's default.
    gc_young_threshold: int = Field(default=50_000, ge=0)
    # Faust's Monitor sensor counts and times every message for Faust's own stats, which
    # nothing here reads; off, the worker did 8-14% more (docs/performance.md)
    faust_monitor: bool = False
    take_within_s: float = Field(default=0.05, gt=0)
    fetch_max_wait_ms: int = Field(default=20, ge=0, le=5000)
    grace_s: float = Field(default=3600.0, ge=0, description="late-event grace period")
    dedup_horizon_days: float = Field(default=7.0, gt=0)
    dedup_max_ids: int = Field(default=500_000, ge=1000, description="per partition")
    forecast_interval_s: float = Field(default=3600.0, gt=0,
                                       description="worker's built-in forecast schedule")
    status_interval_s: float = Field(default=60.0, gt=0,
                                     description="how often budget_status is refreshed")
    forecast_processes: int = Field(default=2, ge=1, le=64)
    # reservations (POST /api/reservations): how long an unsettled hold counts, and the
    # longest ttl_s a caller may ask for
    reservation_ttl_s: float = Field(default=120.0, gt=0, le=86400)
    reservation_max_ttl_s: float = Field(default=3600.0, gt=0, le=86400)
    # automated actions and webhooks (docs/budgets.md, "Actions and webhooks"): global
    # endpoints every breach is POSTed to (comma-separated or a JSON list), the HMAC secret
    # that signs them (unset: sent unsigned, with a warning), their format, the retry bound
    # and how often a worker reloads the active actions other workers turned on
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_secret: SecretStr | None = None
    webhook_format: Literal["json", "slack"] = "json"
    webhook_max_attempts: int = Field(default=6, ge=1, le=20)
    webhook_max_backoff_s: float = Field(default=60.0, gt=0, le=3600)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    actions_refresh_s: float = Field(default=2.0, gt=0, le=3600)

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _check_webhooks(cls, v: Any) -> list[str]:
        import json

        from pipeline.core.budget_options import check_webhook_url

        if isinstance(v, str):
            v = json.loads(v) if v.strip().startswith("[") else \
                [u.strip() for u in v.split(",") if u.strip()]
        if not isinstance(v, list) or not all(isinstance(u, str) for u in v):
            raise ValueError("expected http(s) URLs, comma-separated or a JSON list")
        for n, url in enumerate(v, 1):
            try:
                check_webhook_url(url)
            except ValueError as exc:  # the same rule as a budget's webhooks
                raise ValueError(f"URL {n} of {len(v)}: {exc}") from None
        return v
    log_level: str = "WARNING"
    # the worker's clock starts here and runs on (tests and replays of past traffic);
    # unset: the wall clock
    clock_start: datetime | None = None

    @field_validator("clock_start")
    @classmethod
    def _check_clock(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a timezone, e.g. 2027-01-01T00:05:00Z")
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: str) -> str:
        import ipaddress

        names = [n.strip().lower().strip("[]") for n in v.split(",") if n.strip()]
        for n in names:
            if ":" in n:  # an IPv6 address, or a name with a port (ports are not matched)
                try:
                    ipaddress.IPv6Address(n)
                    continue
                except ValueError:
                    pass
            if any(c in n for c in "/@:[] \t") or n.startswith("."):
                raise ValueError(f"expected host names (comma-separated, no scheme or port), "
                                 f"got {n!r}")
        return ",".join(names)

    @property
    def allowed_host_names(self) -> frozenset[str]:
        """TOKENMETER_ALLOWED_HOSTS as a set of lower-case names."""
        return frozenset(n for n in self.allowed_hosts.split(",") if n)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, v: str) -> str:
        for part in v.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected HOST:PORT[,HOST:PORT...], got {v!r}")
        return v

    @property
    def dsn(self) -> str:
        """The effective ClickHouse DSN (embedded chDB under data_dir by default)."""
        if self.clickhouse_dsn:
            return self.clickhouse_dsn
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def embedded_store(self) -> bool:
        """True when ClickHouse runs in-process through chDB."""
        return parse_dsn(self.dsn).scheme == "chdb"

    @property
    def web_url(self) -> str:
        """Base URL of this worker's HTTP API."""
        host = "127.0.0.1" if self.web_host in ("0.0.0.0", "::") else self.web_host  # noqa: S104
        return f"http://{host}:{self.web_port}"

    @property
    def prices_dir(self) -> Path:
        """Where `tokenmeter prices import` stores catalog versions (shared by workers)."""
        return self.data_dir / "prices"

    def topic(self, name: str) -> str:
        """Full topic name with the configured prefix (tests isolate topics this way)."""
        return f"{self.topic_prefix}{name}"

    def broker_address(self) -> tuple[str, int]:
        """(host, port) of the first bootstrap server."""
        host, _, port = self.kafka_bootstrap.split(",")[0].strip().rpartition(":")
        return host, int(port)


class Dsn:
    """A parsed ClickHouse DSN."""

    def __init__(self, scheme: str, path: str | None, host: str | None, port: int | None,
                 username: str | None, database: str | None, raw: str) -> None:
        self.scheme = scheme
        self.path = path
        self.host = host
        self.port = port
        self.username = username
        self.database = database
        self.raw = raw

    def __repr__(self) -> str:
        where = self.path if self.scheme == "chdb" else f"{self.host}:{self.port}"
        return f"Dsn({self.scheme}://{where})"


def parse_dsn(dsn: str) -> Dsn:
    """Parse ``chdb:///dir``, ``chdb://relative/dir`` or ``http(s)://[user@]host[:port][/db]``."""
    parts = urlsplit(dsn)
    scheme = parts.scheme.lower()
    if scheme == "chdb":
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path or path == "/":
            raise ConfigError(
                f"ClickHouse DSN {dsn!r} has no data directory; "
                "use chdb:///absolute/dir (TOKENMETER_CLICKHOUSE_DSN or --clickhouse)"
            )
        return Dsn("chdb", path, None, None, None, None, dsn)
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(
                f"ClickHouse DSN {dsn!r} has no host; use http://host:8123 "
                "(TOKENMETER_CLICKHOUSE_DSN or --clickhouse)"
            )
        try:
            port = parts.port or (8443 if scheme == "https" else 8123)
        except ValueError as exc:
            raise ConfigError(f"ClickHouse DSN {dsn!r} has a bad port: {exc}") from None
        database = parts.path.strip("/") or None
        return Dsn(scheme, None, parts.hostname, port, parts.username, database, dsn)
    raise ConfigError(
        f"ClickHouse DSN {dsn!r} has unsupported scheme {parts.scheme!r}; "
        "use chdb:///dir (embedded) or http(s)://host:port (server) "
        "in TOKENMETER_CLICKHOUSE_DSN or --clickhouse"
    )


def load_settings(**overrides: Any) -> Settings:
    """Build settings from env, then apply non-None CLI overrides; errors become ConfigError."""
    from pydantic import ValidationError

    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"invalid setting {field} (TOKENMETER_{field.upper()}): {first['msg']}"
        ) from None
    parse_dsn(settings.dsn)
    return settings
