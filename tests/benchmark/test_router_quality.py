"""The leave-one-subject-out measurement scores each subject with a model that never saw it."""

from __future__ import annotations

import json

import pytest

from pipeline.benchmark.router_quality import leave_one_subject_out, main
from pipeline.cli.router_data import Row
from pipeline.core import routing as r

pytest.importorskip("sklearn")


def rows(flip_c: bool = False) -> list[Row]:
    out = []
    for subject, words in (("a", "alpha apple"), ("b", "beta banana"), ("c", "gamma cherry")):
        for i in range(12):
            weak = i % 3 != 0
            if subject == "c" and flip_c:
                weak = not weak
            out.append(Row(subject, f"{words} question {i} " + "long " * (i % 4), weak,
                           True))
    return out


def test_a_subjects_own_labels_never_reach_its_scores() -> None:
    spec = r.FeatureSpec(hash_bits=10)
    before = leave_one_subject_out(spec, rows(), 1.0, "weak_ok", True)
    after = leave_one_subject_out(spec, rows(flip_c=True), 1.0, "weak_ok", True)
    c = [i for i, row in enumerate(rows()) if row.source == "c"]
    others = [i for i in range(len(before)) if i not in c]
    assert [before[i] for i in c] == pytest.approx([after[i] for i in c])
    # the other subjects were trained with c's labels, so flipping them moves their scores
    assert [before[i] for i in others] != pytest.approx([after[i] for i in others])


def test_main_reports_pooled_and_within_subject_figures(tmp_path, capsys) -> None:
    path = tmp_path / "own.csv"
    lines = ["prompt,weak_ok,strong_ok,source"]
    lines += [f"{row.prompt},{row.weak_ok},False,{row.source}" if i % 6 == 0 else
              f"{row.prompt},{row.weak_ok},True,{row.source}" for i, row in enumerate(rows())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main([str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 36 and report["subjects"] == 3
    assert set(report["pooled"]) == {"router", "random", "oracle"}
    assert report["pooled"]["random"]["apgr"] == pytest.approx(0.5)
    assert set(report["per_subject_apgr"]) == {"a", "b", "c"}
    assert report["within_subject_mean_apgr"]["random"] == 0.5
