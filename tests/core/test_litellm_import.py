"""The LiteLLM price-map import: every representable field, provider scoping, determinism,
and the report of what it could not represent."""

from __future__ import annotations

import argparse
import json
import random
from datetime import datetime, timezone
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli.pricing import prices_command
from pipeline.core.catalog import PriceVersion, load_catalog, merge
from pipeline.core.litellm_prices import (
    R_MODALITY,
    R_OFF_PEAK,
    R_SEVERAL_THRESHOLDS,
    R_TIERED_TABLE,
    R_TOOL,
    R_UNIT,
    R_UPLIFT,
    S_CONFLICT,
    S_NO_TOKEN_PRICE,
    import_litellm,
    scope,
)
from pipeline.core.pricing import TokenCounts, cost_lines
from pipeline.settings import load_settings

EFF = datetime(2026, 1, 1, tzinfo=timezone.utc)
AT = datetime(2026, 2, 1, tzinfo=timezone.utc)


def one(spec: dict[str, Any], key: str = "m-1", provider: str = "openai") -> PriceVersion:
    """The single version the import makes of one entry."""
    result = import_litellm({key: {"litellm_provider": provider, **spec}}, EFF, "v", "t")
    assert len(result.catalog.models) == 1, result.report.as_json()
    return result.catalog.models[0].versions[0]


BASE = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}


def get(v: PriceVersion, path: str) -> Any:
    obj: Any = v
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part)
    return obj


# LiteLLM key -> where its price lands in our version (all per 1M tokens)
MAPPING = [
    ("input_cost_per_token", "input"),
    ("output_cost_per_token", "output"),
    ("cache_read_input_token_cost", "cache_read"),
    ("cache_creation_input_token_cost", "cache_write_5m"),
    ("cache_creation_input_token_cost_above_1hr", "cache_write_1h"),
    ("output_cost_per_reasoning_token", "reasoning"),
    *[(f"{k}_above_{n}k_tokens", f"long_context.{f}")
      for n in (128, 200, 272)
      for k, f in (("input_cost_per_token", "input"), ("output_cost_per_token", "output"),
                   ("cache_read_input_token_cost", "cache_read"),
                   ("cache_creation_input_token_cost", "cache_write_5m"),
                   ("cache_creation_input_token_cost_above_1hr", "cache_write_1h"))],
    *[(f"{k}{suffix}", f"tiers.{tier}.{f}")
      for tier, suffix in (("batch", "_batches"), ("flex", "_flex"), ("priority", "_priority"))
      for k, f in (("input_cost_per_token", "input"), ("output_cost_per_token", "output"),
                   ("cache_read_input_token_cost", "cache_read"),
                   ("cache_creation_input_token_cost", "cache_write_5m"))],
    *[(f"{k}_above_200k_tokens{suffix}", f"tiers.{tier}.long_context.{f}")
      for tier, suffix in (("batch", "_batches"), ("flex", "_flex"), ("priority", "_priority"))
      for k, f in (("input_cost_per_token", "input"), ("output_cost_per_token", "output"),
                   ("cache_read_input_token_cost", "cache_read"))],
]


@pytest.mark.parametrize(("key", "path"), MAPPING, ids=[k for k, _ in MAPPING])
def test_every_representable_field_is_kept(key: str, path: str) -> None:
    spec: dict[str, Any] = dict(BASE)
    n = key.split("_above_")[-1].split("k_tokens")[0] if "k_tokens" in key else "200"
    # a band and a tier need their input and output to exist at all
    spec[f"input_cost_per_token_above_{n}k_tokens"] = 3e-06
    spec[f"output_cost_per_token_above_{n}k_tokens"] = 4e-06
    for suffix in ("_batches", "_flex", "_priority"):
        if key.endswith(suffix):
            spec[f"input_cost_per_token{suffix}"] = 5e-07
            spec[f"output_cost_per_token{suffix}"] = 1e-06
    spec[key] = 7.25e-07
    v = one(spec)
    assert get(v, path) == D("0.725")
    if path.startswith("long_context"):
        assert v.long_context is not None and v.long_context.threshold == int(n) * 1000


