from decimal import Decimal as D

import pytest

from pipeline.core.scoring import ValuePolicy, load_policy, score

P = load_policy()


@pytest.mark.parametrize(
    "task, crit, tier, weight, value_tier",
    [
        ("sales_email", "normal", None, D("0.5"), "low"),
        ("regulatory_compliance", "normal", None, D("5.0"), "critical"),
        ("customer_support", "normal", "standard", D("1.5"), "standard"),
        ("regulatory_compliance", "critical", "enterprise", D("15.0"), "critical"),
        ("sales_email", "low", "free", D("0.125"), "low"),
        ("never-heard-of-it", "normal", None, D("1.0"), "standard"),
        (None, "normal", None, D("1.0"), "standard"),
        ("chat", "normal", "unknown-tier", D("0.8"), "standard"),
    ],
)
def test_weights(task: str | None, crit: str, tier: str | None, weight: D, value_tier: str) -> None:
    w, units, vt = score(P, 1000, task, crit, tier)
    assert w == weight
    assert units == weight * 1000
    assert vt == value_tier


def test_compliance_token_worth_ten_sales_tokens() -> None:
    assert P.weight("regulatory_compliance", "normal", None) == 10 * P.weight("sales_email", "normal", None)


def test_custom_policy() -> None:
    p = ValuePolicy.model_validate({"default_task_weight": "2", "tiers": [
        {"name": "gold", "min_weight": "2"}, {"name": "tin", "min_weight": "0"}]})
    assert score(p, 10, "x", "normal", None) == (D(2), D(20), "gold")
    assert p.tier(D("1.99")) == "tin"


def test_policy_needs_a_tier() -> None:
    with pytest.raises(ValueError):
        ValuePolicy.model_validate({"tiers": []})
