"""Prompt text to sparse features: hashed word (and character) n-grams plus structural counts.

The same text gives the same features in every process and platform (crc32, not Python's salted
``hash``), so the trainer and every process that routes agree. Sized for the 1 ms decision.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# Dense features appended after the hashed space, in this order. The artifact stores the list
# and loading refuses a different one: a weight trained for one feature means nothing for another.
STRUCTURAL = (
    "bias_one",
    "log_chars",
    "log_words",
    "log_lines",
    "digit_share",
    "log_numbers",
    "log_math_symbols",
    "latex",
    "code",
    "option_lines",
    "question_words",
    "compute_words",
    "negation",
    "mean_word_len",
    "upper_share",
    "log_sentences",
)

_WORD = re.compile(r"[a-z]+|\d+(?:[.,]\d+)*|[^\sa-z\d]")
_OPTION = re.compile(r"^\s*(?:\(?[A-Ha-h][.):]|[1-8][.)])\s+\S", re.MULTILINE)
_SENTENCE = re.compile(r"[.!?](?:\s|$)")
_MATH = frozenset("=+*/^<>%∑∫√≤≥≠±×÷πθλμσΔ")
_CODE = ("```", "def ", "return ", "print(", ";\n", "{", "}", "==", "!=", "->", "int ", "void ")
_QUESTION = frozenset({"what", "which", "why", "how", "who", "whom", "when", "where", "whose"})
_COMPUTE = frozenset({"calculate", "compute", "find", "solve", "evaluate", "determine",
                      "simplify", "prove", "derive", "estimate", "value", "many", "much",
                      "total", "probability", "equation", "integral", "sum"})
_NEGATION = frozenset({"not", "except", "least", "false", "incorrect", "never", "no"})


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """How text becomes features: hash space size and n-gram ranges (stored in the artifact)."""

    # defaults chosen by grouped-by-subject cross-validation on 22 MMLU subjects (the 7
    # held-out ones untouched): character n-grams (3-5) scored no better than word uni- and
    # bigrams and cost more time than the 1 ms budget allows, so they are off by default;
    # 2^14 buckets keep the artifact under 500 KB
    hash_bits: int = 14
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (0, 0)
    word_weight: float = 0.5
    char_weight: float = 0.5
    # n-grams come from at most this many tokens (the first and last halves; 0: all), and a
    # prompt longer than 6x as many characters is read through a window (its first 2x and
    # last 4x characters): bounds the decision time; sizes still describe the whole text
    max_tokens: int = 256

    @property
    def dims(self) -> int:
        """Size of the hashed space (structural features follow it)."""
        return 1 << self.hash_bits

    @property
    def n_features(self) -> int:
        """Total feature count: hashed space plus structural features."""
        return self.dims + len(STRUCTURAL)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the artifact."""
        return {"hash": "crc32", "hash_bits": self.hash_bits,
                "word_ngrams": list(self.word_ngrams), "char_ngrams": list(self.char_ngrams),
                "word_weight": self.word_weight, "char_weight": self.char_weight,
                "max_tokens": self.max_tokens, "structural": list(STRUCTURAL)}


def _crc(key: str) -> int:
    # crc32, not hash(): Python salts str hashes per process (PYTHONHASHSEED), so features
    # would differ between the trainer and every process that routes
    return zlib.crc32(key.encode("utf-8"))


@lru_cache(maxsize=1 << 17)
def _word_hash(token: str) -> int:
    return _crc("w:" + token)


_K1, _K2, _M = 0x9E3779B1, 0x85EBCA6B, 0xFFFFFFFF


def _pair_hashes(left: list[int], right: list[int]) -> list[int]:
    """Hashes of the pairs (left[i], right[i]): integer mixing of two word hashes."""
    # instead of joining and hashing a new string per bigram (that alone cost more than the
    # 1 ms budget on long prompts); inline, since a call per pair costs as much again
    return [(x := (((a * _K1) ^ b) & _M) * _K2 & _M) ^ (x >> 16)
            for a, b in zip(left, right, strict=False)]


@lru_cache(maxsize=65536)
def _char_grams(word: str, lo: int, hi: int) -> tuple[int, ...]:
    # per word type, cached: words repeat across prompts, and hashing every character
    # n-gram of a long prompt afresh would cost more than the 1 ms decision budget
    padded = f" {word} "
    return tuple(_crc("c:" + padded[i:i + n]) for n in range(lo, hi + 1)
                 for i in range(len(padded) - n + 1))


_LOG1P = tuple(math.log1p(k) for k in range(64))


