"""The versioned model price catalog, keyed by (provider, model): data in, lookups out (pure).

A model name resolves only to an entry of the provider that billed the call, by its exact id
or a listed alias: no date-suffix stripping and no other provider's rate. A dated snapshot
the catalog does not list is an unknown model (dead letter; ``tokenmeter prices import`` and
``dlq replay`` fix it), never priced as its neighbour.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from pipeline.core.providers import canonical, split_model
from pipeline.errors import PricingError

PER_MILLION = Decimal(1_000_000)
RATE_FIELDS = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h", "reasoning")


class PartialRates(BaseModel):
    """Prices per 1M tokens; a field left out is not listed (see pricing for what that means)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Decimal | None = Field(default=None, ge=0)
    output: Decimal | None = Field(default=None, ge=0)
    cache_read: Decimal | None = Field(default=None, ge=0)
    cache_write_5m: Decimal | None = Field(default=None, ge=0)
    cache_write_1h: Decimal | None = Field(default=None, ge=0)
    reasoning: Decimal | None = Field(default=None, ge=0)


class Rates(PartialRates):
    """A band's rates: input and output are always listed."""

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)


class LongContext(Rates):
    """Rates for the whole request when its prompt exceeds ``threshold`` tokens.

    ``counts``: what counts toward the threshold. ``prompt`` is every input token, cache
    reads and writes included (Anthropic, Google and OpenAI all count the full prompt).
    """

    threshold: int = Field(gt=0)
    counts: Literal["prompt"] = "prompt"


class ServiceTier(PartialRates):
    """A service tier (batch, flex, priority) as the provider defines it.

    Listed rates replace the standard-context ones; ``long_context`` lists replacements for
    the long-context band; ``multiplier`` scales every rate of the band that is not listed
    (Anthropic's and Google's batch halve everything, cache and long context included).
    """

    multiplier: Decimal | None = Field(default=None, gt=0, le=10)
    long_context: PartialRates | None = None


class PriceVersion(PartialRates):
    """One version of a model's prices, in force from ``effective_from``.

    A version without input/output prices is a window whose price is not known (a change on
    a date nobody could find): every call in it is refused (``unpriced``), never guessed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    effective_from: AwareDatetime
    effective_to: AwareDatetime | None = None
    long_context: LongContext | None = None
    tiers: dict[str, ServiceTier] = Field(default_factory=dict)
    source: str = ""  # the page these prices were read from
    checked: str = ""  # when, and how, somebody last checked them there
    notes: str = ""

    def covers(self, at: datetime) -> bool:
        """True when this version is in force at ``at``."""
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)


class ModelPrice(BaseModel):
    """A model at one provider, with its price history and the ids that name it there."""

    model_config = ConfigDict(frozen=True)

    model: str
    provider: str
    publisher: str = ""
    family: str = ""
    aliases: list[str] = Field(default_factory=list)
    versions: list[PriceVersion]
    sources: list[str] = Field(default_factory=list)

    def at(self, when: datetime) -> PriceVersion | None:
        """The version in force at ``when`` (latest effective_from wins; in a tie the one
        listed last, i.e. the later correction)."""
        best: PriceVersion | None = None
        for v in self.versions:
            if v.covers(when) and (best is None or v.effective_from >= best.effective_from):
                best = v
        return best


@dataclass(frozen=True, slots=True)
class Timeline:
    """``ModelPrice.at`` as a lookup: the version in force between consecutive boundaries.

    Whether a version covers an instant changes only at an ``effective_from`` or
    ``effective_to``, so between two consecutive boundaries ``at`` has one answer: computed
    once per segment here, found by bisection per event.
    """

    boundaries: tuple[datetime, ...]
    answers: tuple[PriceVersion | None, ...]

    @classmethod
    def of(cls, model: ModelPrice) -> Timeline:
        """The segments of ``model``'s price history."""
        # as UTC instants: two datetimes in one zone compare by wall clock, so a repeated
        # daylight-saving hour would merge two boundaries an hour apart
        points = {v.effective_from.astimezone(timezone.utc) for v in model.versions}
        points.update(v.effective_to.astimezone(timezone.utc) for v in model.versions
                      if v.effective_to is not None)
        boundaries = tuple(sorted(points))
        return cls(boundaries, tuple(model.at(b) for b in boundaries))

    def at(self, when: datetime) -> PriceVersion | None:
        """The same answer as ``ModelPrice.at(when)``."""
        i = bisect_right(self.boundaries, when) - 1
        return self.answers[i] if i >= 0 else None


