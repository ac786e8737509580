"""Rendering query results as a table, JSON or CSV."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any


def print_rows(columns: list[str], rows: list[list[Any]], fmt: str) -> None:
    """Print rows in ``fmt`` (table|json|csv) to stdout."""
    if fmt == "json":
        json.dump([dict(zip(columns, r, strict=True)) for r in rows], sys.stdout)
        sys.stdout.write("\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # cells are data (tenants, features, models): Text, never parsed as rich markup
        table = Table(show_lines=False)
        for c in columns:
            table.add_column(Text(c))
        for r in rows:
            table.add_row(*(Text("" if v is None else str(v)) for v in r))
        console = Console()
        console.print(table)
        console.print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}", style="dim")
