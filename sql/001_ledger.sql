-- Ledger of priced usage events. ReplacingMergeTree on (tenant_id, day, event_id): a retried
-- insert or a replayed event collapses to one row; read exact totals with FINAL.
CREATE TABLE IF NOT EXISTS {db}.usage_events
(
    event_id                    String,
    timestamp                   DateTime64(3, 'UTC'),
    tenant_id                   String,
    project_id                  LowCardinality(String) DEFAULT '',
    user_id                     String DEFAULT '',
    feature                     LowCardinality(String) DEFAULT '',
    trace_id                    String DEFAULT '',
    attributes                  Map(String, String),
    provider                    LowCardinality(String),
    model                       LowCardinality(String),
    priced_model                LowCardinality(String),
    input_tokens                UInt64,
    cache_read_input_tokens     UInt64,
    cache_creation_input_tokens UInt64,
    output_tokens               UInt64,
    reasoning_output_tokens     UInt64,
    task_type                   LowCardinality(String) DEFAULT '',
    criticality                 LowCardinality(String),
    user_tier                   LowCardinality(String) DEFAULT '',
    service_tier                LowCardinality(String),
    cache_hit                   Bool,
    token_source                LowCardinality(String),
    input_cost                  Decimal(38, 12),
    cache_read_cost             Decimal(38, 12),
    cache_write_cost            Decimal(38, 12),
    output_cost                 Decimal(38, 12),
    reasoning_cost              Decimal(38, 12),
    total_cost                  Decimal(38, 12),
    saved_cost                  Decimal(38, 12),
    currency                    LowCardinality(String),
    price_version               LowCardinality(String),
    value_weight                Decimal(18, 6),
    value_units                 Decimal(38, 6),
    value_tier                  LowCardinality(String),
    late                        Bool DEFAULT false,
    source_partition            Int32 DEFAULT -1,
    source_offset               Int64 DEFAULT -1,
    ingested_at                 DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (tenant_id, toDate(timestamp), event_id);

-- Dead letters: one row per rejected message or envelope item, re-deliveries collapse.
CREATE TABLE IF NOT EXISTS {db}.dlq_events
(
    source_topic     LowCardinality(String),
    source_partition Int32,
    source_offset    Int64,
    item_index       Int32,
    reason_code      LowCardinality(String),
    detail           String,
    raw              String,
    event_id         String DEFAULT '',
    tenant_id        String DEFAULT '',
    received_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (source_topic, source_partition, source_offset, item_index);
