"""Route prompts in the caller's process: the prompt text never leaves it.

    from pipeline.sdk import Router, UsageProducer

    router = Router()  # the shipped artifact; weak gpt-4o-mini, strong gpt-4o (OpenAI)
    route = router.route(prompt)  # local only, well under 1 ms
    # or with the tenant's budgets: only the verdict is sent, never the prompt
    route = router.decide("http://127.0.0.1:6066", prompt, tenant_id="acme",
                          estimated_input_tokens=900, estimated_output_tokens=300)
    if route.allowed:
        ...  # call route.model at route.provider
        meter.record(tenant_id="acme", provider=route.provider, model=route.model,
                     input_tokens=..., output_tokens=..., route=route)

``record(route=...)`` stamps the event's attributes with :data:`ATTRIBUTES` (inside a
``reserve(route=...)`` block every event gets the reservation's settled route).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.core import routing as r
from pipeline.core.catalog import Catalog, load_catalog
from pipeline.errors import ConfigError, RouterArtifactError

# a provider's small and large model, both in the price catalog (gpt-4o-mini is ~17x cheaper)
DEFAULT_WEAK = ("openai", "gpt-4o-mini")
DEFAULT_STRONG = ("openai", "gpt-4o")
# the event attributes a routed call carries (sql/011_routing.sql reads them)
ATTRIBUTES = ("router_version", "route_tier", "route_threshold", "route_p_weak_ok", "route_by")


class Model(NamedTuple):
    """One side of the weak/strong pair."""

    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class Route:
    """Where one prompt goes: the tier and model, the score and the threshold applied."""

    tier: str  # weak | strong | other (the decision API downgraded outside the pair)
    model: str
    provider: str
    p_weak_ok: float
    threshold: float  # the threshold applied (after the decision API's budget shift)
    base_threshold: float  # the artifact's own
    router_version: str
    weak: Model
    strong: Model
    # local (no decision API) | router | critical | budget (budgets changed the model)
    by: str = "local"
    decision: str | None = None  # allow | downgrade | deny; None: not asked
    reason: str = ""
    answer: Mapping[str, Any] | None = None

    @property
    def allowed(self) -> bool:
        """False only when the decision API denied the call."""
        return self.decision != "deny"

    def attributes(self) -> dict[str, str]:
        """The event attributes of this routed call (:data:`ATTRIBUTES`)."""
        return {"router_version": self.router_version, "route_tier": self.tier,
                "route_threshold": f"{self.threshold:.6f}",
                "route_p_weak_ok": f"{self.p_weak_ok:.6f}", "route_by": self.by}

    def decision_params(self) -> dict[str, str]:
        """The verdict as decision API parameters (no prompt text)."""
        return {"p_weak_ok": repr(self.p_weak_ok), "route_threshold": repr(self.base_threshold),
                "router_version": self.router_version, "weak_model": self.weak.model,
                "strong_model": self.strong.model}

    def settle(self, answer: Mapping[str, Any]) -> Route:
        """This route after a decision API answer: its tier, model and threshold."""
        decision = str(answer["decision"])
        info = answer.get("route") or {}  # none: a worker that does not route
        chosen = str(info.get("tier", self.tier))
        side = {"weak": self.weak, "strong": self.strong}
        if decision == "deny":
            tier, model = chosen, side[chosen].model if chosen in side else self.model
        else:
            called = str(answer.get("suggested_model") or answer["model"]) \
                if decision == "downgrade" else str(answer["model"])
            tier = str(info.get("final_tier") or self._tier_of(called))
            # the pair's names as the caller gave them (the API answers catalog names)
            model = side[tier].model if tier in side else called
        # outside the pair: a cheaper model of the chosen side's provider
        provider = side.get(tier, side.get(chosen, self.strong)).provider
        by = str(info.get("chosen_by", "local")) if tier == chosen and decision != "deny" \
            else "budget"
        return replace(self, tier=tier, model=model, provider=provider,
                       threshold=float(info.get("threshold", self.threshold)), by=by,
                       decision=decision, reason=str(answer.get("reason", "")),
                       answer=dict(answer))

    def _tier_of(self, model: str) -> str:
        return {self.weak.model: "weak", self.strong.model: "strong"}.get(model, "other")


def load_router(path: str | Path | None = None) -> r.RouterArtifact:
    """A validated artifact from ``path`` (default: the one shipped in the package)."""
    if path is None:
        return _shipped()
    try:
        return r.load_artifact(json.loads(Path(path).read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"cannot read router artifact {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise RouterArtifactError(f"router artifact {path} is not JSON ({exc})") from None


@lru_cache(maxsize=1)
def _shipped() -> r.RouterArtifact:
    text = resources.files("pipeline").joinpath("data/router.json").read_text("utf-8")
    return r.load_artifact(json.loads(text))


class Router:
    """A router artifact and a weak/strong model pair, routing in this process."""

    def __init__(self, artifact: r.RouterArtifact | str | Path | None = None, *,
                 weak_model: str = DEFAULT_WEAK[1], weak_provider: str = DEFAULT_WEAK[0],
                 strong_model: str = DEFAULT_STRONG[1],
                 strong_provider: str = DEFAULT_STRONG[0],
                 catalog: Catalog | None = None) -> None:
        self.artifact = artifact if isinstance(artifact, r.RouterArtifact) \
            else load_router(artifact)
        catalog = catalog or load_catalog()
        for provider, model in ((weak_provider, weak_model), (strong_provider, strong_model)):
            if catalog.resolve(model, provider) is None:
                raise ConfigError(f"router model {model!r} at {provider!r} is not in the price "
                                  "catalog")
        if (weak_provider, weak_model) == (strong_provider, strong_model):
            raise ConfigError("the weak and strong models of a router must differ")
        self.weak = Model(weak_provider, weak_model)
        self.strong = Model(strong_provider, strong_model)

    @property
    def router_version(self) -> str:
        """The artifact's content-hash version."""
        return self.artifact.router_version

    def route(self, text: str, *, threshold_shift: float = 0.0) -> Route:
        """Route one prompt locally at the artifact's threshold (minus ``threshold_shift``)."""
        d = r.route(self.artifact, text, threshold_shift=threshold_shift)
        side = self.strong if d.tier == "strong" else self.weak
        return Route(d.tier, side.model, side.provider, d.p_weak_ok, d.threshold,
                     self.artifact.threshold, d.router_version, self.weak, self.strong)

    def decide(self, base_url: str, prompt: str | Route, *, tenant_id: str,
               estimated_input_tokens: int, estimated_output_tokens: int,
               value_tier: str = "standard", api_token: str | None = None,
               timeout: float = 2.0, **scope: str) -> Route:
        """Route locally, then ask the decision API with the verdict (never the prompt):
        the route the tenant's budgets, actions and value tier allow."""
        from pipeline.sdk._decisions import decide

        local = prompt if isinstance(prompt, Route) else self.route(prompt)
        answer = decide(base_url, tenant_id=tenant_id, model=local.model,
                        estimated_input_tokens=estimated_input_tokens,
                        estimated_output_tokens=estimated_output_tokens, value_tier=value_tier,
                        api_token=api_token, timeout=timeout, route=local, **scope)
        return local.settle(answer)


@lru_cache(maxsize=1)
def _default_router() -> Router:
    return Router()


def route_prompt(text: str, *, router: Router | None = None,
                 threshold_shift: float = 0.0) -> Route:
    """Route one prompt locally with ``router`` (default: the shipped artifact and pair)."""
    return (router or _default_router()).route(text, threshold_shift=threshold_shift)


def stamp_route(fields: dict[str, Any]) -> None:
    """``record(route=...)``: the route's attributes join the event's (theirs win on a
    clash: a caller may set one of these keys on purpose)."""
    route = fields.pop("route", None)
    if route is None:
        return
    if not isinstance(route, Route):
        raise TypeError("route= takes a pipeline.sdk.Route (Router.route / Router.decide)")
    fields["attributes"] = {**route.attributes(), **(fields.get("attributes") or {})}