def test_a_long_context_batch_call_composes_the_listed_rates() -> None:
    v = one({**BASE, "input_cost_per_token_above_272k_tokens": 2e-06,
             "output_cost_per_token_above_272k_tokens": 3e-06,
             "cache_read_input_token_cost_above_272k_tokens": 2e-07,
             "cache_read_input_token_cost": 1e-07,
             "input_cost_per_token_batches": 5e-07, "output_cost_per_token_batches": 1e-06,
             "cache_read_input_token_cost_batches": 5e-08,
             "input_cost_per_token_above_272k_tokens_batches": 1e-06,
             "output_cost_per_token_above_272k_tokens_batches": 1.5e-06,
             "cache_read_input_token_cost_above_272k_tokens_batches": 1e-07})
    counts = TokenCounts(input_tokens=300_000, output_tokens=1_000_000,
                         cache_read_input_tokens=100_000)
    model = load_catalog().models[0]
    lines = cost_lines(counts, model, v, currency="USD", service_tier="batch")
    # 200k uncached at 1.00 + 100k reads at 0.10 + 1M output at 1.50
    assert lines.total_cost == D("0.2") + D("0.01") + D("1.5")


def test_several_thresholds_keep_the_lowest_band_and_report_the_others() -> None:
    spec = {**BASE, "input_cost_per_token_above_128k_tokens": 2e-06,
            "output_cost_per_token_above_128k_tokens": 3e-06,
            "input_cost_per_token_above_256k_tokens": 4e-06,
            "output_cost_per_token_above_256k_tokens": 5e-06, "litellm_provider": "openai"}
    result = import_litellm({"m": spec}, EFF, "v", "t")
    v = result.catalog.models[0].versions[0]
    assert v.long_context is not None and v.long_context.threshold == 128_000
    assert result.report.dropped["m"] == {
        "input_cost_per_token_above_256k_tokens": R_SEVERAL_THRESHOLDS,
        "output_cost_per_token_above_256k_tokens": R_SEVERAL_THRESHOLDS}


@pytest.mark.parametrize(("key", "litellm_provider", "provider", "model"), [
    ("azure/eu/gpt-4o-2024-08-06", "azure", "azure", "eu/gpt-4o-2024-08-06"),
    ("together_ai/deepseek-ai/DeepSeek-R1", "together_ai", "together", "deepseek-ai/DeepSeek-R1"),
    ("bedrock/us-east-1/meta.llama3-70b-instruct-v1:0", "bedrock", "bedrock",
     "us-east-1/meta.llama3-70b-instruct-v1:0"),
    ("vertex_ai/claude-sonnet-4-5", "vertex_ai-anthropic_models", "vertex_ai",
     "claude-sonnet-4-5"),
    ("gemini/gemini-2.5-pro", "gemini", "google", "gemini-2.5-pro"),
    ("gemini-2.5-pro", "vertex_ai-language-models", "vertex_ai", "gemini-2.5-pro"),
    ("fireworks_ai/accounts/fireworks/models/x", "fireworks_ai", "fireworks_ai",
     "accounts/fireworks/models/x"),
    ("gpt-4o", "openai", "openai", "gpt-4o"),
])
def test_prefixed_keys_are_provider_scoped(key: str, litellm_provider: str, provider: str,
                                           model: str) -> None:
    assert scope(key, litellm_provider) == (provider, model)
    result = import_litellm({key: {**BASE, "litellm_provider": litellm_provider}}, EFF, "v", "t")
    m = result.catalog.models[0]
    assert (m.provider, m.model) == (provider, model)


def test_a_prefixed_key_never_reprices_the_bare_model() -> None:
    imported = import_litellm({"azure/eu/gpt-4o-2024-08-06": {
        "input_cost_per_token": 2.75e-06, "output_cost_per_token": 1.1e-05,
        "litellm_provider": "azure"}}, EFF, "v", "t").catalog
    merged = merge(load_catalog(), imported)
    _, openai = merged.price_version("gpt-4o-2024-08-06", AT, "openai")
    assert openai.input == D("2.50")  # OpenAI's own price, untouched
    model, azure = merged.price_version("azure/eu/gpt-4o-2024-08-06", AT, "azure")
    assert (model.provider, azure.input) == ("azure", D("2.75"))


def test_unknown_providers_are_kept_under_their_name_and_reported() -> None:
    result = import_litellm({"fireworks_ai/x": {**BASE, "litellm_provider": "fireworks_ai"}},
                            EFF, "v", "t")
    assert result.catalog.models[0].provider == "fireworks_ai"
    assert result.report.unknown_providers == {"fireworks_ai": ["fireworks_ai/x"]}


