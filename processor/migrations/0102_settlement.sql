-- Settlement-chain blocks as the coordinator delivered them, and their burns.

CREATE TABLE settlement_blocks (
    number              BIGINT PRIMARY KEY CHECK (number >= 0),
    included_batch_ids  BIGINT[]    NOT NULL,
    received_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE burns (
    burn_id         TEXT PRIMARY KEY,
    block_number    BIGINT NOT NULL REFERENCES settlement_blocks (number),
    monero_address  TEXT   NOT NULL,
    amount          BIGINT NOT NULL CHECK (amount >= 0),
    -- 'received' until the scheduler takes it up.
    status          TEXT   NOT NULL DEFAULT 'received'
);
