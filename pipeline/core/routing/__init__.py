"""A learned, budget-aware model router: features, scoring, thresholds and evaluation math.

Pure: no I/O, no clock, no third-party imports. Training (scikit-learn) and file handling live
in the shell (``pipeline.cli.router``); this package only turns prompt text into sparse features
(``features``), scores them with a stored linear model (``artifact``, which also holds the
versioned JSON form and ``route``) and does the evaluation arithmetic (``evaluation``), so the
decision runs in any process (the SDK, the decision API) without scikit-learn and gives the same
answer. Callers import the names re-exported here, not the modules.

Conventions:

* ``p_weak_ok`` is the router's estimate that the weak (cheap) model answers well enough;
  higher means "the weak model will do".
* A prompt goes to the strong model when ``p_weak_ok < threshold``.
* ``strong share`` is the fraction of requests sent to the strong model (the cost axis).
* PGR (performance gap recovered) at a strong share is
  ``(accuracy - weak accuracy) / (strong accuracy - weak accuracy)``; it is not clipped, so it
  can exceed 1 where the strong model is wrong on prompts the weak model gets right.
"""

from pipeline.core.routing.artifact import (
    ARTIFACT_KIND,
    SCHEMA_VERSION,
    RouteDecision,
    RouterArtifact,
    Tier,
    artifact_to_dict,
    build_artifact,
    load_artifact,
    p_weak_ok,
    route,
    score_features,
)
from pipeline.core.routing.evaluation import (
    Curve,
    GroupMetrics,
    RouterMetrics,
    apgr,
    by_group,
    compare,
    cpt,
    curve,
    mean_group_apgr,
    metrics,
    oracle_scores,
    pgr_curve,
    random_scores,
    routed_accuracy,
    strong_share,
    threshold_for_quality,
    threshold_for_strong_share,
)
from pipeline.core.routing.features import (
    STRUCTURAL,
    FeatureSpec,
    featurize,
    sigmoid,
    structural_features,
)

__all__ = [
    "ARTIFACT_KIND", "SCHEMA_VERSION", "STRUCTURAL", "Curve", "FeatureSpec", "GroupMetrics",
    "RouteDecision",
    "RouterArtifact", "RouterMetrics", "Tier", "apgr", "artifact_to_dict", "build_artifact",
    "by_group", "compare", "cpt", "curve", "featurize", "load_artifact", "mean_group_apgr",
    "metrics", "oracle_scores",
    "p_weak_ok", "pgr_curve", "random_scores", "route", "routed_accuracy", "score_features",
    "sigmoid", "strong_share", "structural_features", "threshold_for_quality",
    "threshold_for_strong_share",
]
