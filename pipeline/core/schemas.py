"""JSON Schema (draft 2020-12) of every message, generated from the pydantic models.

Regenerate with ``python -m pipeline.core.schemas``; a test fails when schemas/ is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter

from pipeline.core.budgets import Budget, BudgetBreach
from pipeline.core.events import DeadLetter, PricedUsage, UsageEvent
from pipeline.core.forecast import Forecast
from pipeline.core.outcomes import Outcome

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def message_models() -> dict[str, Any]:
    """Schema file stem -> model (BaseModel or dataclass), for every message on a topic."""
    models: dict[str, Any] = {
        "usage_event": UsageEvent,
        "priced_usage": PricedUsage,
        "dead_letter": DeadLetter,
    }
    models.update(budget=Budget, budget_breach=BudgetBreach, forecast=Forecast, outcome=Outcome)
    return models


def render(model: Any, mode: Literal["validation", "serialization"]) -> str:
    """The schema of one model as stable, pretty JSON text."""
    schema: dict[str, Any] = {"$schema": DRAFT, **TypeAdapter(model).json_schema(mode=mode)}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def expected_files() -> dict[str, str]:
    """File name -> content that schemas/ should hold."""
    out = {}
    for stem, model in message_models().items():
        mode: Literal["validation", "serialization"] = (
            "validation" if stem in ("usage_event", "budget", "outcome") else "serialization")
        out[f"{stem}.schema.json"] = render(model, mode)
    return out


def write(directory: Path) -> list[str]:
    """Write every schema into ``directory``; the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    files = expected_files()
    for name, text in files.items():
        (directory / name).write_text(text, "utf-8")
    return sorted(files)


if __name__ == "__main__":  # pragma: no cover
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("schemas")
    print("\n".join(write(target)))
