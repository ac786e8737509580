"""`tokenmeter up --workers N`: several workers in one consumer group on one machine.

chDB opens a data directory in one process only, so this process owns it and serves it over
ClickHouse's HTTP interface; each worker is a `tokenmeter worker` subprocess with an
``http://`` DSN, exactly as it would run against a ClickHouse server.

The served store takes one random credential: the workers get it as their ClickHouse
password (``TOKENMETER_CLICKHOUSE_PASSWORD``), and other local clients read it from a file
only the operator's user can read; it is never printed or logged. A standalone
``tokenmeter clickhouse`` keeps that file and reuses it when it restarts (workers still
running keep their password; a new one would fail every request with 516, which the sink
treats as terminal); delete the file to rotate it. ``up`` starts its workers itself, so its
credential lives for one run.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from pipeline.embedded.broker import EmbeddedBroker, interrupt_on_sigterm, port_free
from pipeline.embedded.clickhouse_http import Server, serve
from pipeline.errors import ConfigError
from pipeline.settings import Settings, parse_dsn
from pipeline.store.client import lock_data_dir

CREDENTIAL_FILE = "clickhouse-http.credential"
_SECRET = re.compile(r"[A-Za-z0-9_-]{32,}")  # what new_secret() writes (and no weaker)


def new_secret() -> SecretStr:
    """A fresh random credential for one run of the served store."""
    return SecretStr(secrets.token_urlsafe(32))


def read_secret(path: Path) -> SecretStr | None:
    """The credential in ``path`` if it is this user's own private (0600) well-formed file."""
    try:
        info = path.lstat()
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid()
                or info.st_mode & 0o077):
            return None  # a link, someone else's, or readable by others: not trusted
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return SecretStr(text) if _SECRET.fullmatch(text) else None


def write_secret(path: Path, secret: SecretStr) -> None:
    """Write ``secret`` to ``path``, readable by this user only (0600, replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secret.get_secret_value() + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class EmbeddedClickHouse:
    """The embedded chDB store of ``settings``, served over HTTP at ``host:port``.

    Only clients holding ``secret`` are served: the one given, else the one a previous run
    left in ``secret_file`` (if private and well-formed), else a new random one. It is
    written to ``secret_file`` under the data dir; ``keep_secret=False`` removes it at stop.
    """

    def __init__(self, settings: Settings, host: str, port: int,
                 secret: SecretStr | None = None, *, keep_secret: bool = True) -> None:
        dsn = parse_dsn(settings.dsn)
        if dsn.scheme != "chdb" or dsn.path is None:
            raise ConfigError(
                f"{settings.dsn} is already a ClickHouse server; only an embedded "
                "chdb:/// store needs serving (TOKENMETER_CLICKHOUSE_DSN or --clickhouse)")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"--listen {host}:{port}: the embedded store is served on "
                              "loopback only (127.0.0.1); use a ClickHouse server to share "
                              "a ledger across machines")
        if not port_free(host, port):
            raise ConfigError(f"{host}:{port} is already in use; pick another with --listen")
        self.path = Path(dsn.path)
        self.host, self.port = host, port
        self.secret_file = settings.data_dir.resolve() / CREDENTIAL_FILE
        if secret is None:
            secret = read_secret(self.secret_file) or new_secret()
        self.secret = secret
        self.keep_secret = keep_secret
        self._lock: Any = None
        self._server: Server | None = None

    @property
    def dsn(self) -> str:
        """The DSN clients use."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Take the data dir (refused if another process holds it) and serve it."""
        self._lock = lock_data_dir(self.path)
        try:
            write_secret(self.secret_file, self.secret)
            self._server = serve(self.path, self.host, self.port, self.secret,
                                 hint=f"this run's is in {self.secret_file}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop serving and release the data dir."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._lock is not None:
            if not self.keep_secret:
                # this run's workers stopped with it: a later run writes its own
                with contextlib.suppress(OSError):
                    self.secret_file.unlink()
            self._lock.close()
            self._lock = None


def stop_all(procs: list[subprocess.Popen[Any]], timeout: float = 30) -> None:
    """SIGTERM every process still running, then wait; kill what does not stop in time."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def worker_env(settings: Settings, bootstrap: str, dsn: str, index: int,
               password: SecretStr) -> dict[str, str]:
    """Environment of worker ``index``: shared broker and store, its own web port."""
    env = dict(os.environ)
    env.update(TOKENMETER_KAFKA_BOOTSTRAP=bootstrap, TOKENMETER_CLICKHOUSE_DSN=dsn,
               TOKENMETER_CLICKHOUSE_PASSWORD=password.get_secret_value(),
               TOKENMETER_DATA_DIR=str(settings.data_dir.resolve()),
               TOKENMETER_WEB_HOST=settings.web_host,
               TOKENMETER_WEB_PORT=str(settings.web_port + index),
               TOKENMETER_PARTITIONS=str(settings.partitions),
               TOKENMETER_LOG_LEVEL=settings.log_level)
    return env


def run_cluster(settings: Settings, workers: int, *, embedded_broker: bool, demo: bool,
                demo_rate: float) -> int:
    """Broker (if embedded), the store over HTTP and ``workers`` worker processes."""
    if workers > settings.partitions:
        raise ConfigError(f"{workers} workers but {settings.partitions} partitions: the extra "
                          "workers would idle; raise TOKENMETER_PARTITIONS or lower --workers")
    broker: EmbeddedBroker | None = None
    store: EmbeddedClickHouse | None = None
    procs: list[subprocess.Popen[bytes]] = []
    interrupt_on_sigterm()
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = settings.kafka_bootstrap
        if embedded_broker:
            host, port = settings.broker_address()
            broker = EmbeddedBroker(host, port, log_path=settings.data_dir / "broker.log")
            broker.start()
            bootstrap = broker.bootstrap
        store = EmbeddedClickHouse(settings, "127.0.0.1", settings.clickhouse_http_port,
                                   keep_secret=False)
        store.start()
        for i in range(workers):
            # worker 0 also runs the demo traffic when asked (`up --kafka` is a worker + demo)
            argv = ([sys.executable, "-m", "pipeline.cli", "up", "--kafka", bootstrap, "--demo",
                     "--demo-rate", str(demo_rate)] if demo and i == 0
                    else [sys.executable, "-m", "pipeline.cli", "worker"])
            procs.append(subprocess.Popen(argv, env=worker_env(settings, bootstrap, store.dsn, i,
                                                               store.secret)))
        urls = ", ".join(f"http://{settings.web_host}:{settings.web_port + i}"
                         for i in range(workers))
        print(f"tokenmeter up: {workers} workers ({urls}), Kafka {bootstrap}, ClickHouse "
              f"{settings.dsn} served at {store.dsn}; Ctrl-C stops", file=sys.stderr, flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
        print(f"tokenmeter up: worker {failed or '?'} exited; stopping the rest",
              file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all(procs)
        if store is not None:
            store.stop()
        if broker is not None:
            broker.stop()
