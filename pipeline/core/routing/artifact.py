"""The router artifact (versioned JSON: features, logistic weights, threshold) and routing.

Loading validates everything and checks the content hash, so an edited or foreign file is refused
rather than silently scoring prompts with weights meant for other features.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.core.routing.features import STRUCTURAL, FeatureSpec, featurize, sigmoid
from pipeline.errors import RouterArtifactError

SCHEMA_VERSION = 1
ARTIFACT_KIND = "tokenmeter.router"

Tier = Literal["weak", "strong"]



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
