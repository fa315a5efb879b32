-- Batches of deposits, one per finalized block with deposits, signed by the
-- group (FROST Ed25519) through the coordinator; and every signing attempt
-- this processor began (an attempt's nonces live only in memory: an attempt
-- begun before a restart is never signed, the coordinator re-attempts).

CREATE TABLE batches (
    -- Sequential over all keys, so a settlement block's included batch ids
    -- name batches unambiguously.
    id            BIGINT PRIMARY KEY CHECK (id >= 0),
    session       BIGINT NOT NULL,
    block_height  BIGINT NOT NULL UNIQUE REFERENCES finalized_blocks (height),
    block_hash    BYTEA  NOT NULL,
    -- The protobuf encoding of the Batch: exactly the bytes signed.
    encoded       BYTEA  NOT NULL,
    status        TEXT   NOT NULL DEFAULT 'proposed' CHECK (status IN ('proposed', 'signed', 'included')),
    signature     BYTEA,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE sign_attempts (
    session       BIGINT  NOT NULL,
    kind          TEXT    NOT NULL,
    id            BYTEA   NOT NULL,
    attempt       INTEGER NOT NULL,
    -- The signers' commitments once the coordinator chose them (for aggregating).
    commitments   BYTEA,
    status        TEXT    NOT NULL DEFAULT 'preprocessed',
    begun_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (session, kind, id, attempt)
);
