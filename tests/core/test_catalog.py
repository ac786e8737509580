import json
from datetime import datetime, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest

from pipeline.core.catalog import load_catalog, load_catalog_with_overlays, merge
from pipeline.core.litellm_prices import from_litellm

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
    "name, provider, at, inp, out",
    [
        # the product brief's table (blended there; list input/output here)
        ("gpt-4o", "openai", datetime(2024, 6, 1, tzinfo=timezone.utc), "5.00", "15.00"),
        ("gpt-4o-mini", "openai", NOW, "0.15", "0.60"),
        ("claude-3-5-sonnet", "anthropic", NOW, "3.00", "15.00"),
        ("claude-3-haiku", "anthropic", NOW, "0.25", "1.25"),
        ("gemini-1.5-pro", "google", datetime(2024, 6, 1, tzinfo=timezone.utc), "3.50", "10.50"),
        ("gemini-1.5-flash", "google", datetime(2024, 6, 1, tzinfo=timezone.utc), "0.35", "1.05"),
        ("llama-3-70b", "groq", NOW, "0.59", "0.79"),
        ("llama-3-8b", "groq", NOW, "0.05", "0.08"),
    ],
)
def test_brief_models_present(name: str, provider: str, at: datetime, inp: str,
                              out: str) -> None:
    m = CAT.resolve(name, provider)
    assert m is not None
    v = m.at(at)
    assert v is not None
    assert (v.input, v.output) == (D(inp), D(out))


