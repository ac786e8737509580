"""The worker keeps the cyclic collector off its hot path (runtime/worker.tune_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.runtime.worker import tune_gc
from pipeline.settings import load_settings


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_startup_objects_frozen_and_young_generation_larger(tmp_path: Path) -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(load_settings(data_dir=tmp_path, gc_young_threshold=50_000))
    assert gc.get_threshold() == (50_000, 10, 10)
    assert gc.get_freeze_count() > 1000  # the modules and objects built so far
    # cycles made after start are still found
    a: list[object] = []
    a.append(a)
    del a
    assert gc.collect() >= 1


@pytest.mark.usefixtures("restore_gc")
def test_zero_keeps_pythons_defaults(tmp_path: Path) -> None:
    gc.set_threshold(700, 10, 10)
    frozen = gc.get_freeze_count()
    tune_gc(load_settings(data_dir=tmp_path, gc_young_threshold=0))
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == frozen
