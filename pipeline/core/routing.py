"""A learned, budget-aware model router: features, scoring, thresholds and evaluation math.

Pure: no I/O, no clock, no third-party imports. Training (scikit-learn) and file handling live
in the shell (``pipeline.cli.router``); this module only turns prompt text into sparse features,
scores them with a stored linear model and does the evaluation arithmetic, so the decision runs
in any process (the SDK, the decision API) without scikit-learn and gives the same answer.

Conventions:

* ``p_weak_ok`` is the router's estimate that the weak (cheap) model answers well enough;
  higher means "the weak model will do".
* A prompt goes to the strong model when ``p_weak_ok < threshold``.
* ``strong share`` is the fraction of requests sent to the strong model (the cost axis).
* PGR (performance gap recovered) at a strong share is
  ``(accuracy - weak accuracy) / (strong accuracy - weak accuracy)``; it is not clipped, so it
  can exceed 1 where the strong model is wrong on prompts the weak model gets right.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from pipeline.errors import RouterArtifactError

SCHEMA_VERSION = 1
ARTIFACT_KIND = "tokenmeter.router"

Tier = Literal["weak", "strong"]

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


# ---------------------------------------------------------------------------------------------
# The artifact


@dataclass(frozen=True)
class RouterArtifact:
    """A validated router: feature spec, linear model, threshold and where they came from."""

    spec: FeatureSpec
    weights: Mapping[int, float]
    bias: float
    threshold: float
    threshold_method: Mapping[str, Any]
    training: Mapping[str, Any]
    router_version: str
    extra: Mapping[str, Any] = field(default_factory=dict)


def _content(spec: FeatureSpec, weights: Mapping[int, float], bias: float, threshold: float,
             threshold_method: Mapping[str, Any], training: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": ARTIFACT_KIND,
        "schema_version": SCHEMA_VERSION,
        "features": spec.to_dict(),
        "model": {"type": "logistic", "target": "p_weak_ok", "bias": bias,
                  "weights": [[i, weights[i]] for i in sorted(weights)]},
        "threshold": threshold,
        "threshold_method": dict(threshold_method),
        "training": dict(training),
    }


def _version_of(content: Mapping[str, Any]) -> str:
    canon = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "r1-" + hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def build_artifact(spec: FeatureSpec, weights: Mapping[int, float], bias: float,
                   threshold: float, threshold_method: Mapping[str, Any],
                   training: Mapping[str, Any], *, digits: int = 6) -> RouterArtifact:
    """A new artifact; weights are rounded to ``digits`` significant digits and zeros dropped."""
    rounded = {int(i): float(f"{w:.{digits}g}") for i, w in weights.items()
               if float(f"{w:.{digits}g}") != 0.0}
    bias = float(f"{bias:.{digits}g}")
    threshold = float(f"{threshold:.{digits}g}")
    content = _content(spec, rounded, bias, threshold, threshold_method, training)
    return RouterArtifact(spec, rounded, bias, threshold, dict(threshold_method),
                          dict(training), _version_of(content))


def artifact_to_dict(artifact: RouterArtifact) -> dict[str, Any]:
    """The artifact as a JSON-able dict (what ``router train`` writes)."""
    content = _content(artifact.spec, artifact.weights, artifact.bias, artifact.threshold,
                       artifact.threshold_method, artifact.training)
    content["router_version"] = artifact.router_version
    return content


def _refuse(what: str) -> RouterArtifactError:
    return RouterArtifactError(f"router artifact refused: {what}; retrain it with "
                               "`tokenmeter router train FILES --out router.json`")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refuse(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1 << 20:
        raise _refuse(f"{what} must be an integer in 0..{1 << 20}, got {value!r}")
    return value


def _pair(value: Any, what: str) -> tuple[int, int]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 16
                       for v in value)):
        raise _refuse(f"{what} must be [low, high] integers in 0..16, got {value!r}")
    return int(value[0]), int(value[1])


def load_artifact(data: Any) -> RouterArtifact:
    """Validate a decoded JSON artifact; RouterArtifactError says what is wrong with it."""
    if not isinstance(data, dict) or data.get("kind") != ARTIFACT_KIND:
        raise _refuse(f"not a tokenmeter router artifact (kind must be {ARTIFACT_KIND!r})")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _refuse(f"schema_version {version!r} is not supported (this tokenmeter reads "
                      f"version {SCHEMA_VERSION})")
    feats = data.get("features")
    if not isinstance(feats, dict) or feats.get("hash") != "crc32":
        raise _refuse("features.hash must be 'crc32'")
    if feats.get("structural") != list(STRUCTURAL):
        raise _refuse("features.structural differs from this tokenmeter's structural features")
    bits = feats.get("hash_bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 8 <= bits <= 24:
        raise _refuse(f"features.hash_bits must be an integer in 8..24, got {bits!r}")
    spec = FeatureSpec(hash_bits=bits,
                       word_ngrams=_pair(feats.get("word_ngrams"), "features.word_ngrams"),
                       char_ngrams=_pair(feats.get("char_ngrams"), "features.char_ngrams"),
                       word_weight=_number(feats.get("word_weight"), "features.word_weight"),
                       char_weight=_number(feats.get("char_weight"), "features.char_weight"),
                       max_tokens=_count(feats.get("max_tokens"), "features.max_tokens"))
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "logistic":
        raise _refuse("model.type must be 'logistic'")
    bias = _number(model.get("bias"), "model.bias")
    raw = model.get("weights")
    if not isinstance(raw, list):
        raise _refuse("model.weights must be a list of [index, weight] pairs")
    weights: dict[int, float] = {}
    for item in raw:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int)
                or isinstance(item[0], bool) or not 0 <= item[0] < spec.n_features):
            raise _refuse(f"model.weights entry {item!r} is not [index < {spec.n_features}, "
                          "weight]")
        if item[0] in weights:
            raise _refuse(f"model.weights lists index {item[0]} twice")
        weights[item[0]] = _number(item[1], f"model.weights[{item[0]}]")
    threshold = _number(data.get("threshold"), "threshold")
    if not 0.0 <= threshold <= 1.0:
        raise _refuse(f"threshold must be in [0, 1], got {threshold}")
    method = data.get("threshold_method")
    training = data.get("training")
    if not isinstance(method, dict) or not isinstance(training, dict):
        raise _refuse("threshold_method and training must be objects")
    try:
        expected = _version_of(_content(spec, weights, bias, threshold, method, training))
    except (TypeError, ValueError) as exc:
        raise _refuse(f"metadata is not plain JSON ({exc})") from None
    if data.get("router_version") != expected:
        raise _refuse(f"router_version {data.get('router_version')!r} does not match its "
                      f"content ({expected}): the file was edited or damaged")
    return RouterArtifact(spec, weights, bias, threshold, method, training, expected)


# ---------------------------------------------------------------------------------------------
# Scoring and routing


def score_features(artifact: RouterArtifact, feats: Mapping[int, float]) -> float:
    """P(weak model is enough) from already computed features."""
    w = artifact.weights
    z = artifact.bias
    for i, v in feats.items():
        wi = w.get(i)
        if wi is not None:
            z += wi * v
    return sigmoid(z)


def p_weak_ok(artifact: RouterArtifact, text: str) -> float:
    """The router's estimate that the weak model answers ``text`` well enough (0..1)."""
    return score_features(artifact, featurize(artifact.spec, text))


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """One routing decision: the tier, the score, the threshold applied and the router."""

    tier: Tier
    p_weak_ok: float
    threshold: float
    router_version: str


