"""The SQL of `tokenmeter router compare|outcomes`: route variants and their outcomes.

Both read the view ``routed_outcomes`` (sql/012_outcomes.sql) through the read-only query
path, so they run the same against a worker's served store (``POST /api/query``) and a store
opened directly. Values are inlined as escaped SQL literals for that reason (the HTTP query
API takes SQL text, not parameters); every grouping column comes from a fixed list.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.core.outcome_stats import VariantTotals
from pipeline.errors import ConfigError

# --by names -> the view's expression (a variant is these values joined by "/")
GROUPINGS: dict[str, str] = {
    "version": "router_version",
    "tier": "route_tier",
    "threshold": "toString(round(route_threshold, 4))",
    "by": "route_by",
    "model": "model",
}
EXPORT_COLUMNS = ("event_id", "tenant_id", "timestamp", "router_version", "tier", "model",
                  "success", "score", "feedback")


def literal(value: str) -> str:
    """A ClickHouse string literal (backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _where(tenant: str | None, since: datetime | None, extra: str = "") -> str:
    conds = [c for c in (extra,) if c]
    if tenant:
        conds.append(f"tenant_id = {literal(tenant)}")
    if since is not None:
        conds.append(f"timestamp >= parseDateTime64BestEffort({literal(since.isoformat())}, 3)")
    return f" WHERE {' AND '.join(conds)}" if conds else ""


def variant_expr(by: Sequence[str]) -> str:
    """The SQL naming each row's variant from --by names."""
    unknown = [b for b in by if b not in GROUPINGS]
    if unknown or not by:
        raise ConfigError(f"--by {','.join(by)}: use one or more of {', '.join(GROUPINGS)} "
                          "(comma-separated)")
    parts = ", ".join(GROUPINGS[b] for b in by)
    return f"arrayStringConcat([{parts}], '/')"


def compare_sql(db: str, by: Sequence[str], tenant: str | None = None,
                since: datetime | None = None) -> str:
    """Per variant: requests, cost, judged calls, successes, score count, mean and variance."""
    return (
        f"SELECT {variant_expr(by)} AS variant, count() AS requests, "
        "toString(sum(total_cost)) AS cost, countIf(success IS NOT NULL) AS judged, "
        "countIf(success IS NOT NULL AND success) AS successes, "
        "countIf(score IS NOT NULL) AS scored, "
        "if(scored > 0, avgIf(score, score IS NOT NULL), NULL) AS score_mean, "
        "if(scored > 1, varSampIf(score, score IS NOT NULL), NULL) AS score_var "
        f"FROM {db}.routed_outcomes{_where(tenant, since)} "
        "GROUP BY variant ORDER BY variant")


def totals(rows: Sequence[Sequence[Any]]) -> list[VariantTotals]:
    """compare_sql rows (from the store or the HTTP API's JSON) as VariantTotals."""
    def opt(v: Any) -> float | None:
        return None if v is None else float(v)

    return [VariantTotals(name=str(v), requests=int(n), cost=Decimal(str(cost)),
                          judged=int(judged), successes=int(ok), scored=int(scored),
                          score_mean=opt(mean), score_var=opt(var))
            for v, n, cost, judged, ok, scored, mean, var in rows]


def export_sql(db: str, tenant: str | None = None, since: datetime | None = None) -> str:
    """Routed calls that have an outcome: the columns a team joins its prompts to."""
    return (
        "SELECT event_id, tenant_id, timestamp, router_version, route_tier AS tier, model, "
        f"success, score, feedback FROM {db}.routed_outcomes"
        f"{_where(tenant, since, 'outcomes > 0')} ORDER BY timestamp, event_id")
