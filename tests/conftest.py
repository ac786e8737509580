"""Shared fixtures: a real embedded broker and a real chDB store, started only on demand."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.embedded.broker import EmbeddedBroker
from pipeline.settings import Settings, load_settings
from pipeline.store.client import Store, open_store
from pipeline.store.migrations import migrate
from tests.helpers import free_port

# LiteLLM fetches its price map from GitHub at import unless told to use its bundled copy
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")







@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One embedded Tansu broker for the whole session (tests use their own topics)."""
    b = EmbeddedBroker("127.0.0.1", free_port(),
                       log_path=tmp_path_factory.mktemp("broker") / "broker.log")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def chdb_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The one chDB engine of this test process (chDB allows one per process)."""
    data = tmp_path_factory.mktemp("chdb")
    store = open_store(load_settings(data_dir=str(data)), database="default")
    yield store
    store.close()


@pytest.fixture()
def store(chdb_root: Store) -> Iterator[Store]:
    """A fresh, migrated database on the session's chDB engine."""
    db = f"t_{uuid.uuid4().hex[:12]}"
    s = chdb_root.with_database(db)
    migrate(s)
    yield s
    chdb_root.command(f"DROP DATABASE IF EXISTS {db}")


@pytest.fixture()
def topic_prefix() -> str:
    """A unique topic prefix so each test has its own topics."""
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture()
def settings(tmp_path: Path, broker: EmbeddedBroker, topic_prefix: str) -> Settings:
    """Settings pointing at the session broker, a private data dir and free web port."""
    return load_settings(
        kafka_bootstrap=broker.bootstrap,
        data_dir=str(tmp_path / "data"),
        web_port=free_port(),
        topic_prefix=topic_prefix,
        app_id=f"tm-{topic_prefix}",
        partitions=4,
    )
