-- Scanning: the cursor, the finalized blocks and the outputs found in them,
-- always written together (a block's outputs and the cursor past it commit in
-- one transaction).

CREATE TABLE scan_cursor (
    singleton    BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    -- The next block number to scan.
    next_height  BIGINT NOT NULL CHECK (next_height >= 0),
    -- Set when scanning halted (e.g. a finalized block's hash changed).
    halted       TEXT
);

CREATE TABLE finalized_blocks (
    height        BIGINT PRIMARY KEY CHECK (height >= 0),
    hash          BYTEA  NOT NULL CHECK (length(hash) = 32),
    outputs       INTEGER NOT NULL,
    finalized_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE outputs (
    tx_hash           BYTEA   NOT NULL CHECK (length(tx_hash) = 32),
    index_in_tx       BIGINT  NOT NULL,
    -- The key (session) whose address received it.
    session           BIGINT  NOT NULL,
    block_height      BIGINT  NOT NULL REFERENCES finalized_blocks (height),
    -- Subaddress (account, minor); account 0 is the processors' own.
    account           BIGINT  NOT NULL,
    subaddress_minor  BIGINT  NOT NULL,
    amount            BIGINT  NOT NULL CHECK (amount >= 0),
    -- Spendable from this block number (coinbase: 60 blocks after), if locked.
    unlock_height     BIGINT,
    -- Or from this Unix time, if locked by time.
    unlock_time       BIGINT,
    -- monero-wallet's WalletOutput, everything needed to spend it later.
    wallet_output     BYTEA   NOT NULL,
    status            TEXT    NOT NULL DEFAULT 'received',
    PRIMARY KEY (tx_hash, index_in_tx)
);
