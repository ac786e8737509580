"""FinOps FOCUS 1.2 export of the ledger (CSV, or Parquet by file extension)."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.store.client import Store

FOCUS_COLUMNS = (
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency",
    "ChargePeriodStart", "ChargePeriodEnd", "ChargeCategory", "ChargeDescription",
    "ServiceCategory", "ServiceName", "ProviderName", "PublisherName", "InvoiceIssuerName",
    "SkuId", "ConsumedQuantity", "ConsumedUnit", "PricingQuantity", "PricingUnit",
    "ResourceId", "Tags", "x_ValueUnits", "x_PriceVersion", "x_SavedCost", "x_EventId",
)
_PUBLISHERS = {"openai": "OpenAI", "anthropic": "Anthropic", "google": "Google",
               "mistral": "Mistral AI", "deepseek": "DeepSeek", "groq": "Meta",
               "together": "Meta"}


def focus_rows(store: Store, start: datetime, end: datetime) -> list[list[Any]]:
    """One FOCUS row per priced event in [start, end), from the exact ledger."""
    rows = store.rows(
        f"SELECT event_id, timestamp, tenant_id, project_id, feature, provider, priced_model, "
        f"model, input_tokens + output_tokens, total_cost, saved_cost, currency, "
        f"price_version, value_units FROM {store.database}.usage_events FINAL "
        "WHERE timestamp >= %(start)s AND timestamp < %(end)s ORDER BY timestamp, event_id",
        parameters={"start": start, "end": end})
    out = []
    for (event_id, ts, tenant, project, feature, provider, priced_model, model, tokens, cost,
         saved, currency, version, units) in rows:
        tags = {"tenant": tenant, "project": project or None, "feature": feature or None}
        charge_start = ts.replace(microsecond=0)
        out.append([
            cost, cost, cost + saved, cost + saved, currency,
            _iso(charge_start), _iso(charge_start + timedelta(seconds=1)), "Usage",
            f"{model} tokens", "AI and Machine Learning", priced_model, provider,
            _PUBLISHERS.get(provider, provider), provider, priced_model, tokens, "Tokens",
            tokens, "Tokens", tenant, {k: v for k, v in tags.items() if v is not None},
            units, version, saved, event_id,
        ])
    return out


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_focus(rows: list[list[Any]], path: Path) -> None:
    """Write CSV, or Parquet when the file name ends in .parquet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        import json

        import pyarrow as pa
        import pyarrow.parquet as pq

        cols: list[Any] = (list(zip(*rows, strict=True)) if rows
                           else [[] for _ in FOCUS_COLUMNS])
        money = pa.decimal128(38, 12)
        arrays = []
        for name, col in zip(FOCUS_COLUMNS, cols, strict=True):
            if name in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost",
                        "x_SavedCost"):
                arrays.append(pa.array([Decimal(v).quantize(Decimal("1e-12")) for v in col],
                                       type=money))
            elif name == "Tags":
                arrays.append(pa.array([json.dumps(t) for t in col], type=pa.string()))
            elif name == "x_ValueUnits":
                arrays.append(pa.array([str(v) for v in col], type=pa.string()))
            else:
                arrays.append(pa.array(list(col)))
        pq.write_table(pa.Table.from_arrays(arrays, names=list(FOCUS_COLUMNS)), path)
        return
    import json

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(FOCUS_COLUMNS)
        for r in rows:
            writer.writerow([json.dumps(v) if isinstance(v, dict) else
                             format(v, "f") if isinstance(v, Decimal) else v for v in r])
