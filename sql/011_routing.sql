-- Routed calls (issue #21): the SDK records a routed call's verdict as event attributes
-- (router_version, route_tier, route_threshold, route_p_weak_ok, route_by; see
-- docs/routing.md). This view reads them as typed columns next to cost, one row per event
-- (FINAL: a replayed event counts once). No column of usage_events changes.
CREATE VIEW IF NOT EXISTS {db}.routed_usage AS
SELECT event_id, timestamp, tenant_id, project_id, user_id, feature, provider, model,
       task_type, value_tier, input_tokens, output_tokens, total_cost, currency,
       attributes['router_version'] AS router_version,
       attributes['route_tier'] AS route_tier,
       toFloat64OrNull(attributes['route_threshold']) AS route_threshold,
       toFloat64OrNull(attributes['route_p_weak_ok']) AS route_p_weak_ok,
       attributes['route_by'] AS route_by
FROM {db}.usage_events FINAL
WHERE attributes['router_version'] != '';