def _add_hashed(hashes: list[int], dims: int, weight: float, out: dict[int, float]) -> None:
    # bucket = low bits; counted by Counter (C speed), then sublinear term frequency and unit
    # length, so long prompts do not dominate by sheer size
    if not hashes:
        return
    counts = Counter(map((dims - 1).__and__, hashes))
    table = _LOG1P
    vals = {i: (table[k] if k < 64 else math.log1p(k)) for i, k in counts.items()}
    norm = math.sqrt(math.fsum(v * v for v in vals.values()))
    scale = weight / norm
    for i, v in vals.items():
        out[i] = out.get(i, 0.0) + v * scale


def _tokens(raw: list[str]) -> list[str]:
    # numbers become one shape token: the digits of a value do not generalise, their presence does
    return ["<num>" if t[0].isdigit() else t for t in raw]


_UPPER = re.compile(r"[A-Z]")
_MATH_RE = re.compile("[" + re.escape("".join(sorted(_MATH))) + "]")


def structural_features(text: str, raw: list[str] | None = None,
                        full: str | None = None) -> list[float]:
    """The dense structural features of ``text`` in ``STRUCTURAL`` order.

    ``raw`` is _WORD's tokens of the lowercased text when known; ``full`` is the whole prompt
    when ``text`` is a window of it: sizes then come from (or are scaled up to) the whole.
    """
    # regex counts and str methods rather than per-character Python loops: this runs inside
    # the 1 ms decision
    if raw is None:
        raw = _WORD.findall(text.lower())
    words = [t for t in raw if t[0].isalpha()]
    whole = full if full is not None else text
    stretch = len(whole) / len(text) if text else 1.0
    n_chars = len(text)
    n_words = len(words)
    wordset = set(words)
    digits = sum(map(text.count, "0123456789"))
    letters = sum(map(len, words))  # ASCII letters: the words are [a-z]+ runs
    upper = len(_UPPER.findall(text))
    numbers = sum(1 for t in raw if t[0].isdigit())
    math_symbols = len(_MATH_RE.findall(text))
    return [
        1.0,
        math.log1p(len(whole)) / 8.0,
        math.log1p(n_words * stretch) / 6.0,
        math.log1p(whole.count("\n") + 1) / 3.0,
        digits / n_chars if n_chars else 0.0,
        math.log1p(numbers) / 3.0,
        math.log1p(math_symbols) / 3.0,
        1.0 if ("\\" in text or "$" in text and "^" in text) else 0.0,
        min(sum(map(text.count, _CODE)), 10) / 10.0,
        min(len(_OPTION.findall(text)), 8) / 4.0,
        min(len(wordset & _QUESTION), 4) / 2.0,
        min(len(wordset & _COMPUTE), 4) / 2.0,
        min(len(wordset & _NEGATION), 4) / 2.0,
        (letters / n_words / 10.0) if n_words else 0.0,
        upper / letters if letters else 0.0,
        math.log1p(len(_SENTENCE.findall(text)) * stretch) / 3.0,
    ]


def featurize(spec: FeatureSpec, text: str) -> dict[int, float]:
    """Sparse features of ``text``: {index: value}; the same in every process and platform."""
    dims = spec.dims
    cap = spec.max_tokens
    full = None
    if cap and len(text) > 6 * cap:
        # a window bounds the regex work on very long prompts: the topic is stated first,
        # the question and options come last
        full, text = text, text[:2 * cap] + "\n" + text[-4 * cap:]
    raw = _WORD.findall(text.lower())
    if cap and len(raw) > cap:
        # the topic is stated first and the question and options come last
        toks = _tokens(raw[:cap // 2]) + _tokens(raw[len(raw) - (cap - cap // 2):])
    else:
        toks = _tokens(raw)
    out: dict[int, float] = {}
    lo, hi = spec.word_ngrams
    if hi >= lo >= 1:
        hashes = [_word_hash(t) for t in toks]
        grams = list(hashes) if lo == 1 else []
        for n in range(max(lo, 2), hi + 1):
            level = hashes
            for step in range(1, n):
                # level[i] is the hash of the n-gram starting at i (built left to right)
                level = _pair_hashes(level, hashes[step:])
            grams.extend(level)
        _add_hashed(grams, dims, spec.word_weight, out)
    clo, chi = spec.char_ngrams
    if chi >= clo >= 1:
        chars: list[int] = []
        for tok in toks:
            if tok.isalpha():
                chars.extend(_char_grams(tok, clo, chi))
        _add_hashed(chars, dims, spec.char_weight, out)
    for k, v in enumerate(structural_features(text, raw, full)):
        if v:
            out[dims + k] = v
    return out


def sigmoid(z: float) -> float:
    """The logistic function, stable for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
