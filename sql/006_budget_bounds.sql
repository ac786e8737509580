-- Columns wide enough for every value a validated budget can produce (bounds in
-- pipeline/budgets.py). percent = spent * 100 / limit: with the smallest limit (0.000001) and
-- any spent a Decimal(38, 12) holds it stays below 10^34, past Decimal(18, 6) (a 1e-15 limit
-- overflowed it and the sink retried the insert forever). Decimal(76, 6) admits it.
ALTER TABLE {db}.budget_breaches MODIFY COLUMN percent Decimal(76, 6);
ALTER TABLE {db}.budget_status MODIFY COLUMN percent Decimal(76, 6);

-- A plain view keeps the column types it was created with (reading it would cast percent
-- back to Decimal(18, 6) and overflow): recreate it over the widened column.
DROP VIEW IF EXISTS {db}.budget_status_now;
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

-- Budgets a worker could not use: invalid on the budgets topic, or their evaluation raised.
-- Metering goes on without them; `tokenmeter budget list`, the dashboard and /health show
-- the reason. The latest row per budget wins; failed = false once a new version works.
CREATE TABLE IF NOT EXISTS {db}.budget_failures
(
    budget_id  String,
    tenant_id  String,
    failed     Bool,
    reason     String,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY budget_id;
