-- Payouts as the coordinator runs them: burns queued for the next
-- settlement block, plans proposed by window leaders (relayed to the other
-- participants) and signed through the same signing tables as batches,
-- completions and faults reported by processors.

CREATE TABLE burns (
    seq               BIGSERIAL,
    burn_id           TEXT   PRIMARY KEY,
    monero_address    TEXT   NOT NULL,
    amount            BIGINT NOT NULL CHECK (amount >= 0),
    settlement_block  BIGINT,
    submitted_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE plans (
    seq           BIGSERIAL UNIQUE,
    plan_id       BYTEA  PRIMARY KEY,
    session       BIGINT NOT NULL,
    "window"      BIGINT NOT NULL,
    leader        TEXT   NOT NULL,
    signable      BYTEA  NOT NULL,
    burn_ids      TEXT[] NOT NULL,
    -- signing -> completed; or refused (too many participants refused it
    -- to ever reach t signers), or superseded (a conflicting plan completed).
    status        TEXT   NOT NULL DEFAULT 'signing'
                  CHECK (status IN ('signing', 'completed', 'refused', 'superseded')),
    tx_hash       BYTEA,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at  TIMESTAMPTZ
);

CREATE TABLE plan_completions (
    plan_id    BYTEA NOT NULL REFERENCES plans (plan_id),
    processor  TEXT  NOT NULL,
    tx_hash    BYTEA NOT NULL,
    PRIMARY KEY (plan_id, processor)
);

CREATE TABLE faults (
    id        BIGSERIAL PRIMARY KEY,
    reporter  TEXT    NOT NULL,
    session   BIGINT  NOT NULL,
    accused   INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    subject   BYTEA,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE rejected_burns (
    burn_id    TEXT NOT NULL,
    processor  TEXT NOT NULL,
    reason     TEXT NOT NULL,
    PRIMARY KEY (burn_id, processor)
);

-- Signing attempts now serve batches and plans: `kind` says which, `id` is
-- the batch id or the plan's seq.
ALTER TABLE sign_attempts DROP CONSTRAINT sign_attempts_id_fkey;
ALTER TABLE sign_attempts ADD COLUMN kind TEXT NOT NULL DEFAULT 'batch' CHECK (kind IN ('batch', 'plan'));
ALTER TABLE sign_attempts DROP CONSTRAINT sign_attempts_pkey, ADD PRIMARY KEY (kind, id, attempt);
ALTER TABLE sign_preprocesses ADD COLUMN kind TEXT NOT NULL DEFAULT 'batch';
ALTER TABLE sign_preprocesses DROP CONSTRAINT sign_preprocesses_pkey, ADD PRIMARY KEY (kind, id, attempt, idx);
ALTER TABLE sign_shares ADD COLUMN kind TEXT NOT NULL DEFAULT 'batch';
ALTER TABLE sign_shares DROP CONSTRAINT sign_shares_pkey, ADD PRIMARY KEY (kind, id, attempt, idx);
ALTER TABLE sign_blames ADD COLUMN kind TEXT NOT NULL DEFAULT 'batch';
ALTER TABLE sign_blames DROP CONSTRAINT sign_blames_pkey, ADD PRIMARY KEY (kind, id, attempt, accuser);
