import pytest

from pipeline.core.tokens import TokenCounter, model_encoding


@pytest.mark.parametrize(
    "model, encoding",
    [
        ("gpt-4o", "o200k_base"), ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1", "o200k_base"), ("o1", "o200k_base"), ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"), ("gpt-5", "o200k_base"), ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"), ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("claude-3-haiku", None), ("gemini-1.5-pro", None), ("llama-3-70b", None),
    ],
)
def test_model_encoding(model: str, encoding: str | None) -> None:
    assert model_encoding(model) == encoding


def test_counts_offline_with_named_encoding(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # an empty tiktoken cache: o200k_base is unavailable offline, cl100k_base ships in a package
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    c = TokenCounter()
    n, source = c.count("gpt-4", "Hello, world!")
    assert (n, source) == (4, "tiktoken:cl100k_base")
    n, source = c.count("gpt-4o", "Hello, world!")
    assert source == "tiktoken:cl100k_base~approx" and n == 4
    n, source = c.count("claude-3-haiku", "Hello, world!")
    assert source == "tiktoken:cl100k_base~approx"
    assert c.count("gpt-4", "")[0] == 0


def test_special_tokens_are_counted_as_text() -> None:
    n, _ = TokenCounter().count("gpt-4", "<|endoftext|>")
    assert n > 1  # never interpreted as a control token


def test_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert TokenCounter().count("gpt-4o", "offline please")[0] > 0
