-- Mirror of the compacted `budgets` topic for analysts (the topic is the source of truth;
-- on the embedded broker, whose memory dies with it, workers also reload budgets from here).
CREATE TABLE IF NOT EXISTS {db}.budgets
(
    budget_id  String,
    tenant_id  String,
    spec       String,
    period     LowCardinality(String),
    metric     LowCardinality(String),
    `limit`    Decimal(38, 12),
    mode       LowCardinality(String),
    timezone   LowCardinality(String),
    deleted    Bool,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY budget_id;

-- Every breach published to `budget-breaches`, once per breach_id.
CREATE TABLE IF NOT EXISTS {db}.budget_breaches
(
    breach_id             String,
    budget_id             String,
    tenant_id             String,
    kind                  LowCardinality(String),
    threshold_pct         Decimal(18, 6),
    spent                 Decimal(38, 12),
    `limit`               Decimal(38, 12),
    percent               Decimal(18, 6),
    metric                LowCardinality(String),
    period_start          DateTime64(3, 'UTC'),
    period_end            DateTime64(3, 'UTC'),
    pool                  LowCardinality(String),
    severity              LowCardinality(String),
    action                LowCardinality(String),
    mode                  LowCardinality(String),
    triggering_event_id   String,
    emitted_at            DateTime64(3, 'UTC'),
    predicted_spend       Nullable(Decimal(38, 12)),
    predicted_lower       Nullable(Decimal(38, 12)),
    predicted_upper       Nullable(Decimal(38, 12)),
    probability           Nullable(Decimal(18, 6)),
    projected_crossing_at Nullable(DateTime64(3, 'UTC'))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(period_start)
ORDER BY (tenant_id, budget_id, breach_id);
