import json
from datetime import datetime, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest

from pipeline.catalog import from_litellm, load_catalog, load_catalog_with_overlays, merge

CAT = load_catalog()
NOW = datetime(2025, 7, 1, tzinfo=timezone.utc)


def test_catalog_size_and_providers() -> None:
    assert len(CAT.models) >= 40
    providers = {m.provider for m in CAT.models}
    publishers = {m.publisher for m in CAT.models}
    assert {"openai", "anthropic", "google", "mistral", "deepseek"} <= providers
    assert "meta" in publishers


def test_every_model_has_sources_and_valid_versions() -> None:
    for m in CAT.models:
        assert len(m.sources) >= 2, f"{m.model} needs a primary and an independent source"
        assert m.versions
        for v in m.versions:
            assert v.effective_from.tzinfo is not None
            if v.effective_to is not None:
                assert v.effective_to > v.effective_from


def test_versions_do_not_overlap() -> None:
    for m in CAT.models:
        vs = sorted(m.versions, key=lambda v: v.effective_from)
        for a, b in zip(vs, vs[1:], strict=False):
            assert a.effective_to is not None and a.effective_to <= b.effective_from, m.model


@pytest.mark.parametrize(
    "name, at, inp, out",
    [
        # the product brief's table (blended there; list input/output here)
        ("gpt-4o", datetime(2024, 6, 1, tzinfo=timezone.utc), "5.00", "15.00"),
        ("gpt-4o-mini", NOW, "0.15", "0.60"),
        ("claude-3-5-sonnet", NOW, "3.00", "15.00"),
        ("claude-3-haiku", NOW, "0.25", "1.25"),
        ("gemini-1.5-pro", datetime(2024, 6, 1, tzinfo=timezone.utc), "3.50", "10.50"),
        ("gemini-1.5-flash", datetime(2024, 6, 1, tzinfo=timezone.utc), "0.35", "1.05"),
        ("llama-3-70b", NOW, "0.59", "0.79"),
        ("llama-3-8b", NOW, "0.05", "0.08"),
    ],
)
def test_brief_models_present(name: str, at: datetime, inp: str, out: str) -> None:
    m = CAT.resolve(name)
    assert m is not None
    v = m.at(at)
    assert v is not None
    assert (v.input, v.output) == (D(inp), D(out))


@pytest.mark.parametrize(
    "alias, model",
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("GPT-4o", "gpt-4o"),
        ("gpt-4o-2099-01-01", "gpt-4o"),
        ("claude-3-haiku-20240307", "claude-3-haiku"),
        ("anthropic/claude-3-5-sonnet-20240620", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        ("mistral-large-2411", "mistral-large"),
        ("meta-llama/Meta-Llama-3-70B-Instruct", "llama-3-70b"),
        ("llama3-8b-8192", "llama-3-8b"),
        ("gemini-1.5-pro-002", "gemini-1.5-pro"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ],
)
def test_aliases(alias: str, model: str) -> None:
    found = CAT.resolve(alias)
    assert found is not None and found.model == model


def test_litellm_import_adds_a_version(tmp_path: Path) -> None:
    price_map = {
        "sample_spec": {"input_cost_per_token": 0},
        "gpt-4o": {"input_cost_per_token": 2.0e-06, "output_cost_per_token": 8.0e-06,
                   "cache_read_input_token_cost": 1.0e-06, "litellm_provider": "openai",
                   "input_cost_per_token_batches": 1.0e-06,
                   "output_cost_per_token_batches": 4.0e-06},
        "brand-new-model": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07,
                            "litellm_provider": "newco"},
        "embedding-only": {"input_cost_per_token": 1e-07, "mode": "embedding"},
    }
    (tmp_path / "map.json").write_text(json.dumps(price_map))
    data = json.loads((tmp_path / "map.json").read_text(), parse_float=D)
    eff = datetime(2026, 1, 1, tzinfo=timezone.utc)
    imported = from_litellm(data, eff, "import-2026-01-01", "map.json")
    assert {m.model for m in imported.models} == {"gpt-4o", "brand-new-model"}
    merged = merge(CAT, imported)
    before = merged.price_version("gpt-4o", datetime(2025, 12, 31, tzinfo=timezone.utc))[1]
    after = merged.price_version("gpt-4o", datetime(2026, 1, 2, tzinfo=timezone.utc))[1]
    assert before.input == D("2.50") and after.input == D("2.000000")
    assert after.tiers["batch"].output == D("4.000000")
    assert merged.resolve("brand-new-model") is not None
    assert merged.resolve("gpt-4o-2024-08-06").model == "gpt-4o"  # aliases survive


def test_overlay_directory(tmp_path: Path) -> None:
    imported = from_litellm({"newco-1": {"input_cost_per_token": 1e-06,
                                         "output_cost_per_token": 2e-06}},
                            NOW, "v-test", "x")
    (tmp_path / "001.json").write_text(imported.model_dump_json())
    cat = load_catalog_with_overlays(tmp_path)
    assert cat.resolve("newco-1") is not None
    assert load_catalog_with_overlays(tmp_path / "missing").resolve("newco-1") is None
