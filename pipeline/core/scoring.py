"""Value-weighted scoring: how much a token is worth to the business (pure)."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TierRule(BaseModel):
    """Events whose weight is at least ``min_weight`` belong to tier ``name``."""

    model_config = ConfigDict(frozen=True)

    name: str
    min_weight: Decimal = Field(ge=0)


class ValuePolicy(BaseModel):
    """Weights per task type, multipliers per criticality and user tier, tier cut-offs."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    default_task_weight: Decimal = Field(default=Decimal(1), ge=0)
    task_weights: dict[str, Decimal] = Field(default_factory=dict)
    criticality_multipliers: dict[str, Decimal] = Field(default_factory=dict)
    user_tier_multipliers: dict[str, Decimal] = Field(default_factory=dict)
    tiers: list[TierRule] = Field(
        default_factory=lambda: [TierRule(name="standard", min_weight=Decimal(0))]
    )

    @field_validator("tiers")
    @classmethod
    def _sorted(cls, v: list[TierRule]) -> list[TierRule]:
        if not v:
            raise ValueError("at least one tier is needed")
        return sorted(v, key=lambda t: t.min_weight, reverse=True)

    def weight(self, task_type: str | None, criticality: str, user_tier: str | None) -> Decimal:
        """The value weight of one token of this kind of call (unknown task: default)."""
        w = self.task_weights.get(task_type or "", self.default_task_weight)
        w *= self.criticality_multipliers.get(criticality, Decimal(1))
        if user_tier is not None:
            w *= self.user_tier_multipliers.get(user_tier, Decimal(1))
        return w

    def tier(self, weight: Decimal) -> str:
        """The value tier (budget pool) of an event with this weight."""
        for rule in self.tiers:
            if weight >= rule.min_weight:
                return rule.name
        return self.tiers[-1].name


def score(policy: ValuePolicy, total_tokens: int, task_type: str | None, criticality: str,
          user_tier: str | None) -> tuple[Decimal, Decimal, str]:
    """(value_weight, value_units, value_tier) of one call."""
    weight = policy.weight(task_type, criticality, user_tier)
    return weight, weight * total_tokens, policy.tier(weight)


def load_policy(path: Path | None = None) -> ValuePolicy:
    """Load a policy file (default: the one shipped in the package)."""
    if path is None:
        return _builtin()
    return ValuePolicy.model_validate(json.loads(path.read_text(encoding="utf-8")))


@lru_cache(maxsize=1)
def _builtin() -> ValuePolicy:
    text = resources.files("pipeline").joinpath("data/value_policy.json").read_text("utf-8")
    return ValuePolicy.model_validate(json.loads(text))
