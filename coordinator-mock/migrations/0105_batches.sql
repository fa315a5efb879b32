-- Batches as the coordinator runs them: proposals from each processor, the
-- signing attempts (who preprocessed, who was chosen, their shares), blames,
-- and inclusion in a settlement block once the signature verifies.

CREATE TABLE batches (
    id                BIGINT PRIMARY KEY CHECK (id >= 0),
    session           BIGINT NOT NULL,
    block_height      BIGINT NOT NULL,
    encoded           BYTEA  NOT NULL,
    status            TEXT   NOT NULL DEFAULT 'proposed' CHECK (status IN ('proposed', 'included')),
    signature         BYTEA,
    settlement_block  BIGINT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    included_at       TIMESTAMPTZ
);

CREATE TABLE batch_proposals (
    id          BIGINT NOT NULL REFERENCES batches (id),
    processor   TEXT   NOT NULL,
    encoded     BYTEA  NOT NULL,
    PRIMARY KEY (id, processor)
);

CREATE TABLE sign_attempts (
    id          BIGINT  NOT NULL REFERENCES batches (id),
    attempt     INTEGER NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'collecting'
                CHECK (status IN ('collecting', 'sharing', 'aggregating', 'done', 'abandoned')),
    signers     INTEGER[] NOT NULL DEFAULT '{}',
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id, attempt)
);

CREATE TABLE sign_preprocesses (
    id          BIGINT  NOT NULL,
    attempt     INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    preprocess  BYTEA   NOT NULL,
    received    BIGSERIAL,
    PRIMARY KEY (id, attempt, idx)
);

CREATE TABLE sign_shares (
    id       BIGINT  NOT NULL,
    attempt  INTEGER NOT NULL,
    idx      INTEGER NOT NULL,
    share    BYTEA   NOT NULL,
    PRIMARY KEY (id, attempt, idx)
);

CREATE TABLE sign_blames (
    id        BIGINT  NOT NULL,
    attempt   INTEGER NOT NULL,
    accuser   TEXT    NOT NULL,
    accused   INTEGER NOT NULL,
    reason    TEXT    NOT NULL,
    PRIMARY KEY (id, attempt, accuser)
);
