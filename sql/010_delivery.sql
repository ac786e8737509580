-- Automated actions and webhook delivery (issue #18).
-- Actions turned on by forecast/anomaly breaches, one row per change: the latest row of a
-- (budget_id, kind, key) says whether it is active, so every worker (and a restart) sees the
-- same actions. A reset or clear writes an inactive row.
CREATE TABLE IF NOT EXISTS {db}.budget_actions
(
    budget_id  String,
    kind       LowCardinality(String),
    key        String,
    tenant_id  String,
    action     LowCardinality(String),
    pool       LowCardinality(String),
    since      DateTime64(3, 'UTC'),
    until      Nullable(DateTime64(3, 'UTC')),
    breach_id  String,
    active     Bool,
    reason     LowCardinality(String),
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (budget_id, kind, key);

-- The final outcome of POSTing one breach to one webhook endpoint.
CREATE TABLE IF NOT EXISTS {db}.webhook_deliveries
(
    breach_id        String,
    url              String,
    budget_id        String,
    tenant_id        String,
    format           LowCardinality(String),
    status           LowCardinality(String),
    attempts         UInt16,
    last_status      Nullable(UInt16),
    last_error       String,
    signed           Bool,
    first_attempt_at DateTime64(3, 'UTC'),
    delivered_at     Nullable(DateTime64(3, 'UTC')),
    recorded_at      DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(recorded_at)
ORDER BY (breach_id, url);