def route(artifact: RouterArtifact, text: str, *, threshold_shift: float = 0.0) -> RouteDecision:
    """Route ``text``: strong when p_weak_ok < threshold - threshold_shift, else weak.

    A positive ``threshold_shift`` lowers the threshold, so fewer prompts go to the strong
    model (a caller's own lever; the decision API lowers the threshold itself as budgets run
    low, core/route_policy.py). A negative shift sends more to the strong model. The applied
    threshold is clamped to [0, 1]: a shift of +1 always picks weak, -1 always strong.
    """
    if not math.isfinite(threshold_shift):
        raise ValueError(f"threshold_shift must be finite, got {threshold_shift}")
    threshold = min(1.0, max(0.0, artifact.threshold - threshold_shift))
    p = p_weak_ok(artifact, text)
    tier: Tier = "strong" if p < threshold else "weak"
    return RouteDecision(tier, p, threshold, artifact.router_version)


# ---------------------------------------------------------------------------------------------
# Evaluation math


@dataclass(frozen=True, slots=True)
class Curve:
    """Accuracy as a function of the share of strong calls, piecewise linear.

    ``shares[k]``/``accuracy[k]`` are the curve's vertices; between them the curve is the
    expected accuracy when ties in the score are broken at random.
    """

    shares: tuple[float, ...]
    accuracy: tuple[float, ...]
    thresholds: tuple[float, ...]  # threshold that yields each vertex (p < t goes strong)

    def at(self, share: float) -> float:
        """Accuracy at a strong share in [0, 1] (linear between vertices)."""
        return _interp(self.shares, self.accuracy, share)


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    for k in range(1, len(xs)):
        if x <= xs[k]:
            x0, x1 = xs[k - 1], xs[k]
            if x1 == x0:
                return ys[k]
            return ys[k - 1] + (ys[k] - ys[k - 1]) * (x - x0) / (x1 - x0)
    return ys[-1]


