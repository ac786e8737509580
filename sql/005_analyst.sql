-- Analyst surface: exact views over the rollups, budget status snapshots, DLQ replays and
-- the re-pricing audit trail.

-- Rollups summed at read time, so they are exact whatever the merge state.
CREATE VIEW IF NOT EXISTS {db}.spend_hourly AS
SELECT hour, tenant_id, project_id, feature, provider, model, task_type, value_tier,
       sum(total_cost) AS total_cost, sum(saved_cost) AS saved_cost,
       sum(input_tokens) AS input_tokens, sum(cache_read_input_tokens) AS cache_read_input_tokens,
       sum(cache_creation_input_tokens) AS cache_creation_input_tokens,
       sum(output_tokens) AS output_tokens, sum(reasoning_output_tokens) AS reasoning_output_tokens,
       sum(value_units) AS value_units, sum(events) AS events
FROM {db}.usage_hourly
GROUP BY hour, tenant_id, project_id, feature, provider, model, task_type, value_tier;

CREATE VIEW IF NOT EXISTS {db}.spend_daily AS
SELECT day, tenant_id, project_id, feature, provider, model, task_type, value_tier,
       sum(total_cost) AS total_cost, sum(saved_cost) AS saved_cost,
       sum(input_tokens) AS input_tokens, sum(cache_read_input_tokens) AS cache_read_input_tokens,
       sum(cache_creation_input_tokens) AS cache_creation_input_tokens,
       sum(output_tokens) AS output_tokens, sum(reasoning_output_tokens) AS reasoning_output_tokens,
       sum(value_units) AS value_units, sum(events) AS events
FROM {db}.usage_daily
GROUP BY day, tenant_id, project_id, feature, provider, model, task_type, value_tier;

-- Current-period status of every budget, written by the workers (period math in the
-- budget's own timezone happens there; spend is read from the exact ledger).
CREATE TABLE IF NOT EXISTS {db}.budget_status
(
    budget_id       String,
    tenant_id       String,
    period_start    DateTime64(3, 'UTC'),
    period_end      DateTime64(3, 'UTC'),
    metric          LowCardinality(String),
    spent           Decimal(38, 12),
    `limit`         Decimal(38, 12),
    percent         Decimal(18, 6),
    mode            LowCardinality(String),
    updated_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY budget_id;

CREATE VIEW IF NOT EXISTS {db}.budget_status_now AS
SELECT s.budget_id AS budget_id, s.tenant_id AS tenant_id, s.period_start AS period_start,
       s.period_end AS period_end, s.metric AS metric, s.spent AS spent, s.`limit` AS `limit`,
       s.percent AS percent, s.mode AS mode, s.updated_at AS updated_at,
       f.model AS forecast_model, f.predicted_spend AS forecast_spend, f.lower AS forecast_lower,
       f.upper AS forecast_upper, f.probability_exceed AS forecast_probability_exceed
FROM (SELECT * FROM {db}.budget_status FINAL) AS s
LEFT JOIN (
    SELECT budget_id, argMax(model, run_at) AS model,
           argMax(predicted_spend, run_at) AS predicted_spend, argMax(lower, run_at) AS lower,
           argMax(upper, run_at) AS upper, argMax(probability_exceed, run_at) AS probability_exceed
    FROM {db}.forecasts GROUP BY budget_id
) AS f ON f.budget_id = s.budget_id
WHERE s.budget_id IN (SELECT budget_id FROM {db}.budgets FINAL WHERE NOT deleted);

-- Dead letters re-published by `tokenmeter dlq replay`.
CREATE TABLE IF NOT EXISTS {db}.dlq_replays
(
    source_topic     LowCardinality(String),
    source_partition Int32,
    source_offset    Int64,
    item_index       Int32,
    event_id         String,
    replayed_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (source_topic, source_partition, source_offset, item_index);

-- Every cost correction made by `tokenmeter reprice`.
CREATE TABLE IF NOT EXISTS {db}.reprice_audit
(
    event_id          String,
    tenant_id         String,
    timestamp         DateTime64(3, 'UTC'),
    old_price_version LowCardinality(String),
    new_price_version LowCardinality(String),
    old_total_cost    Decimal(38, 12),
    new_total_cost    Decimal(38, 12),
    repriced_at       DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(repriced_at)
ORDER BY (tenant_id, event_id, repriced_at);
