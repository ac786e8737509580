-- Crash-safe, repeatable re-pricing (issue #17 review). reprice_audit becomes the journal:
-- a day's corrections are written to it FIRST (batch = a token derived from the exact
-- change set), then the rollup deltas (insert_deduplication_token = batch), then the
-- corrected ledger rows. A journal entry whose old_ingested_at still equals the ledger row's
-- ingested_at is pending (its ledger write has not happened): the next run re-sends that
-- batch's deltas under the same token (ClickHouse drops them if they landed) and counts them
-- in the rollups' basis, so no crash point leaves the rollups wrong or counted twice.
-- Rows written before this migration read batch = '' and are history only.
ALTER TABLE {db}.reprice_audit ADD COLUMN IF NOT EXISTS batch String DEFAULT '';
ALTER TABLE {db}.reprice_audit
    ADD COLUMN IF NOT EXISTS old_ingested_at DateTime64(3, 'UTC') DEFAULT toDateTime64(0, 3, 'UTC');
ALTER TABLE {db}.reprice_audit ADD COLUMN IF NOT EXISTS old_saved_cost Decimal(38, 12) DEFAULT 0;
ALTER TABLE {db}.reprice_audit ADD COLUMN IF NOT EXISTS new_saved_cost Decimal(38, 12) DEFAULT 0;
-- a repeated journal insert (a re-run, two identical re-prices at once) is dropped by its token
ALTER TABLE {db}.reprice_audit MODIFY SETTING non_replicated_deduplication_window = 10000;

-- One row per batch whose rollup deltas are in: a re-run long after a crash (more than the
-- rollups' 10,000-block dedup window later) must not rely on the token alone.
CREATE TABLE IF NOT EXISTS {db}.reprice_batches
(
    batch      String,
    day        Date,
    stage      LowCardinality(String),
    at         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (day, batch, stage)
SETTINGS non_replicated_deduplication_window = 10000;
