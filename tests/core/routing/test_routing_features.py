"""Router features: crc32 buckets the same in every process, structural counts, windows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from pipeline.core import routing as r

ROOT = Path(__file__).resolve().parents[3]
PROMPT = ("Find the degree for the given field extension Q(sqrt(2), sqrt(3)) over Q.\n"
          "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")


def test_features_use_crc32_buckets_not_pythons_salted_hash() -> None:
    spec = r.FeatureSpec(hash_bits=10, word_ngrams=(1, 1), char_ngrams=(0, 0))
    feats = r.featurize(spec, "hello")
    h = zlib.crc32(b"w:hello")
    assert h % 1024 in feats
    # one unigram: unit length times the word weight
    assert feats[h % 1024] == pytest.approx(spec.word_weight)


def test_features_are_identical_in_processes_with_different_hash_seeds() -> None:
    code = ("import json,sys; from pipeline.core import routing as r; "
            "s=r.FeatureSpec(char_ngrams=(3, 4)); "
            "print(json.dumps(sorted(r.featurize(s, sys.argv[1]).items())))")
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", code, PROMPT], capture_output=True,
                              text=True, env=env, cwd=ROOT, check=True)
        outs.append(json.loads(done.stdout))
    here = [list(p) for p in sorted(r.featurize(r.FeatureSpec(char_ngrams=(3, 4)),
                                                PROMPT).items())]
    assert outs[0] == outs[1] == here


def test_structural_features_see_options_math_and_questions() -> None:
    feats = dict(zip(r.STRUCTURAL, r.structural_features(PROMPT), strict=True))
    assert feats["option_lines"] == 1.0  # four option lines, capped scale /4
    assert feats["compute_words"] > 0  # "find"
    assert feats["digit_share"] > 0
    plain = dict(zip(r.STRUCTURAL, r.structural_features("tell me a story"), strict=True))
    assert plain["option_lines"] == plain["digit_share"] == plain["compute_words"] == 0.0


def test_char_ngrams_add_features_only_when_enabled() -> None:
    words = r.featurize(r.FeatureSpec(char_ngrams=(0, 0)), "photosynthesis")
    both = r.featurize(r.FeatureSpec(char_ngrams=(3, 5)), "photosynthesis")
    assert len(both) > len(words)


def test_empty_text_has_only_structural_features() -> None:
    spec = r.FeatureSpec()
    feats = r.featurize(spec, "")
    assert all(i >= spec.dims for i in feats)


def test_a_very_long_prompt_is_read_through_a_window_but_sized_whole() -> None:
    spec = r.FeatureSpec(max_tokens=16)  # window once the text exceeds 96 characters
    long = "word " * 400 + "\nWhich option is correct?\nA. x\nB. y"
    feats = r.featurize(spec, long)
    log_chars = spec.dims + r.STRUCTURAL.index("log_chars")
    assert feats[log_chars] == pytest.approx(math.log1p(len(long)) / 8.0)
    # the question at the end still counts: its option lines are inside the window
    options = spec.dims + r.STRUCTURAL.index("option_lines")
    assert feats[options] == pytest.approx(0.5)


def test_sigmoid_is_stable_at_extremes() -> None:
    assert r.sigmoid(1000.0) == 1.0
    assert r.sigmoid(-1000.0) == 0.0
    assert r.sigmoid(0.0) == 0.5
