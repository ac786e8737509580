-- Runaway spend (issue #18): which reservation a call settled, and what template/run key and
-- spend-velocity figures a breach carries. Old rows read '' and NULL.
ALTER TABLE {db}.usage_events ADD COLUMN IF NOT EXISTS reservation_id String DEFAULT '';
ALTER TABLE {db}.budget_breaches ADD COLUMN IF NOT EXISTS each LowCardinality(String) DEFAULT '';
ALTER TABLE {db}.budget_breaches ADD COLUMN IF NOT EXISTS key String DEFAULT '';
ALTER TABLE {db}.budget_breaches ADD COLUMN IF NOT EXISTS observed_rate Nullable(Decimal(38, 12));
ALTER TABLE {db}.budget_breaches ADD COLUMN IF NOT EXISTS baseline_rate Nullable(Decimal(38, 12));
ALTER TABLE {db}.budget_breaches ADD COLUMN IF NOT EXISTS score Nullable(Decimal(38, 6));
ALTER TABLE {db}.budget_breaches ADD COLUMN IF NOT EXISTS window_seconds Nullable(UInt32);
