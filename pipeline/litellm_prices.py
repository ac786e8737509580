"""Import LiteLLM's model_prices_and_context_window.json into catalog versions (pure)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.catalog import PER_MILLION, Catalog

_LITELLM_FIELDS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_read": "cache_read_input_token_cost",
    "cache_write_5m": "cache_creation_input_token_cost",
    "cache_write_1h": "cache_creation_input_token_cost_above_1hr",
    "reasoning": "output_cost_per_reasoning_token",
}


def from_litellm(data: dict[str, Any], effective_from: datetime, version: str,
                 source: str) -> Catalog:
    """Convert LiteLLM's model_prices_and_context_window.json shape into catalog versions."""
    models = []
    for name, spec in data.items():
        if name == "sample_spec" or not isinstance(spec, dict):
            continue
        if spec.get("input_cost_per_token") is None or spec.get("output_cost_per_token") is None:
            continue
        rates = {k: Decimal(str(spec[f])) * PER_MILLION
                 for k, f in _LITELLM_FIELDS.items() if spec.get(f) is not None}
        extra: dict[str, Any] = {}
        for threshold in (128, 200):
            lin = spec.get(f"input_cost_per_token_above_{threshold}k_tokens")
            lout = spec.get(f"output_cost_per_token_above_{threshold}k_tokens")
            if lin is not None and lout is not None:
                extra["long_context"] = {
                    "threshold": threshold * 1000,
                    "input": Decimal(str(lin)) * PER_MILLION,
                    "output": Decimal(str(lout)) * PER_MILLION,
                }
        tiers = {}
        for tier, suffix in (("batch", "batches"), ("priority", "priority"), ("flex", "flex")):
            tin = spec.get(f"input_cost_per_token_{suffix}")
            tout = spec.get(f"output_cost_per_token_{suffix}")
            if tin is not None and tout is not None:
                tiers[tier] = {"input": Decimal(str(tin)) * PER_MILLION,
                               "output": Decimal(str(tout)) * PER_MILLION}
        models.append({
            "model": name,
            "provider": str(spec.get("litellm_provider", "unknown")),
            "versions": [{"version": version, "effective_from": effective_from,
                          **rates, **extra, "tiers": tiers}],
            "sources": [source],
        })
    return Catalog.model_validate({"models": models})
