"""`router train`'s folds: one file of a team's own traffic is dealt so every fold can learn."""

from __future__ import annotations

import pytest

from pipeline.cli.router_data import Row
from pipeline.cli.router_train import _stratified_folds, out_of_fold_scores
from pipeline.core import routing as r
from pipeline.errors import ConfigError

pytest.importorskip("sklearn")


def own_rows(fails: set[int], n: int = 20) -> list[Row]:
    return [Row("own", f"prove theorem {i} step by step" if i in fails else f"what is {i}?",
                i not in fails, True) for i in range(n)]


def test_each_label_is_dealt_round_robin() -> None:
    labels = [i not in (0, 5) for i in range(20)]  # rows 0 and 5 shared a fold under i % 5
    k, assign = _stratified_folds(labels, 5)
    assert k == 2  # no more folds than failures: each training part keeps one
    assert assign[0] != assign[5]
    assert sorted(assign) == [0] * 10 + [1] * 10


def test_two_failures_in_one_file_score_out_of_fold_whatever_their_rows() -> None:
    scores = out_of_fold_scores(r.FeatureSpec(hash_bits=10), own_rows({0, 5}), 1.0)
    assert len(scores) == 20 and all(0.0 < s < 1.0 for s in scores)


def test_a_single_failure_is_refused_with_what_to_add() -> None:
    with pytest.raises(ConfigError, match="fewer than 2 rows.*add rows where it differs"):
        out_of_fold_scores(r.FeatureSpec(hash_bits=10), own_rows({3}), 1.0)
