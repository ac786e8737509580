"""`tokenmeter ingest`: the standalone HTTP ingest process (handler of the subcommand)."""

from __future__ import annotations

import argparse

from pipeline.errors import ConfigError
from pipeline.settings import Settings

DEFAULT_LISTEN = "127.0.0.1:6067"


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    """POST /api/events -> usage-events, without a worker; loopback unless a token is set."""
    from pipeline.runtime.ingest import ingest_settings, run_ingest

    if args.ack_timeout <= 0:
        raise ConfigError("--ack-timeout must be positive (seconds)")
    return run_ingest(ingest_settings(settings, args.listen), ack_timeout=args.ack_timeout)