CONFLICTING = {
    "gpt-4o": {**BASE, "litellm_provider": "openai"},
    "openai/gpt-4o": {"input_cost_per_token": 9e-06, "output_cost_per_token": 9e-06,
                      "litellm_provider": "openai"},
    "azure/gpt-5": {**BASE, "litellm_provider": "azure"},
    "azure_text/gpt-5": {"input_cost_per_token": 3e-06, "output_cost_per_token": 4e-06,
                         "litellm_provider": "azure_text"},
    "GPT-X": {**BASE, "litellm_provider": "openai"},
    "gpt-x": {"input_cost_per_token": 5e-06, "output_cost_per_token": 6e-06,
              "litellm_provider": "openai"},
    "claude-x": {**BASE, "litellm_provider": "anthropic"},
}


def test_same_date_conflicts_do_not_depend_on_file_order() -> None:
    first = import_litellm(CONFLICTING, EFF, "v", "t")
    rng = random.Random(7)
    for _ in range(10):
        items = list(CONFLICTING.items())
        rng.shuffle(items)
        again = import_litellm(dict(items), EFF, "v", "t")
        assert again.catalog.model_dump_json() == first.catalog.model_dump_json()
        assert again.report.as_json() == first.report.as_json()
    kept = {(c["provider"], c["model"]): c["kept"] for c in first.report.conflicts}
    # the exact key without a prefix wins; otherwise the first key in name order (keys
    # differing in case only are one model: the catalog matches names case-insensitively)
    assert kept == {("openai", "gpt-4o"): "gpt-4o", ("azure", "gpt-5"): "azure/gpt-5",
                    ("openai", "GPT-X"): "GPT-X"}
    assert first.report.skipped["openai/gpt-4o"] == S_CONFLICT
    assert all(not c["same_prices"] for c in first.report.conflicts)
    _, v = first.catalog.price_version("gpt-4o", AT, "openai")
    assert v.input == D("1")


def test_the_report_names_every_field_it_could_not_represent() -> None:
    spec = {**BASE, "litellm_provider": "openai",
            "tiered_pricing": [{"input_cost_per_token": 1e-06, "range": [0, 32000]}],
            "input_cost_per_audio_token": 1e-05, "output_cost_per_image": 0.04,
            "input_cost_per_second": 0.001, "regional_processing_uplift_multiplier_eu": 1.1,
            "off_peak_pricing": {"input_cost_per_token": 5e-07},
            "search_context_cost_per_query": {"search_context_size_low": 0.01},
            "max_input_tokens": 128000, "supports_vision": True}
    result = import_litellm({"m": spec, "embed": {"input_cost_per_token": 1e-07,
                                                  "litellm_provider": "openai"}}, EFF, "v", "t")
    assert result.report.dropped["m"] == {
        "tiered_pricing": R_TIERED_TABLE, "input_cost_per_audio_token": R_MODALITY,
        "output_cost_per_image": R_MODALITY, "input_cost_per_second": R_UNIT,
        "regional_processing_uplift_multiplier_eu": R_UPLIFT, "off_peak_pricing": R_OFF_PEAK,
        "search_context_cost_per_query": R_TOOL}
    assert result.report.skipped == {"embed": S_NO_TOKEN_PRICE}
    counts = result.report.counts()
    assert counts[R_MODALITY] == 2 and counts[S_NO_TOKEN_PRICE] == 1
    json.dumps(result.report.as_json())  # JSON-ready as it is


def test_alias_of_becomes_an_alias_of_the_imported_model() -> None:
    result = import_litellm({
        "bedrock/claude-x-latest": {"alias_of": "anthropic.claude-x-v1:0"},
        "anthropic.claude-x-v1:0": {**BASE, "litellm_provider": "bedrock"}}, EFF, "v", "t")
    model = result.catalog.resolve("claude-x-latest", "bedrock")
    assert model is not None and model.model == "anthropic.claude-x-v1:0"


def test_prices_import_prints_the_report(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(CONFLICTING | {"m": {**BASE, "litellm_provider": "openai",
                                                    "input_cost_per_audio_token": 1e-05}}))
    settings = load_settings(data_dir=str(tmp_path))
    args = argparse.Namespace(action="import", arg=str(path), effective_from="2026-01-01",
                              json=False)
    assert prices_command(args, settings) == 0
    text = capsys.readouterr().out
    assert "imported 5 models" in text and f"1  {R_MODALITY}" in text
    assert "3  same-date conflicts resolved (3 with different prices" in text
    args.json = True
    assert prices_command(args, settings) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dropped"] == {"m": {"input_cost_per_audio_token": R_MODALITY}}
    assert report["counts_by_reason"][S_CONFLICT] == 3
