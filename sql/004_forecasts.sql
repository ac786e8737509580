-- Every forecast run, one row per budget: the model used and why, the end-of-period
-- prediction with its interval, and the cumulative path to period end.
CREATE TABLE IF NOT EXISTS {db}.forecasts
(
    budget_id          String,
    tenant_id          String,
    run_at             DateTime64(3, 'UTC'),
    period_start       DateTime64(3, 'UTC'),
    period_end         DateTime64(3, 'UTC'),
    model              LowCardinality(String),
    reason             String,
    history_points     UInt32,
    spent              Decimal(38, 12),
    `limit`            Decimal(38, 12),
    predicted_spend    Nullable(Decimal(38, 12)),
    lower              Nullable(Decimal(38, 12)),
    upper              Nullable(Decimal(38, 12)),
    run_rate_spend     Nullable(Decimal(38, 12)),
    probability_exceed Nullable(Decimal(18, 6)),
    backtest_wape      Nullable(Decimal(18, 6)),
    points_at          Array(DateTime64(3, 'UTC')),
    points_p50         Array(Decimal(38, 12)),
    points_lower       Array(Decimal(38, 12)),
    points_upper       Array(Decimal(38, 12))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(run_at)
ORDER BY (tenant_id, budget_id, run_at);
