-- Deposits decided by the chain alone (issue: deposits that cannot be faked,
-- locked away or seen differently by two processors).

-- Parameters fixed with the key in KeyGenStart, and the Monero height from
-- which it is scanned (KeyConfirmed). A processor's local config may only
-- repeat them.
ALTER TABLE keys ADD COLUMN confirmations BIGINT CHECK (confirmations >= 1);
ALTER TABLE keys ADD COLUMN window_blocks BIGINT CHECK (window_blocks >= 1);
ALTER TABLE keys ADD COLUMN activation_height BIGINT CHECK (activation_height >= 0);

-- Accounts arrive in settlement blocks, each with the first Monero block
-- whose outputs to it are credited.
ALTER TABLE accounts ADD COLUMN active_from BIGINT NOT NULL DEFAULT 0 CHECK (active_from >= 0);
ALTER TABLE accounts ADD COLUMN settlement_block BIGINT;

-- How far the settlement chain lets processors scan Monero.
ALTER TABLE settlement_blocks ADD COLUMN monero_horizon BIGINT NOT NULL DEFAULT 0 CHECK (monero_horizon >= 0);

-- Outputs: the one-time key (credited once, ever: Monero's burning bug), the
-- batch that reports it (a timelocked output is reported in the batch of the
-- block that unlocks it, not the one it arrived in), and why it is not
-- credited. Statuses: locked -> received (in a batch) -> included ->
-- reserved -> spent; or duplicate, for good.
ALTER TABLE outputs ADD COLUMN output_key BYTEA CHECK (length(output_key) = 32);
ALTER TABLE outputs ADD COLUMN batch_id BIGINT;
ALTER TABLE outputs ADD COLUMN reason TEXT;
ALTER TABLE outputs ADD CONSTRAINT outputs_status_known
    CHECK (status IN ('locked', 'received', 'included', 'reserved', 'spent', 'duplicate'));
-- The database itself refuses to credit one output key twice.
CREATE UNIQUE INDEX outputs_key_credited ON outputs (output_key) WHERE status <> 'duplicate';
CREATE INDEX outputs_locked ON outputs (session) WHERE status = 'locked';
CREATE INDEX outputs_batch ON outputs (batch_id);

-- Batch ids are derived from the chain (session * 2^48 + block height), so a
-- block may carry one batch per key.
ALTER TABLE batches DROP CONSTRAINT batches_block_height_key;
ALTER TABLE batches ADD CONSTRAINT batches_session_block UNIQUE (session, block_height);
