"""SDK routing: a prompt routed in the caller's process, the verdict sent to the decision API
without the prompt, the answer settled into a route, and the route's attributes on the event."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.core import routing as r
from pipeline.core.validate import validate_event
from pipeline.errors import ConfigError, RouterArtifactError
from pipeline.sdk import AsyncUsageProducer, Route, Router, decide, reserve, route_prompt
from pipeline.sdk.routing import ATTRIBUTES, load_router
from tests.helpers import NOW, free_port

EASY = "What is the capital of France?"
HARD = ("Let f(x) = 7x^3 - 12x^2 + 3x - 1. Find every real x where f'(x) = 0, evaluate f at "
        "each, and determine which are maxima. Show each step of the calculation.")
SHIPPED = Path(__file__).resolve().parents[2] / "pipeline" / "data" / "router.json"


@pytest.fixture(scope="module")
def router() -> Router:
    return Router()


def test_the_default_router_is_the_shipped_artifact_and_an_openai_pair(router: Router) -> None:
    data = json.loads(SHIPPED.read_text("utf-8"))
    assert router.router_version == data["router_version"]
    assert (router.weak.provider, router.weak.model) == ("openai", "gpt-4o-mini")
    assert (router.strong.provider, router.strong.model) == ("openai", "gpt-4o")


def test_a_prompt_routes_locally_to_a_tier_and_its_model(router: Router) -> None:
    easy, hard = router.route(EASY), router.route(HARD)
    assert (easy.tier, easy.model, hard.tier, hard.model) == (
        "weak", "gpt-4o-mini", "strong", "gpt-4o")
    for route in (easy, hard):
        d = r.route(router.artifact, EASY if route is easy else HARD)
        assert (route.p_weak_ok, route.threshold) == (d.p_weak_ok, d.threshold)
        assert route.base_threshold == router.artifact.threshold
        assert (route.by, route.decision, route.allowed) == ("local", None, True)
    assert route_prompt(HARD) == hard  # the module-level helper, same default router


def test_a_threshold_shift_moves_the_line_toward_weak(router: Router) -> None:
    hard = router.route(HARD)
    shifted = router.route(HARD, threshold_shift=router.artifact.threshold - hard.p_weak_ok
                           + 1e-6)
    assert shifted.tier == "weak" and shifted.threshold < hard.p_weak_ok


def test_the_route_attributes_and_verdict_carry_no_prompt(router: Router) -> None:
    route = router.route(HARD)
    attrs = route.attributes()
    assert tuple(attrs) == ATTRIBUTES
    assert attrs["router_version"] == router.router_version and attrs["route_tier"] == "strong"
    assert float(attrs["route_threshold"]) == pytest.approx(route.threshold, abs=1e-6)
    assert float(attrs["route_p_weak_ok"]) == pytest.approx(route.p_weak_ok, abs=1e-6)
    params = route.decision_params()
    assert set(params) == {"p_weak_ok", "route_threshold", "router_version", "weak_model",
                           "strong_model"}
    assert float(params["p_weak_ok"]) == route.p_weak_ok  # exact: repr round-trips
    assert not any(word in " ".join(params.values()) for word in ("f(x)", "maxima"))


def test_an_artifact_path_a_damaged_file_and_a_bad_pair(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    path.write_text(SHIPPED.read_text("utf-8"), "utf-8")
    assert Router(path).router_version == Router(load_router()).router_version
    data = json.loads(SHIPPED.read_text("utf-8"))
    data["threshold"] = 0.1  # edited: the version no longer matches the content
    path.write_text(json.dumps(data), "utf-8")
    with pytest.raises(RouterArtifactError):
        Router(path)
    path.write_text("{not json", "utf-8")
    with pytest.raises(RouterArtifactError):
        Router(str(path))
    with pytest.raises(ConfigError):
        Router(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="not in the price catalog"):
        Router(weak_model="no-such-model")
    with pytest.raises(ConfigError, match="must differ"):
        Router(weak_model="gpt-4o")
    pair = Router(weak_model="claude-3-5-haiku", weak_provider="anthropic",
                  strong_model="claude-sonnet-4", strong_provider="anthropic")
    assert pair.route(HARD).provider == "anthropic"


def answer(decision: str, model: str, suggested: str | None = None,
           route: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"decision": decision, "model": model, "suggested_model": suggested,
                           "reason": "r", "tenant_id": "acme"}
    if route is not None:
        out["route"] = route
    return out


def info(tier: str, final: str | None, by: str = "router",
         threshold: float = 0.4) -> dict[str, Any]:
    return {"tier": tier, "final_tier": final, "chosen_by": by, "threshold": threshold}


@pytest.mark.parametrize("ans, tier, model, by, threshold", [
    (answer("allow", "gpt-4o-mini", route=info("weak", "weak")), "weak", "gpt-4o-mini",
     "router", 0.4),
    (answer("allow", "gpt-4o", route=info("strong", "strong", "critical")), "strong", "gpt-4o",
     "critical", 0.4),
    # the budgets moved it: strong chosen, the weak model answered
    (answer("downgrade", "gpt-4o", "gpt-4o-mini", info("strong", "weak")), "weak",
     "gpt-4o-mini", "budget", 0.4),
    (answer("downgrade", "gpt-4o-mini", "gpt-4.1-nano", info("weak", "other")), "other",
     "gpt-4.1-nano", "budget", 0.4),
    (answer("deny", "gpt-4o", route=info("strong", None)), "strong", "gpt-4o", "budget", 0.4),
    # a worker that does not route: its answer's model decides, the local threshold stays
    (answer("allow", "gpt-4o"), "strong", "gpt-4o", "local", None),
    (answer("downgrade", "gpt-4o", "gpt-4o-mini"), "weak", "gpt-4o-mini", "budget", None),
])
def test_settling_a_decision_answer(router: Router, ans: dict[str, Any], tier: str,
                                    model: str, by: str, threshold: float | None) -> None:
    local = router.route(HARD)
    settled = local.settle(ans)
    assert (settled.tier, settled.model, settled.provider, settled.by) == (
        tier, model, "openai", by)
    assert settled.threshold == (local.threshold if threshold is None else threshold)
    assert settled.allowed is (ans["decision"] != "deny")
    assert settled.decision == ans["decision"] and settled.answer == ans
    assert (settled.p_weak_ok, settled.router_version) == (local.p_weak_ok,
                                                           local.router_version)


def test_record_with_a_route_stamps_its_attributes(router: Router) -> None:
    producer = AsyncUsageProducer("127.0.0.1:1", clock=lambda: NOW)
    route = router.route(EASY)
    event = producer.build("acme", route.provider, route.model, 10, 5,
                           {"route": route, "attributes": {"team": "a", "route_by": "manual"}})
    assert event["attributes"] == {**route.attributes(), "team": "a", "route_by": "manual"}
    assert "route" not in event
    validate_event(event, now=NOW)
    with pytest.raises(TypeError):
        producer.build("acme", "openai", "gpt-4o", 1, 1, {"route": "weak"})
    plain = producer.build("acme", "openai", "gpt-4o", 1, 1, {})
    assert "attributes" not in plain or not plain["attributes"]


class Worker(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, Any]] = []

    def _answer(self, body: dict[str, Any]) -> None:
        out = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(("GET", self.path, None))
        self._answer(answer("downgrade", "gpt-4o", "gpt-4o-mini", info("strong", "weak")))

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, body))
        self._answer(answer("allow", "gpt-4o-mini", route=info("weak", "weak")) | {
            "reservation_id": "r-1"})

    def do_DELETE(self) -> None:  # noqa: N802
        self.seen.append(("DELETE", self.path, None))
        self._answer({"released": "r-1"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def worker() -> Iterator[str]:
    Worker.seen = []
    server = HTTPServer(("127.0.0.1", free_port()), Worker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_router_decide_sends_the_verdict_never_the_prompt(router: Router, worker: str) -> None:
    route = router.decide(worker, HARD, tenant_id="acme", estimated_input_tokens=100,
                          estimated_output_tokens=50, user_id="u1")
    assert (route.tier, route.model, route.by, route.decision) == (
        "weak", "gpt-4o-mini", "budget", "downgrade")
    (method, path, _), = Worker.seen
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))
    local = router.route(HARD)
    assert method == "GET" and query["user_id"] == "u1"
    assert {k: query[k] for k in local.decision_params()} == local.decision_params()
    assert "f(x)" not in urllib.parse.unquote(path) and "maxima" not in path
    # decide() itself takes a route as well
    decide(worker, tenant_id="acme", model="gpt-4o", estimated_input_tokens=1,
           estimated_output_tokens=1, route=local)
    assert "p_weak_ok=" in Worker.seen[-1][1]


def test_a_routed_reservations_events_carry_its_settled_route(router: Router,
                                                              worker: str) -> None:
    local = router.route(EASY)
    producer = AsyncUsageProducer("127.0.0.1:1", clock=lambda: NOW)
    with reserve(worker, tenant_id="acme", model=local.model, estimated_input_tokens=10,
                 estimated_output_tokens=5, route=local) as held:
        assert isinstance(held.route, Route) and held.route.decision == "allow"
        from pipeline.sdk._decisions import _stamp_reservation

        fields: dict[str, Any] = {}
        assert _stamp_reservation(fields) is held
        event = producer.build("acme", held.route.provider, held.model, 10, 5, fields)
    assert event["reservation_id"] == "r-1"
    assert event["attributes"]["route_tier"] == "weak"
    assert event["attributes"]["route_by"] == "router"
    body = Worker.seen[0][2]
    assert body["p_weak_ok"] == repr(local.p_weak_ok) and "prompt" not in body
