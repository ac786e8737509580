-- One-hour cache writes as their own count (issue #16): cache_creation_input_tokens keeps
-- counting every write, this column the 1-hour part of them (the rest are 5-minute writes).
-- Rows stored before it read 0; reprice prices them by the legacy attributes.cache_ttl rule
-- (pipeline/events.py cache_writes_1h), as the meter did.
--
-- The hour/day rollups and spend_* views are left as they are: their cost columns already
-- carry the 1-hour price, their cache_creation_input_tokens still counts all writes, and the
-- split is exact in usage_events FINAL. Changing a materialized view's query under a live
-- stream risks counting or missing the inserts in between.
ALTER TABLE {db}.usage_events
    ADD COLUMN IF NOT EXISTS cache_creation_1h_input_tokens UInt64 DEFAULT 0
    AFTER cache_creation_input_tokens;