def _check(scores: Sequence[float], weak_ok: Sequence[bool], strong_ok: Sequence[bool]) -> int:
    n = len(scores)
    if n == 0 or len(weak_ok) != n or len(strong_ok) != n:
        raise ValueError("scores, weak_ok and strong_ok must be non-empty and of equal length")
    return n


def curve(scores: Sequence[float], weak_ok: Sequence[bool],
          strong_ok: Sequence[bool]) -> Curve:
    """The cost-quality curve of a router that sends the lowest scores to the strong model."""
    n = _check(scores, weak_ok, strong_ok)
    order = sorted(range(n), key=lambda i: scores[i])
    correct = sum(bool(w) for w in weak_ok)
    shares = [0.0]
    acc = [correct / n]
    thresholds = [min(scores)]
    k = 0
    while k < n:
        s = scores[order[k]]
        j = k
        while j < n and scores[order[j]] == s:
            i = order[j]
            correct += int(bool(strong_ok[i])) - int(bool(weak_ok[i]))
            j += 1
        k = j
        shares.append(k / n)
        acc.append(correct / n)
        # smallest threshold that sends exactly this group and all below it to strong
        thresholds.append(scores[order[k]] if k < n else math.nextafter(s, math.inf))
    return Curve(tuple(shares), tuple(acc), tuple(thresholds))


def oracle_scores(weak_ok: Sequence[bool], strong_ok: Sequence[bool]) -> list[float]:
    """Scores of the oracle: strong first where only it is right, last where only weak is."""
    return [(int(bool(w)) - int(bool(s)) + 1) / 2.0 for w, s in zip(weak_ok, strong_ok,
                                                                     strict=True)]


def random_scores(n: int) -> list[float]:
    """Scores of the random router: all tied, so the curve is its expectation (a line)."""
    return [0.5] * n


def pgr_curve(c: Curve, weak_acc: float, strong_acc: float) -> tuple[float, ...]:
    """PGR at each vertex of the curve (unclipped)."""
    gap = strong_acc - weak_acc
    if gap <= 0:
        raise ValueError(f"strong accuracy {strong_acc:.4f} is not above weak accuracy "
                         f"{weak_acc:.4f}: the gap to recover is empty")
    return tuple((a - weak_acc) / gap for a in c.accuracy)


def apgr(c: Curve, weak_acc: float, strong_acc: float) -> float:
    """Average performance gap recovered: area under PGR over strong share 0..1."""
    pgr = pgr_curve(c, weak_acc, strong_acc)
    area = 0.0
    for k in range(1, len(c.shares)):
        area += (c.shares[k] - c.shares[k - 1]) * (pgr[k] + pgr[k - 1]) / 2.0
    return area


def cpt(c: Curve, weak_acc: float, strong_acc: float, target: float) -> float:
    """Smallest strong share whose PGR reaches ``target`` (e.g. 0.5 for CPT(50%))."""
    pgr = pgr_curve(c, weak_acc, strong_acc)
    if pgr[0] >= target:
        return 0.0
    for k in range(1, len(c.shares)):
        if pgr[k] >= target:
            x0, x1 = c.shares[k - 1], c.shares[k]
            y0, y1 = pgr[k - 1], pgr[k]
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return 1.0  # pragma: no cover - pgr[-1] == 1 always reaches a target <= 1


