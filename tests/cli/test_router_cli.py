"""`tokenmeter router train|eval|route` end to end on RouteLLM's MMLU files (python -m)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import routing as r

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "routing" / "mmlu"
TRAIN = ["management", "medical_genetics", "abstract_algebra", "high_school_computer_science"]
HELD = "us_foreign_policy"
AT = "2026-06-17T10:20:30Z"  # fixed pricing instant: the catalog is dated

pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"routing data not found at {DATA} (CI keeps ../shared beside "
                              "the clone)")


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def files(*subjects: str) -> list[str]:
    return [str(DATA / f"mmlu_{s}.csv") for s in subjects]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("router") / "router.json"
    done = cli("router", "train", *files(*TRAIN, HELD), "--holdout", HELD, "--out", str(out))
    return out, json.loads(done.stdout)


def test_train_writes_a_valid_artifact_with_its_provenance(trained) -> None:
    out, report = trained
    data = json.loads(out.read_text())
    art = r.load_artifact(data)
    assert report["router_version"] == art.router_version == data["router_version"]
    t = art.training
    assert t["held_out_subjects"] == [HELD]
    assert HELD not in t["subjects"] and set(t["subjects"]) == set(TRAIN)
    assert [f["name"] for f in t["files"]] == [Path(f).name for f in files(*TRAIN, HELD)]
    assert t["held_out"]["rows"] == 100
    assert art.threshold_method["method"] == "target_quality"
    assert art.threshold_method["target"] == 0.95
    assert 0.0 <= art.threshold <= 1.0
    assert out.stat().st_size < 500_000


def test_route_prints_one_decision_per_row_consistent_with_eval(trained, tmp_path) -> None:
    out, _ = trained
    held = files(HELD)[0]
    lines = cli("router", "route", "--router", str(out), held).stdout.splitlines()
    rows = list(csv.DictReader(open(held, newline="", encoding="utf-8")))
    assert len(lines) == len(rows) == 100
    decisions = [json.loads(x) for x in lines]
    art = r.load_artifact(json.loads(out.read_text()))
    assert [d["index"] for d in decisions] == list(range(100))
    for d in decisions:
        assert d["router_version"] == art.router_version
        assert d["choice"] == ("strong" if d["p_weak_ok"] < art.threshold else "weak")
    # anyone can recompute the curve from route's output: it matches eval's figures
    scores = [d["p_weak_ok"] for d in decisions]
    weak = [row["mistralai/Mixtral-8x7B-Instruct-v0.1"] == "True" for row in rows]
    strong = [row["gpt-4-1106-preview"] == "True" for row in rows]
    mine = r.metrics("router", scores, weak, strong)
    ev = json.loads(cli("router", "eval", held, "--router", str(out), "--json", "--at", AT)
                    .stdout)
    assert ev["rows"] == 100
    assert ev["routers"]["router"]["apgr"] == pytest.approx(mine.apgr, abs=1e-3)
    assert ev["routers"]["random"]["apgr"] == pytest.approx(0.5)
    assert ev["routers"]["random"]["cpt50"] == pytest.approx(0.5)
    assert ev["routers"]["oracle"]["apgr"] > ev["routers"]["router"]["apgr"]
    cost = ev["cost"]["per_1000_requests"]
    assert float(cost["always_weak"]) < float(cost["router_at_95pct_strong_accuracy"]) \
        <= float(cost["always_strong"])
    assert "200 assumed" in ev["cost"]["output_tokens"]
    q = ev["cost"]["quality_point"]
    assert q["accuracy"] >= 0.95 * ev["strong_accuracy"] - 1e-9


def test_eval_counts_output_tokens_from_response_columns(trained, tmp_path) -> None:
    # GSM8K-style file: lower-case model columns without publisher, plus *_response texts
    out, _ = trained
    path = tmp_path / "gsm8k_tiny.csv"
    weak, strong = "mixtral-8x7b-instruct-v0.1", "gpt-4-1106-preview"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", weak, strong, f"{weak}_response", f"{strong}_response"])
        w.writerow(["Janet has 3 eggs and buys 2.\nHow many eggs?", "False", "True",
                    "4", "3 + 2 = 5\n#### 5"])
        w.writerow(["What is 2 + 2?", "True", "True", "4", "#### 4"])
    ev = json.loads(cli("router", "eval", str(path), "--router", str(out), "--json",
                        "--at", AT).stdout)
    assert ev["rows"] == 2
    assert ev["cost"]["output_tokens"].startswith("counted from response texts on 4 of 4")
    text = cli("router", "eval", str(path), "--router", str(out), "--at", AT).stdout
    assert "APGR" in text and "cost per 1,000 requests" in text


def test_route_reads_jsonl_and_the_shift_moves_toward_weak(trained, tmp_path) -> None:
    out, _ = trained
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "Prove that the integral of x^2 dx from 0 to 1 is "
                                          "1/3."}) + "\n" + json.dumps("hello") + "\n")
    all_weak = cli("router", "route", "--router", str(out), str(path),
                   "--threshold-shift", "1").stdout.splitlines()
    assert [json.loads(x)["choice"] for x in all_weak] == ["weak", "weak"]
    all_strong = cli("router", "route", "--router", str(out), str(path),
                     "--threshold-shift", "-1").stdout.splitlines()
    assert [json.loads(x)["choice"] for x in all_strong] == ["strong", "strong"]


def test_a_bad_artifact_is_refused_with_a_message(trained, tmp_path) -> None:
    out, _ = trained
    data = json.loads(out.read_text())
    data["schema_version"] = 99
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    done = cli("router", "route", "--router", str(bad), files(HELD)[0], check=False)
    assert done.returncode == 1
    assert "schema_version 99 is not supported" in done.stderr
    bad.write_text("not json")
    done = cli("router", "eval", files(HELD)[0], "--router", str(bad), check=False)
    assert done.returncode == 1 and "is not JSON" in done.stderr


def test_unknown_holdout_subject_is_refused(tmp_path) -> None:
    done = cli("router", "train", *files(HELD), "--holdout", "astrology", "--out",
               str(tmp_path / "x.json"), check=False)
    assert done.returncode == 1 and "astrology" in done.stderr


def test_eval_reports_apgr_within_each_subject(trained) -> None:
    out, _ = trained
    both = files(HELD, "management")
    ev = json.loads(cli("router", "eval", *both, "--router", str(out), "--json", "--at", AT)
                    .stdout)
    by = ev["by_subject"]
    assert set(by["subjects"]) == {HELD, "management"}
    art = r.load_artifact(json.loads(out.read_text()))
    values = []
    for path in both:
        rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
        mine = r.metrics("router", [r.p_weak_ok(art, row["prompt"]) for row in rows],
                         [row["mistralai/Mixtral-8x7B-Instruct-v0.1"] == "True" for row in rows],
                         [row["gpt-4-1106-preview"] == "True" for row in rows])
        subject = Path(path).stem.removeprefix("mmlu_")
        assert by["subjects"][subject]["rows"] == len(rows)
        assert by["subjects"][subject]["apgr"] == pytest.approx(mine.apgr, abs=1e-3)
        values.append(mine.apgr)
    assert by["mean_apgr"] == pytest.approx(sum(values) / 2, abs=1e-3)
    text = cli("router", "eval", *both, "--router", str(out), "--at", AT).stdout
    assert "within each subject (random 0.5)" in text and "management" in text