@pytest.mark.parametrize(
    "provider, alias, model",
    [
        ("openai", "gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),  # a snapshot is itself
        ("openai", "gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("openai", "GPT-4o", "gpt-4o"),
        ("anthropic", "claude-3-haiku-20240307", "claude-3-haiku"),
        ("anthropic", "anthropic/claude-3-5-sonnet-20240620", "claude-3-5-sonnet"),
        (None, "anthropic/claude-3-5-sonnet-20240620", "claude-3-5-sonnet"),  # no provider
        ("azure", "azure/gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),  # the same provider
        ("anthropic", "claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        ("mistral", "mistral-large-2411", "mistral-large"),
        ("groq", "meta-llama/Meta-Llama-3-70B-Instruct", "llama-3-70b"),
        ("groq", "llama3-8b-8192", "llama-3-8b"),
        ("google", "gemini-1.5-pro-002", "gemini-1.5-pro"),
        ("gemini", "gemini-1.5-pro-002", "gemini-1.5-pro"),  # provider spellings
        ("gcp.gemini", "gemini-1.5-pro-002", "gemini-1.5-pro"),
        ("OpenAI", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        (None, "openai/gpt-4o-mini", "gpt-4o-mini"),
    ],
)
def test_aliases(provider: str | None, alias: str, model: str) -> None:
    found = CAT.resolve(alias, provider)
    assert found is not None and found.model == model


@pytest.mark.parametrize(
    "provider, name",
    [
        ("openai", "gpt-4o-2099-01-01"),  # an unknown snapshot is not guessed
        ("openai", "gpt-3.5-turbo-0301"),  # nor priced as -0125
        ("openai", "gpt-4o-preview"),
        ("together", "deepseek-ai/DeepSeek-R1-0000"),
        ("deepseek", "together_ai/deepseek-reasoner"),  # Together is not DeepSeek's API
        ("bedrock", "llama-3-70b"),  # Groq's rate is not Bedrock's
        ("groq", "claude-3-haiku"),
        ("my-gateway", "gpt-4o"),  # a provider we do not price
        ("openai", "claude-3-haiku"),
        # a prefix naming another provider is that provider's model sold by this one
        ("openai", "anthropic/claude-3-5-sonnet-20240620"),
        ("x", "openai/gpt-4o-mini"),
        ("openrouter", "openai/gpt-4o"),
        ("azure", "openai/gpt-4o"),
        ("together", "mistralai/mistral-large-latest"),
        ("fireworks_ai", "deepseek/deepseek-chat"),
    ],
)
def test_never_another_providers_rate(provider: str, name: str) -> None:
    assert CAT.resolve(name, provider) is None


@pytest.mark.parametrize(
    "name, inp, out",
    [("gpt-3.5-turbo-0613", "1.50", "2.00"), ("gpt-3.5-turbo-1106", "1.00", "2.00"),
     ("gpt-3.5-turbo-0125", "0.50", "1.50"), ("gpt-4o-2024-08-06", "2.50", "10.00")],
)
def test_known_snapshots_priced_as_themselves(name: str, inp: str, out: str) -> None:
    m, v = CAT.price_version(name, NOW, "openai")
    assert (v.input, v.output) == (D(inp), D(out))


@pytest.mark.parametrize(
    "name, provider, other",
    [
        ("deepseek-ai/DeepSeek-R1", "together", ("deepseek-reasoner", "deepseek")),
        ("together_ai/deepseek-ai/DeepSeek-R1", "together", ("deepseek-reasoner", "deepseek")),
        ("meta.llama3-3-70b-instruct-v1:0", "aws.bedrock", ("llama-3.3-70b-versatile", "groq")),
        ("gpt-4o-2024-08-06", "azure", ("gpt-4o-2024-08-06", "openai")),
        ("claude-sonnet-4@20250514", "vertex_ai", ("claude-sonnet-4-20250514", "anthropic")),
    ],
)
def test_same_model_at_another_provider_has_its_own_entry(name, provider, other) -> None:
    here = CAT.resolve(name, provider)
    there = CAT.resolve(*other)
    assert here is not None and there is not None and here is not there
    assert here.provider != there.provider


def test_every_version_names_its_source_and_when_it_was_checked() -> None:
    for m in CAT.models:
        for v in m.versions:
            assert v.source.startswith("https://"), (m.provider, m.model, v.version)
            assert v.checked.startswith("2026-12-02 via search tool"), (m.model, v.version)


def test_gemini_cache_price_change_is_effective_dated() -> None:
    rates = [(CAT.price_version("gemini-2.5-pro", datetime(*d, tzinfo=timezone.utc),
                                "google")[1].cache_read) for d in ((2025, 9, 1), (2025, 10, 15),
                                                                   (2025, 11, 1))]
    assert rates == [D("0.31"), None, D("0.125")]  # the window with no known date refuses


def test_without_provider_a_name_means_its_publishers_api() -> None:
    m = CAT.resolve("gpt-4o-mini")
    assert m is not None and m.provider == "openai"
    assert CAT.resolve("llama-3-70b") is None  # Meta sells no API: no home to assume


def test_litellm_import_adds_a_version(tmp_path: Path) -> None:
    price_map = {
        "sample_spec": {"input_cost_per_token": 0},
        "gpt-4o": {"input_cost_per_token": 2.0e-06, "output_cost_per_token": 8.0e-06,
                   "cache_read_input_token_cost": 1.0e-06, "litellm_provider": "openai",
                   "input_cost_per_token_batches": 1.0e-06,
                   "output_cost_per_token_batches": 4.0e-06,
                   "cache_read_input_token_cost_batches": 5.0e-07},
        "azure/gpt-4o": {"input_cost_per_token": 9e-06, "output_cost_per_token": 9e-06,
                         "litellm_provider": "azure"},
        "brand-new-model": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07,
                            "litellm_provider": "newco"},
        "embedding-only": {"input_cost_per_token": 1e-07, "mode": "embedding"},
    }
    (tmp_path / "map.json").write_text(json.dumps(price_map))
    data = json.loads((tmp_path / "map.json").read_text(), parse_float=D)
    eff = datetime(2026, 1, 1, tzinfo=timezone.utc)
    imported = from_litellm(data, eff, "import-2026-01-01", "map.json")
    assert {(m.provider, m.model) for m in imported.models} == {
        ("openai", "gpt-4o"), ("azure", "gpt-4o"), ("newco", "brand-new-model")}
    merged = merge(CAT, imported)
    before = merged.price_version("gpt-4o", datetime(2025, 12, 31, tzinfo=timezone.utc),
                                  "openai")[1]
    after = merged.price_version("gpt-4o", datetime(2026, 1, 2, tzinfo=timezone.utc),
                                 "openai")[1]
    assert before.input == D("2.50") and after.input == D("2.000000")
    assert after.tiers["batch"].output == D("4.000000")
    assert after.tiers["batch"].cache_read == D("0.5")  # tier cache prices are kept
    assert merged.price_version("azure/gpt-4o", datetime(2026, 1, 2, tzinfo=timezone.utc),
                                "azure")[1].input == D("9")
    # a provider known only from imported prices: its own entries price it, nothing else does
    assert merged.resolve("brand-new-model", "newco") is not None
    assert CAT.resolve("brand-new-model", "newco") is None
    assert merged.resolve("gpt-4o-mini-2024-07-18", "openai").model == "gpt-4o-mini"


def test_overlay_directory(tmp_path: Path) -> None:
    imported = from_litellm({"together_ai/newco/newco-1": {"input_cost_per_token": 1e-06,
                                                           "output_cost_per_token": 2e-06,
                                                           "litellm_provider": "together_ai"}},
                            NOW, "v-test", "x")
    (tmp_path / "001.json").write_text(imported.model_dump_json())
    cat = load_catalog_with_overlays(tmp_path)
    model = cat.resolve("newco/newco-1", "together")
    assert model is not None and model is cat.resolve("together_ai/newco/newco-1")
    assert cat.resolve("newco/newco-1", "openai") is None
    assert load_catalog_with_overlays(tmp_path / "missing").resolve("newco/newco-1",
                                                                    "together") is None


def _import(models: dict, effective: datetime) -> object:
    return from_litellm(models, effective, f"imp-{effective.date()}", "map.json")


def test_an_import_joins_only_the_same_providers_entry() -> None:
    """A reseller's `openai/gpt-4o` (vercel_ai_gateway, deepinfra, ...) never reprices
    OpenAI's own gpt-4o."""
    eff = datetime(2026, 1, 1, tzinfo=timezone.utc)
    imported = _import({"vercel_ai_gateway/openai/gpt-4o": {
        "input_cost_per_token": 1e-09, "output_cost_per_token": 1e-09,
        "litellm_provider": "vercel_ai_gateway"}}, eff)
    merged = merge(CAT, imported)
    at = datetime(2026, 2, 1, tzinfo=timezone.utc)
    assert merged.price_version("gpt-4o", at, "openai")[1].input == D("2.50")
    assert merged.resolve("openai/gpt-4o", "vercel_ai_gateway") is not None


def test_an_import_keeps_the_band_and_tiers_it_does_not_list() -> None:
    """LiteLLM's claude-sonnet-4-5 lists no long-context band: importing it must not drop
    ours (300k in + 100k out stays $4.05, batch $2.025)."""
    eff = datetime(2026, 1, 1, tzinfo=timezone.utc)
    imported = _import({"claude-sonnet-4-5": {
        "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
        "input_cost_per_token_batches": 1.5e-06, "output_cost_per_token_batches": 7.5e-06,
        "litellm_provider": "anthropic"}}, eff)
    merged = merge(CAT, imported)
    at = datetime(2026, 2, 1, tzinfo=timezone.utc)
    m, v = merged.price_version("claude-sonnet-4-5", at, "anthropic")
    assert v.version.startswith("imp-")
    from pipeline.core.pricing import TokenCounts, cost_lines

    counts = TokenCounts(input_tokens=300_000, output_tokens=100_000)
    assert cost_lines(counts, m, v, currency="USD").total_cost == D("4.05")
    assert cost_lines(counts, m, v, currency="USD", service_tier="batch").total_cost \
        == D("2.025")


def test_in_a_tie_of_dates_the_later_correction_wins() -> None:
    eff = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first = merge(CAT, _import({"gpt-4o": {"input_cost_per_token": 1e-06,
                                           "output_cost_per_token": 1e-06,
                                           "litellm_provider": "openai"}}, eff))
    second = merge(first, _import({"gpt-4o": {"input_cost_per_token": 2e-06,
                                              "output_cost_per_token": 2e-06,
                                              "litellm_provider": "openai"}}, eff))
    v = second.price_version("gpt-4o", datetime(2026, 2, 1, tzinfo=timezone.utc), "openai")[1]
    assert v.input == D("2.000000")


def test_google_batch_lists_the_standard_cache_price() -> None:
    """Google's batch tab lists the same cache price as standard: no discount on cached
    tokens (a bare 0.5 multiplier would halve them)."""
    for m in CAT.models:
        if m.provider != "google":
            continue
        for v in m.versions:
            batch = v.tiers.get("batch")
            if batch is not None and v.cache_read is not None:
                assert batch.cache_read == v.cache_read, (m.model, v.version)
                if v.long_context is not None and v.long_context.cache_read is not None:
                    assert batch.long_context is not None
                    assert batch.long_context.cache_read == v.long_context.cache_read


@pytest.mark.parametrize(("value", "tier"), [
    ("default", "standard"), ("priority", "priority"), ("flex", "flex"), ("Fast", "priority"),
    ("auto", None), (None, None), (3, None), ("batch", "batch"),
])
def test_provider_service_tier_names(value, tier) -> None:
    from pipeline.core.providers import service_tier

    assert service_tier(value) == tier
