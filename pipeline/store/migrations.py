"""Numbered, idempotent DDL migrations from sql/, with a ledger of applied ones."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from pipeline.store.client import Store

_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One sql/ file."""

    version: int
    name: str
    sql: str

    def statements(self, database: str) -> list[str]:
        """The file's statements with ``{db}`` bound to ``database``."""
        body = "\n".join(
            line for line in self.sql.splitlines() if not line.strip().startswith("--")
        )
        return [s.strip().replace("{db}", database) for s in body.split(";") if s.strip()]


def sql_dir() -> Path:
    """Where the migration files live (inside the installed package)."""
    return Path(str(resources.files("pipeline").joinpath("sql")))


def discover(directory: Path | None = None) -> list[Migration]:
    """All migrations in version order."""
    directory = directory or sql_dir()
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), path.name, path.read_text("utf-8")))
    return found


def migrate(store: Store, directory: Path | None = None) -> list[str]:
    """Apply migrations not yet in the ledger; returns the names applied."""
    db = store.database
    store.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    store.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {row[0] for row in store.rows(f"SELECT version FROM {db}.schema_migrations")}
    applied = []
    for m in discover(directory):
        if m.version in done:
            continue
        for statement in m.statements(db):
            store.command(statement)
        store.insert(
            "schema_migrations",
            [[m.version, m.name, datetime.now(timezone.utc)]],
            ["version", "name", "applied_at"],
        )
        applied.append(m.name)
    return applied
