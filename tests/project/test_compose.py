"""The production compose file: pinned images, the real CLI, variables the settings know."""

from pathlib import Path

import yaml

from pipeline.cli import build_parser
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_present() -> None:
    assert {"kafka", "clickhouse", "migrate", "worker", "forecast"} <= set(COMPOSE["services"])


def test_images_pinned() -> None:
    for name, svc in COMPOSE["services"].items():
        image = svc.get("image", "")
        tag = image.rsplit(":", 1)[-1] if ":" in image else ""
        assert tag and tag != "latest", f"{name} image {image!r} is not pinned"


def test_kafka_runs_kraft() -> None:
    env = COMPOSE["services"]["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "KAFKA_CONTROLLER_QUORUM_VOTERS" in env


def test_variables_match_settings() -> None:
    fields = {f"TOKENMETER_{name.upper()}" for name in Settings.model_fields}
    for name in ("migrate", "worker", "forecast"):
        env = COMPOSE["services"][name]["environment"]
        unknown = {k for k in env if k.startswith("TOKENMETER_")} - fields
        assert not unknown, f"{name}: {unknown} are not settings"
        assert "TOKENMETER_KAFKA_BOOTSTRAP" in env and "TOKENMETER_CLICKHOUSE_DSN" in env
        assert env["TOKENMETER_CLICKHOUSE_DSN"].startswith("http")


def test_commands_are_the_real_cli() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert COMPOSE["services"]["worker"]["command"] == ["worker"]
    assert COMPOSE["services"]["migrate"]["command"] == ["migrate"]
    assert {"worker", "migrate", "forecast"} <= set(commands)
    assert "tokenmeter forecast" in " ".join(COMPOSE["services"]["forecast"]["entrypoint"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["tokenmeter"]' in dockerfile


def test_healthchecks_and_volumes() -> None:
    for name in ("kafka", "clickhouse", "worker"):
        assert "healthcheck" in COMPOSE["services"][name]
    assert {"kafka-data", "clickhouse-data"} <= set(COMPOSE["volumes"])
