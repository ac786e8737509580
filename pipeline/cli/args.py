"""Parsing command-line values shared by several commands."""

from __future__ import annotations

from datetime import datetime, timezone

from pipeline.errors import ConfigError


def parse_time(text: str | None, flag: str) -> datetime | None:
    """An RFC 3339 / ISO 8601 time given to ``flag`` (UTC when it names no offset), or None."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not an RFC 3339 / ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
