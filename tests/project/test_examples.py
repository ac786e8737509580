"""The example gateway applies each breach once and downgrades, throttles or blocks."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "breach_consumer", Path(__file__).resolve().parents[2] / "examples" / "breach_consumer.py")
assert spec and spec.loader
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)


def breach(bid: str, action: str, tenant: str = "acme") -> dict:
    return {"breach_id": bid, "tenant_id": tenant, "action": action, "kind": "threshold",
            "threshold_pct": "100", "budget_id": "b", "pool": "low"}


def test_router() -> None:
    r = module.Router()
    r.on_breach(breach("1", "downgrade"))
    assert r.model["acme"] == "gpt-4o-mini"
    r.on_breach(breach("1", "downgrade"))  # a replayed breach changes nothing
    assert r.model["acme"] == "gpt-4o-mini"
    r.on_breach(breach("2", "alert", "globex"))
    assert "globex" not in r.model and "globex" not in r.blocked
    r.on_breach(breach("3", "block"))
    assert "acme" in r.blocked
