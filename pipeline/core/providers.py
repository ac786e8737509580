"""Provider names: the many spellings of who bills a call, reduced to one (pure).

Prices are keyed by (provider, model): the same model costs differently at OpenAI and
Azure, at Anthropic and Bedrock, at DeepSeek and Together. Events name the provider in
``provider`` (OpenTelemetry ``gen_ai.provider.name`` / ``gen_ai.system``, LiteLLM's
``custom_llm_provider``) or as a prefix of ``model`` (``together_ai/deepseek-ai/DeepSeek-R1``).
"""

from __future__ import annotations

from typing import Any

# spelling -> canonical provider id (the ids the catalog uses)
_ALIASES: dict[str, str] = {
    "openai": "openai", "openai_api": "openai", "text-completion-openai": "openai",
    "azure": "azure", "azure_openai": "azure", "azure.ai.openai": "azure", "az.ai.openai": "azure",
    "anthropic": "anthropic",
    "bedrock": "bedrock", "aws_bedrock": "bedrock", "aws.bedrock": "bedrock",
    "amazon_bedrock": "bedrock", "bedrock_converse": "bedrock",
    "google": "google", "gemini": "google", "google_ai_studio": "google", "gcp.gemini": "google",
    "gcp.gen_ai": "google", "google_genai": "google",
    "vertex_ai": "vertex_ai", "vertex": "vertex_ai", "vertexai": "vertex_ai",
    "gcp.vertex_ai": "vertex_ai", "vertex_ai_beta": "vertex_ai", "google_vertex": "vertex_ai",
    "together": "together", "together_ai": "together", "togetherai": "together",
    "groq": "groq",
    "deepseek": "deepseek",
    "mistral": "mistral", "mistral_ai": "mistral", "mistralai": "mistral",
    # LiteLLM's litellm_provider spellings: Vertex AI's per-publisher routes, Azure's
    # text-completion route (all billed by Vertex AI / Azure themselves)
    "vertex_ai-language-models": "vertex_ai", "vertex_ai-anthropic_models": "vertex_ai",
    "vertex_ai-mistral_models": "vertex_ai", "vertex_ai-llama_models": "vertex_ai",
    "vertex_ai-ai21_models": "vertex_ai", "vertex_ai-deepseek_models": "vertex_ai",
    "vertex_ai-qwen_models": "vertex_ai", "vertex_ai-zai_models": "vertex_ai",
    "vertex_ai-openai_models": "vertex_ai", "vertex_ai-minimax_models": "vertex_ai",
    "vertex_ai-moonshot_models": "vertex_ai", "vertex_ai-text-models": "vertex_ai",
    "vertex_ai-embedding-models": "vertex_ai", "vertex_ai-video-models": "vertex_ai",
    "vertex_ai-chat-models": "vertex_ai", "vertex_ai-code-chat-models": "vertex_ai",
    "vertex_ai-code-text-models": "vertex_ai", "vertex_ai-image-models": "vertex_ai",
    "azure_text": "azure",
}
# "vertex_ai/claude-..." style prefixes may carry a sub-route LiteLLM adds; ids of those
_ROUTES = ("vertex_ai-anthropic_models", "vertex_ai-language-models")


def canonical(provider: str) -> str | None:
    """The catalog's id for a provider spelling, or None when it is not one we price."""
    return _ALIASES.get(provider.strip().lower())


def split_model(provider: str, model: str) -> tuple[str | None, str]:
    """(canonical provider, model id at that provider) from an event's two fields.

    A leading ``provider/`` segment of ``model`` that names a known provider wins over the
    ``provider`` field (it is the more specific of the two: ``azure/gpt-4o`` sent with
    provider ``openai`` is an Azure call). The rest of the id is kept whole:
    ``deepseek-ai/DeepSeek-R1`` at Together is that model's id there.
    """
    name = model.strip()
    head, sep, rest = name.partition("/")
    if sep and rest:
        prefixed = canonical(head)
        if prefixed is not None:
            return prefixed, rest
    return canonical(provider), name


# the providers' names for the tier a call ran in -> ours; "auto" says nothing billable
_TIERS = {"default": "standard", "standard": "standard", "standard_only": "standard",
          "scale": "standard",
          "flex": "flex", "priority": "priority", "fast": "priority", "batch": "batch"}


def service_tier(value: Any) -> str | None:
    """Our service tier for a provider's ``service_tier`` value, or None when unknown."""
    return _TIERS.get(value.strip().lower()) if isinstance(value, str) else None