class Catalog(BaseModel):
    """All models; resolves (provider, model id or alias) to one entry."""

    model_config = ConfigDict(frozen=True)

    currency: str = "USD"
    models: list[ModelPrice]

    def model_post_init(self, __context: Any) -> None:
        index: dict[tuple[str, str], ModelPrice] = {}
        home: dict[str, ModelPrice] = {}  # name -> entry at its publisher's own API
        for m in self.models:
            provider = _provider_key(m.provider)
            for name in (m.model, *m.aliases):
                index.setdefault((provider, name.lower()), m)
                if m.publisher and canonical(m.publisher) == provider:
                    home.setdefault(name.lower(), m)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_home", home)
        object.__setattr__(self, "_resolved", {})
        object.__setattr__(self, "_timelines", {})

    def resolve(self, name: str, provider: str | None = None) -> ModelPrice | None:
        """The entry for ``name`` at ``provider``: never another provider's entry.

        The provider's own id is tried first (at Groq ``openai/gpt-oss-120b`` is one id). A
        provider prefix in ``name`` counts only when it names the same provider
        (``azure/gpt-4o`` at azure) or when no provider is given; ``openai/gpt-4o`` sent by
        OpenRouter or Azure is their call, not OpenAI's. Without any provider, a bare name
        resolves to its publisher's own API (``gpt-4o`` at OpenAI): estimates only, since
        events always name a provider.
        """
        resolved: dict[tuple[str, str], ModelPrice | None] = self._resolved  # type: ignore[attr-defined]
        key = (provider or "", name)
        if key in resolved:
            return resolved[key]
        index: dict[tuple[str, str], ModelPrice] = self._index  # type: ignore[attr-defined]
        given = _provider_key(provider) if provider and provider.strip() else None
        bare = name.strip().lower()
        prefixed, rest = split_model("", name)  # the provider a prefix names, if any
        if given is not None:
            found = index.get((given, bare))
            if found is None and prefixed == given:
                found = index.get((given, rest.lower()))
        elif prefixed is not None:
            found = index.get((prefixed, rest.lower()))
        else:
            found = self._home.get(bare)  # type: ignore[attr-defined]
        if len(resolved) < 10_000:  # bounded: model names come from untrusted input
            resolved[key] = found
        return found

    def price_version(self, name: str, at: datetime,
                      provider: str | None = None) -> tuple[ModelPrice, PriceVersion]:
        """(model, version in force at ``at``) or PricingError(unknown_model)."""
        model = self.resolve(name, provider)
        if model is None:
            at_provider = f" at provider {provider!r}" if provider else ""
            raise PricingError(
                "unknown_model",
                f"model {name!r}{at_provider} is not in the price catalog; add it "
                "(tokenmeter prices import) and replay the DLQ",
            )
        version = self.timeline(model).at(at)
        if version is None:
            raise PricingError(
                "unknown_model",
                f"model {name!r} ({model.provider}) has no price in force at {at.isoformat()}",
            )
        return model, version

    def timeline(self, model: ModelPrice) -> Timeline:
        """``model``'s price history as a Timeline (built once per entry of this catalog)."""
        memo: dict[int, tuple[ModelPrice, Timeline]] = self._timelines  # type: ignore[attr-defined]
        hit = memo.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        line = Timeline.of(model)
        if len(memo) < 10_000:  # holds the entry, so its id is not reused while memoized
            memo[id(model)] = (model, line)
        return line


def _provider_key(provider: str) -> str:
    """The index key of a provider: canonical id, or the lowercased name we do not know."""
    return canonical(provider) or provider.strip().lower()


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
    """Base plus the overlay's versions (same provider and model id) and models (new ones).

    An overlay model joins a base entry only by the same (provider, id or alias): never by a
    prefix naming another provider. An overlay version that lists no long-context band,
    service tier or rate the base version in force at its date has keeps the base's (an
    import of a price map that lacks them must not drop them); in a tie of dates the overlay
    wins (it is the correction).
    """
    models = {(_provider_key(m.provider), m.model): m for m in base.models}
    names: dict[tuple[str, str], tuple[str, str]] = {}
    for m in base.models:
        for n in (m.model, *m.aliases):
            names.setdefault((_provider_key(m.provider), n.lower()), (_provider_key(m.provider),
                                                                      m.model))
    for om in overlay.models:
        key = names.get((_provider_key(om.provider), om.model.lower()),
                        (_provider_key(om.provider), om.model))
        current = models.get(key)
        if current is None:
            models[key] = om
            continue
        versions = [_carry_over(v, current.at(v.effective_from)) for v in om.versions]
        models[key] = current.model_copy(update={
            "versions": [*current.versions, *versions],
            "aliases": sorted(set(current.aliases) | set(om.aliases)),
            "sources": list(dict.fromkeys([*current.sources, *om.sources])),
        })
    return Catalog(currency=base.currency, models=list(models.values()))


def _carry_over(new: PriceVersion, old: PriceVersion | None) -> PriceVersion:
    """``new`` with the band, tiers and rates it does not list taken from ``old``."""
    if old is None:
        return new
    update: dict[str, Any] = {f: getattr(old, f) for f in RATE_FIELDS
                              if getattr(new, f) is None and getattr(old, f) is not None}
    if new.long_context is None and old.long_context is not None:
        update["long_context"] = old.long_context
    tiers = {**old.tiers, **new.tiers}
    for name, tier in new.tiers.items():
        was = old.tiers.get(name)
        if was is not None and tier.multiplier is None and was.multiplier is not None:
            tiers[name] = tier.model_copy(update={"multiplier": was.multiplier})
    if tiers != new.tiers:
        update["tiers"] = tiers
    return new.model_copy(update=update) if update else new


def load_catalog_with_overlays(directory: Path | None) -> Catalog:
    """The builtin catalog plus every imported version under ``directory`` (in name order)."""
    catalog = load_catalog()
    if directory is not None and directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            catalog = merge(catalog, load_catalog(path))
    return catalog