@dataclass(frozen=True, slots=True)
class RouterMetrics:
    """APGR and CPTs of one router on one evaluation set."""

    name: str
    apgr: float
    cpt50: float
    cpt80: float
    curve: Curve

    def summary(self, points: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
                                                 0.9, 1.0)) -> dict[str, Any]:
        """A JSON-able summary: APGR, CPTs and accuracy at fixed strong shares."""
        return {"apgr": self.apgr, "cpt50": self.cpt50, "cpt80": self.cpt80,
                "accuracy_at_strong_share": {f"{p:.2f}": self.curve.at(p) for p in points}}


def metrics(name: str, scores: Sequence[float], weak_ok: Sequence[bool],
            strong_ok: Sequence[bool]) -> RouterMetrics:
    """APGR, CPT(50%), CPT(80%) and the curve of one router's scores."""
    n = _check(scores, weak_ok, strong_ok)
    weak_acc = sum(map(bool, weak_ok)) / n
    strong_acc = sum(map(bool, strong_ok)) / n
    c = curve(scores, weak_ok, strong_ok)
    return RouterMetrics(name, apgr(c, weak_acc, strong_acc),
                         cpt(c, weak_acc, strong_acc, 0.5), cpt(c, weak_acc, strong_acc, 0.8), c)


def compare(scores: Sequence[float], weak_ok: Sequence[bool],
            strong_ok: Sequence[bool]) -> dict[str, RouterMetrics]:
    """Router, random and oracle metrics on the same evaluation set, in one call."""
    n = _check(scores, weak_ok, strong_ok)
    return {"router": metrics("router", scores, weak_ok, strong_ok),
            "random": metrics("random", random_scores(n), weak_ok, strong_ok),
            "oracle": metrics("oracle", oracle_scores(weak_ok, strong_ok), weak_ok, strong_ok)}


# ---------------------------------------------------------------------------------------------
# Thresholds


def threshold_for_strong_share(scores: Sequence[float], share: float) -> float:
    """A threshold sending (at most) ``share`` of these prompts to the strong model."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"strong share must be in [0, 1], got {share}")
    ordered = sorted(scores)
    n = len(ordered)
    if n == 0:
        raise ValueError("no scores to choose a threshold from")
    k = math.floor(share * n + 1e-9)
    if k <= 0:
        return 0.0 if ordered[0] > 0.0 else ordered[0]
    if k >= n:
        return 1.0 if ordered[-1] < 1.0 else math.nextafter(1.0, math.inf)
    # strong is p < t: t = the k-th smallest score sends the k below it (ties stay weak)
    return ordered[k]


def threshold_for_quality(scores: Sequence[float], weak_ok: Sequence[bool],
                          strong_ok: Sequence[bool], quality: float) -> tuple[float, float]:
    """(threshold, strong share) of the cheapest point keeping ``quality`` x strong accuracy."""
    n = _check(scores, weak_ok, strong_ok)
    if not 0.0 < quality <= 1.5:
        raise ValueError(f"target quality must be in (0, 1.5], got {quality}")
    target = quality * sum(map(bool, strong_ok)) / n
    c = curve(scores, weak_ok, strong_ok)
    for share, acc, t in zip(c.shares, c.accuracy, c.thresholds, strict=True):
        if acc >= target - 1e-12:
            return (0.0 if share == 0.0 else t), share
    return c.thresholds[-1], 1.0  # pragma: no cover - acc[-1] is the strong accuracy


def strong_share(scores: Sequence[float], threshold: float) -> float:
    """Share of prompts the threshold sends to the strong model."""
    if not scores:
        raise ValueError("no scores")
    return sum(1 for s in scores if s < threshold) / len(scores)


def routed_accuracy(scores: Sequence[float], weak_ok: Sequence[bool],
                    strong_ok: Sequence[bool], threshold: float) -> float:
    """Accuracy when prompts with p_weak_ok < threshold go to the strong model."""
    n = _check(scores, weak_ok, strong_ok)
    return sum(bool(s_ok) if p < threshold else bool(w_ok)
               for p, w_ok, s_ok in zip(scores, weak_ok, strong_ok, strict=True)) / n
