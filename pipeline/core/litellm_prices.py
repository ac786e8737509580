"""Import LiteLLM's model_prices_and_context_window.json into catalog versions (pure).

Every price field the catalog can represent is kept: base, cache read, 5-minute and 1-hour
cache writes, reasoning, one long-context band (``*_above_{N}k_tokens``) and the service
tiers (``*_batches`` -> batch, ``*_flex``, ``*_priority``), each with its own long-context
rates (``*_above_{N}k_tokens_{tier}``). A key's ``litellm_provider`` selects the provider
(``azure/eu/gpt-4o-2024-08-06`` is the Azure model ``eu/gpt-4o-2024-08-06``, never folded
into OpenAI's ``gpt-4o-2024-08-06``). What cannot be represented is listed in the report,
per key and field, with the reason; nothing is dropped silently. The result does not depend
on the order of the keys in the file.

LiteLLM's semantics differ from ours where a rate is missing: it bills a missing tier or
long-context rate at the standard one (and halves standard rates for a batch the model does
not price), while the catalog refuses what it does not list (``unpriced``). The import copies
only what LiteLLM lists; it never fills gaps.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.core.catalog import PER_MILLION, Catalog
from pipeline.core.providers import canonical, split_model

# our rate field -> LiteLLM's per-token key (standard tier, base band)
FIELD_KEYS: dict[str, str] = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_read": "cache_read_input_token_cost",
    "cache_write_5m": "cache_creation_input_token_cost",
    "cache_write_1h": "cache_creation_input_token_cost_above_1hr",
    "reasoning": "output_cost_per_reasoning_token",
}
# our tier name -> LiteLLM's key suffix
TIER_SUFFIXES: dict[str, str] = {"batch": "_batches", "flex": "_flex", "priority": "_priority"}
# fields LiteLLM prices per long-context band (it has no reasoning rate per band)
_BAND_FIELDS = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")
_THRESHOLD = re.compile(r"_above_(\d+)(k?)_tokens")

# reasons for a field the catalog cannot represent (report keys; docs/pricing.md lists them)
R_SEVERAL_THRESHOLDS = "several long-context thresholds (the catalog holds one band)"
R_BAND_WITHOUT_BASE = "tier long-context rate without a standard long-context band"
R_TIER_INCOMPLETE = "service tier without both input and output rates"
R_TIERED_TABLE = "tiered_pricing table"
R_MODALITY = "audio/image/video price"
R_UNIT = "not priced per token (per second/character/image/query/page/request/DBU)"
R_UPLIFT = "regional or FedRAMP uplift multiplier"
R_OFF_PEAK = "off-peak pricing"
R_TOOL = "tool, search or grounding price"
R_TTL = "cache TTL the catalog does not know (12h, explicit cache)"
R_TIER_UNKNOWN = "service tier the catalog does not know (balanced, ultrafast, decisions)"
R_DUPLICATE = "duplicate of another field"
R_NOT_NUMBER = "not a finite, non-negative number"
R_UNKNOWN = "unrecognised price field"

# why a whole key was not imported
S_NO_TOKEN_PRICE = "no input and output price per token"  # noqa: S105 (a reason, no secret)
S_CONFLICT = "another key maps to the same provider and model id"
S_ALIAS_TARGET = "alias_of names a key that was not imported"
S_ALIAS_TAKEN = "alias_of: the alias id is already a model"

_MODALITY = ("audio", "image", "video", "pixel")
_UNITS = ("per_second", "per_character", "per_query", "per_request", "per_page", "per_credit",
          "dbu", "per_text_message", "per_unit", "per_image", "per_session")
_TOOLS = ("search_context", "grounding", "code_interpreter", "file_search", "vector_store",
          "computer_use", "citation", "annotation", "ocr", "guardrail")


@dataclass
class ImportReport:
    """What the import could not represent, and the choices it made (JSON-ready)."""

    imported: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason
    dropped: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> field -> reason
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    unknown_providers: dict[str, list[str]] = field(default_factory=dict)  # provider -> keys
    shadowed: dict[str, str] = field(default_factory=dict)  # key -> where its bare id resolves

    def counts(self) -> dict[str, int]:
        """Number of keys (skipped) or fields (dropped) per reason, most frequent first."""
        c: Counter[str] = Counter(self.skipped.values())
        for fields in self.dropped.values():
            c.update(fields.values())
        return dict(c.most_common())

    def as_json(self) -> dict[str, Any]:
        """The whole report as plain JSON types."""
        return {
            "imported": self.imported,
            "counts_by_reason": self.counts(),
            "skipped": dict(sorted(self.skipped.items())),
            "dropped": {k: dict(sorted(v.items())) for k, v in sorted(self.dropped.items())},
            "conflicts": self.conflicts,
            "unknown_providers": {p: sorted(ks)
                                  for p, ks in sorted(self.unknown_providers.items())},
            "shadowed": dict(sorted(self.shadowed.items())),
        }


@dataclass(frozen=True)
class ImportResult:
    """The imported catalog and the report of what it left out."""

    catalog: Catalog
    report: ImportReport


def _rate(value: Any) -> Decimal | None:
    """A LiteLLM per-token price as a per-1M Decimal (str() keeps floats' short form)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    rate = (Decimal(str(value)) * PER_MILLION).normalize()
    if not rate.is_finite() or rate < 0:  # one bad field must not sink the whole import
        return None
    exponent = rate.as_tuple().exponent
    return rate.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else rate


def _threshold(text: str, k: str) -> int:
    return int(text) * (1000 if k else 1)


def _band_key(base: str, n: str) -> str:
    return f"{base}_above_{n}_tokens"


def scope(key: str, litellm_provider: str) -> tuple[str, str]:
    """(provider, model id) for a LiteLLM key: the key without a leading provider segment.

    ``together_ai/deepseek-ai/DeepSeek-R1`` with provider ``together_ai`` is Together's
    ``deepseek-ai/DeepSeek-R1``; a provider we do not know keeps its LiteLLM spelling.
    """
    provider = canonical(litellm_provider) or litellm_provider
    head, sep, rest = key.partition("/")
    if sep and rest and (canonical(head) or head.lower()) == provider:
        return provider, rest
    return provider, key


def _classify(name: str) -> str:
    """Why a price field we did not consume cannot be represented."""
    low = name.lower()
    if low == "tiered_pricing":
        return R_TIERED_TABLE
    if low == "off_peak_pricing":
        return R_OFF_PEAK
    if "uplift" in low or low == "provider_specific_entry":
        return R_UPLIFT
    if any(t in low for t in _TOOLS):
        return R_TOOL
    if any(m in low for m in _MODALITY):
        return R_MODALITY
    if any(u in low for u in _UNITS):
        return R_UNIT
    if "above_12hr" in low or low.startswith("explicit_cache"):
        return R_TTL
    if low.endswith(("_balanced", "_ultrafast", "_decisions", "_fast")):
        return R_TIER_UNKNOWN
    if low == "input_cost_per_token_cache_hit":
        return R_DUPLICATE
    if _THRESHOLD.search(low):
        return R_SEVERAL_THRESHOLDS
    return R_UNKNOWN


def _is_price_field(name: str) -> bool:
    low = name.lower()
    return ("cost" in low or "pricing" in low or "multiplier" in low
            or low == "provider_specific_entry")


def _version(spec: dict[str, Any], effective_from: datetime, version: str,
             dropped: dict[str, str]) -> dict[str, Any] | None:
    """One catalog version from a LiteLLM entry; fields it cannot use go to ``dropped``."""
    used: set[str] = set()

    def take(key: str) -> Decimal | None:
        if key not in spec or spec[key] is None:
            return None
        value = _rate(spec[key])
        if value is None:
            dropped[key] = R_NOT_NUMBER
            return None
        used.add(key)
        return value

    rates = {f: take(k) for f, k in FIELD_KEYS.items()}
    if rates["input"] is None or rates["output"] is None:
        return None
    out: dict[str, Any] = {"version": version, "effective_from": effective_from,
                           **{f: v for f, v in rates.items() if v is not None}}
    # long context: the lowest threshold with standard input and output rates is the band
    thresholds = sorted({(_threshold(m.group(1), m.group(2)), m.group(1) + m.group(2))
                         for key in spec if (m := _THRESHOLD.search(key))
                         and key.startswith(("input_cost_per_token_above_",
                                             "output_cost_per_token_above_"))
                         and spec[key] is not None} - {(0, "0"), (0, "0k")})
    band: str | None = None
    for tokens, n in thresholds:
        if spec.get(_band_key(FIELD_KEYS["input"], n)) is not None \
                and spec.get(_band_key(FIELD_KEYS["output"], n)) is not None:
            band = n
            lc = {f: take(_band_key(FIELD_KEYS[f], n)) for f in _BAND_FIELDS}
            out["long_context"] = {"threshold": tokens,
                                   **{f: v for f, v in lc.items() if v is not None}}
            break
    tiers: dict[str, Any] = {}
    for tier, suffix in TIER_SUFFIXES.items():
        listed = {f: take(k + suffix) for f, k in FIELD_KEYS.items()}
        listed = {f: v for f, v in listed.items() if v is not None}
        lc_listed: dict[str, Decimal] = {}
        if band is not None:
            for f in _BAND_FIELDS:
                v = take(_band_key(FIELD_KEYS[f], band) + suffix)
                if v is not None:
                    lc_listed[f] = v
        if "input" not in listed or "output" not in listed:
            # the catalog needs a tier's input and output; LiteLLM would use standard ones
            for f, k in FIELD_KEYS.items():
                if f in listed:
                    used.discard(k + suffix)
                    dropped[k + suffix] = R_TIER_INCOMPLETE
            for f in lc_listed:
                key = _band_key(FIELD_KEYS[f], band or "") + suffix
                used.discard(key)
                dropped[key] = R_TIER_INCOMPLETE
            continue
        tiers[tier] = {**listed, **({"long_context": lc_listed} if lc_listed else {})}
    out["tiers"] = tiers
    for key, value in spec.items():
        if key in used or value is None or not _is_price_field(key) or key in dropped:
            continue
        m = _THRESHOLD.search(key)
        reason = _classify(key)
        if reason == R_SEVERAL_THRESHOLDS and m and band is None:
            reason = R_BAND_WITHOUT_BASE
        dropped[key] = reason
    return out


def import_litellm(data: dict[str, Any], effective_from: datetime, version: str,
                   source: str) -> ImportResult:
    """Convert LiteLLM's price map into catalog versions plus a report of what was left out."""
    report = ImportReport()
    entries: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    aliases: list[tuple[str, str]] = []
    for key in sorted(data):  # sorted: the result never depends on the file's order
        spec = data[key]
        if key == "sample_spec" or not isinstance(spec, dict):
            continue
        if isinstance(spec.get("alias_of"), str) and spec.get("litellm_provider") is None:
            aliases.append((key, spec["alias_of"]))
            continue
        dropped: dict[str, str] = {}
        built = _version(spec, effective_from, version, dropped)
        if built is None:
            report.skipped[key] = S_NO_TOKEN_PRICE
            continue
        if dropped:
            report.dropped[key] = dropped
        lp = str(spec.get("litellm_provider") or "unknown")
        provider, model_id = scope(key, lp)
        if canonical(lp) is None:
            report.unknown_providers.setdefault(lp, []).append(key)
        entries.setdefault((provider, model_id.lower()), []).append(
            (key, {"model": model_id, "provider": provider, "versions": [built],
                   "sources": [source]}))
    models: dict[str, dict[str, Any]] = {}  # winning key -> model
    ids: dict[tuple[str, str], str] = {}
    for (provider, model_id), candidates in sorted(entries.items()):
        # the exact key without a prefix wins, then the lexicographically first key
        ranked = sorted(candidates, key=lambda c: (c[0].lower() != model_id, c[0]))
        winner, model = ranked[0]
        models[winner] = model
        ids[(provider, model_id)] = winner
        if len(ranked) > 1:
            base = model["versions"][0]
            losers = [k for k, _ in ranked[1:]]
            for k in losers:
                report.skipped[k] = S_CONFLICT
            report.conflicts.append({
                "provider": provider, "model": model["model"], "kept": winner, "dropped": losers,
                "same_prices": all(m["versions"][0] == base for _, m in ranked[1:]),
            })
    scoped = {k: pid for pid, candidates in entries.items() for k, _ in candidates}
    for alias_key, target in aliases:
        kept = ids.get(scoped.get(target, ("", "")))
        if kept is None or kept not in models:
            report.skipped[alias_key] = S_ALIAS_TARGET
            continue
        model = models[kept]
        _, alias_id = scope(alias_key, model["provider"])
        if (model["provider"], alias_id.lower()) in ids:
            report.skipped[alias_key] = S_ALIAS_TAKEN
            continue
        model.setdefault("aliases", []).append(alias_id)
        ids[(model["provider"], alias_id.lower())] = kept
    for key, model in models.items():
        who, _ = split_model(model["provider"], model["model"])
        if who is not None and who != model["provider"]:
            report.shadowed[key] = who  # the bare id reads as another provider's prefix
    report.imported = len(models)
    catalog = Catalog.model_validate({"models": [models[k] for k in sorted(models)]})
    return ImportResult(catalog, report)


def from_litellm(data: dict[str, Any], effective_from: datetime, version: str,
                 source: str) -> Catalog:
    """The imported catalog alone (see import_litellm for the report)."""
    return import_litellm(data, effective_from, version, source).catalog
