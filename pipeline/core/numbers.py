"""Bounds every budget number is checked against (they keep derived values in their columns)."""

from __future__ import annotations

from decimal import Context, Decimal

MAX_ID = 256
# Bounds every budget field is validated against. They keep every derived value inside its
# ClickHouse column (sql/006_budget_bounds.sql): limit and pool limits >= MIN_LIMIT with at
# most PLACES decimals fit Decimal(38, 12), and percent = spent * 100 / limit stays below
# 10^34 for any spent a Decimal(38, 12) holds, which Decimal(76, 6) admits.
MIN_LIMIT = Decimal("0.000001")
MAX_LIMIT = Decimal("1000000000000")
PLACES = 6
MAX_THRESHOLDS = 20
MAX_POOLS = 20
MAX_POOL_NAME = 64
# wide enough for any spent * 100 / limit the bounds admit, so quantize never overflows
WIDE = Context(prec=80)
# what the budget_breaches columns hold: amounts Decimal(38, 12), percent Decimal(76, 6)
MAX_AMOUNT = Decimal(10) ** 26
# Bounds one metered event is checked against: far inside its own columns so that what is
# summed from events keeps room too. The costliest call the catalog can bill (10^8 input and
# 10^8 output tokens, the most the fields take, at its dearest rate, $75 per million in
# 2026-12) is below $10^5; 10^9 per event leaves
# sums of 10^16 events below the Decimal(38, 12) rollups' 10^26 (ClickHouse wraps past it,
# silently) and run rates below the 10^22 a forecast quantizes at 28 digits
MAX_EVENT_COST = Decimal(10) ** 9
# value weights are multipliers (the shipped policy's run 0.3-5); value_units = weight x
# tokens stays below 10^6 x 2 x 10^8 per event
MAX_WEIGHT = Decimal(10) ** 6
MAX_PERCENT = Decimal(10) ** 70


def places(v: Decimal) -> int:
    """Decimal places of v."""
    exponent = v.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def check_number(what: str, v: Decimal) -> None:
    """Refuse a non-finite number or one with more than PLACES decimals."""
    if not v.is_finite():
        raise ValueError(f"{what} must be a finite number, got {v}")
    if places(v.normalize()) > PLACES:
        raise ValueError(f"{what} {v} has more than {PLACES} decimal places")
MAX_WEBHOOKS = 5
MIN_IDLE_S = 10
MAX_IDLE_S = 7 * 24 * 3600
