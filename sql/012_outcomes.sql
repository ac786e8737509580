-- Outcomes (issue #21): the quality signal producers report per metered call (success, a
-- score in [0, 1], an end user's feedback; docs/contracts.md "Outcome"). One row per
-- (tenant, event, source): a re-delivered outcome collapses to one row, a later judgement
-- from the same source replaces the earlier one (version: its timestamp); read with FINAL.
-- No partitions: a re-judgement months later must still replace the row it corrects.
CREATE TABLE IF NOT EXISTS {db}.usage_outcomes
(
    tenant_id   String,
    event_id    String,
    source      LowCardinality(String),
    timestamp   DateTime64(3, 'UTC'),
    success     Nullable(Bool),
    score       Nullable(Float64),
    feedback    LowCardinality(Nullable(String)),
    received_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(timestamp)
ORDER BY (tenant_id, event_id, source);

-- Routed calls next to their outcome: every row of routed_usage (calls without an outcome
-- too: cost counts every request) with the latest reported value of each signal over all
-- sources (outcomes = how many sources reported; 0 and NULL signals when none did).
CREATE VIEW IF NOT EXISTS {db}.routed_outcomes AS
SELECT u.event_id AS event_id, u.timestamp AS timestamp, u.tenant_id AS tenant_id,
       u.project_id AS project_id, u.feature AS feature, u.provider AS provider,
       u.model AS model, u.value_tier AS value_tier, u.total_cost AS total_cost,
       u.currency AS currency, u.router_version AS router_version,
       u.route_tier AS route_tier, u.route_threshold AS route_threshold,
       u.route_p_weak_ok AS route_p_weak_ok, u.route_by AS route_by,
       o.outcomes AS outcomes, o.success AS success, o.score AS score,
       o.feedback AS feedback,
       if(o.outcomes > 0, o.judged_at, NULL) AS judged_at
FROM {db}.routed_usage AS u
LEFT JOIN
(
    SELECT tenant_id, event_id, count() AS outcomes,
           argMaxIf(success, timestamp, success IS NOT NULL) AS success,
           argMaxIf(score, timestamp, score IS NOT NULL) AS score,
           argMaxIf(feedback, timestamp, feedback IS NOT NULL) AS feedback,
           max(timestamp) AS judged_at
    FROM {db}.usage_outcomes FINAL
    GROUP BY tenant_id, event_id
) AS o ON u.tenant_id = o.tenant_id AND u.event_id = o.event_id;
