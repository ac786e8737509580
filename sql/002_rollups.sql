-- Rollups for fast per-tenant hour/day questions. Fed by materialized views on insert;
-- the stream never inserts an event twice (dedup by event_id) and retried inserts carry an
-- insert_deduplication_token, so sum() over a rollup equals the ledger's exact FINAL total.
ALTER TABLE {db}.usage_events MODIFY SETTING non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {db}.usage_hourly
(
    hour DateTime('UTC'),
    tenant_id String,
    project_id LowCardinality(String),
    feature LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    task_type LowCardinality(String),
    value_tier LowCardinality(String),
    total_cost Decimal(38, 12),
    saved_cost Decimal(38, 12),
    input_tokens UInt64,
    cache_read_input_tokens UInt64,
    cache_creation_input_tokens UInt64,
    output_tokens UInt64,
    reasoning_output_tokens UInt64,
    value_units Decimal(38, 6),
    events UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant_id, hour, project_id, feature, provider, model, task_type, value_tier)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_hourly_mv TO {db}.usage_hourly AS
SELECT
    toStartOfHour(timestamp) AS hour,
    tenant_id,
    project_id,
    feature,
    provider,
    model,
    task_type,
    value_tier,
    sum(total_cost) AS total_cost,
    sum(saved_cost) AS saved_cost,
    sum(input_tokens) AS input_tokens,
    sum(cache_read_input_tokens) AS cache_read_input_tokens,
    sum(cache_creation_input_tokens) AS cache_creation_input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_output_tokens) AS reasoning_output_tokens,
    sum(value_units) AS value_units,
    count() AS events
FROM {db}.usage_events
GROUP BY hour, tenant_id, project_id, feature, provider, model, task_type, value_tier;

CREATE TABLE IF NOT EXISTS {db}.usage_daily
(
    day Date,
    tenant_id String,
    project_id LowCardinality(String),
    feature LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    task_type LowCardinality(String),
    value_tier LowCardinality(String),
    total_cost Decimal(38, 12),
    saved_cost Decimal(38, 12),
    input_tokens UInt64,
    cache_read_input_tokens UInt64,
    cache_creation_input_tokens UInt64,
    output_tokens UInt64,
    reasoning_output_tokens UInt64,
    value_units Decimal(38, 6),
    events UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, project_id, feature, provider, model, task_type, value_tier)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_daily_mv TO {db}.usage_daily AS
SELECT
    toDate(timestamp) AS day,
    tenant_id,
    project_id,
    feature,
    provider,
    model,
    task_type,
    value_tier,
    sum(total_cost) AS total_cost,
    sum(saved_cost) AS saved_cost,
    sum(input_tokens) AS input_tokens,
    sum(cache_read_input_tokens) AS cache_read_input_tokens,
    sum(cache_creation_input_tokens) AS cache_creation_input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_output_tokens) AS reasoning_output_tokens,
    sum(value_units) AS value_units,
    count() AS events
FROM {db}.usage_events
GROUP BY day, tenant_id, project_id, feature, provider, model, task_type, value_tier;
