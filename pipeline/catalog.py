"""The versioned model price catalog: data in, lookups out (pure)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from pipeline.errors import PricingError

PER_MILLION = Decimal(1_000_000)
_DATE_SUFFIX = re.compile(r"([-@](\d{4}-\d{2}-\d{2}|\d{8}|\d{4})|-latest|-preview)$")


class Rates(BaseModel):
    """Prices per 1M tokens for one tier; a missing cache price falls back to input."""

    model_config = ConfigDict(frozen=True)

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cache_read: Decimal | None = Field(default=None, ge=0)
    cache_write_5m: Decimal | None = Field(default=None, ge=0)
    cache_write_1h: Decimal | None = Field(default=None, ge=0)
    reasoning: Decimal | None = Field(default=None, ge=0)


class LongContext(Rates):
    """Prices for the whole request when its input exceeds ``threshold`` tokens."""

    threshold: int = Field(gt=0)


class PriceVersion(Rates):
    """One version of a model's prices, in force from ``effective_from``."""

    version: str
    effective_from: AwareDatetime
    effective_to: AwareDatetime | None = None
    long_context: LongContext | None = None
    tiers: dict[str, Rates] = Field(default_factory=dict)

    def covers(self, at: datetime) -> bool:
        """True when this version is in force at ``at``."""
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)


class ModelPrice(BaseModel):
    """A model with its price history and the names that resolve to it."""

    model_config = ConfigDict(frozen=True)

    model: str
    provider: str
    publisher: str = ""
    family: str = ""
    aliases: list[str] = Field(default_factory=list)
    versions: list[PriceVersion]
    sources: list[str] = Field(default_factory=list)

    def at(self, when: datetime) -> PriceVersion | None:
        """The version in force at ``when`` (latest effective_from wins on overlap)."""
        best: PriceVersion | None = None
        for v in self.versions:
            if v.covers(when) and (best is None or v.effective_from > best.effective_from):
                best = v
        return best


class Catalog(BaseModel):
    """All models; resolves dated snapshots and provider prefixes to catalog entries."""

    model_config = ConfigDict(frozen=True)

    currency: str = "USD"
    models: list[ModelPrice]

    def model_post_init(self, __context: Any) -> None:
        index: dict[str, ModelPrice] = {}
        for m in self.models:
            index.setdefault(m.model.lower(), m)
            for alias in m.aliases:
                index.setdefault(alias.lower(), m)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_resolved", {})

    def resolve(self, name: str) -> ModelPrice | None:
        """The catalog entry for a model name, snapshot or provider-prefixed id, or None."""
        resolved: dict[str, ModelPrice | None] = self._resolved  # type: ignore[attr-defined]
        if name in resolved:
            return resolved[name]
        index: dict[str, ModelPrice] = self._index  # type: ignore[attr-defined]
        key = name.strip().lower()
        found = index.get(key)
        if found is None and "/" in key:
            found = index.get(key.rsplit("/", 1)[-1])
            key = key.rsplit("/", 1)[-1]
        while found is None:
            stripped = _DATE_SUFFIX.sub("", key)
            if stripped == key:
                break
            key = stripped
            found = index.get(key)
        if len(resolved) < 10_000:  # bounded: model names come from untrusted input
            resolved[name] = found
        return found

    def price_version(self, name: str, at: datetime) -> tuple[ModelPrice, PriceVersion]:
        """(model, version in force at ``at``) or PricingError(unknown_model)."""
        model = self.resolve(name)
        if model is None:
            raise PricingError(
                "unknown_model",
                f"model {name!r} is not in the price catalog; add it "
                "(tokenmeter prices import) and replay the DLQ",
            )
        version = model.at(at)
        if version is None:
            raise PricingError(
                "unknown_model",
                f"model {name!r} has no price in force at {at.isoformat()}",
            )
        return model, version


def load_catalog(path: Path | None = None) -> Catalog:
    """Load a catalog file (default: the one shipped in the package)."""
    if path is None:
        return _builtin()
    return Catalog.model_validate(json.loads(path.read_text(encoding="utf-8")))


@lru_cache(maxsize=1)
def _builtin() -> Catalog:
    text = resources.files("pipeline").joinpath("data/prices.json").read_text(encoding="utf-8")
    return Catalog.model_validate(json.loads(text))


def merge(base: Catalog, overlay: Catalog) -> Catalog:
    """Base plus the overlay's versions (same model) and models (new names)."""
    models = {m.model: m for m in base.models}
    for om in overlay.models:
        target = base.resolve(om.model)
        if target is None:
            target = models.get(om.model)
        if target is None:
            models[om.model] = om
            continue
        current = models[target.model]
        models[target.model] = current.model_copy(update={
            "versions": [*current.versions, *om.versions],
            "aliases": sorted(set(current.aliases) | set(om.aliases)),
            "sources": list(dict.fromkeys([*current.sources, *om.sources])),
        })
    return Catalog(currency=base.currency, models=list(models.values()))


def load_catalog_with_overlays(directory: Path | None) -> Catalog:
    """The builtin catalog plus every imported version under ``directory`` (in name order)."""
    catalog = load_catalog()
    if directory is not None and directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            catalog = merge(catalog, load_catalog(path))
    return catalog


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
