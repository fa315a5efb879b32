-- Key generation. Secrets are stored only sealed under the key-encryption key
-- (which never enters the database); see processor/src/keystore.

-- The processor's X25519 identity key: DKG shares addressed to it are
-- encrypted to the public half.
CREATE TABLE identity (
    singleton      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    public_key     BYTEA NOT NULL CHECK (length(public_key) = 32),
    sealed_secret  BYTEA NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per key (session). Status moves round1 -> round2 -> generated ->
-- confirmed, or to failed (with the reason and, on blame, the culprit).
CREATE TABLE keys (
    session               BIGINT PRIMARY KEY CHECK (session >= 0),
    attempt               INTEGER NOT NULL DEFAULT 0,
    threshold             INTEGER NOT NULL,
    own_index             INTEGER NOT NULL,
    -- Identity keys of participants 1..n, in index order.
    participant_keys      BYTEA[] NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('round1', 'round2', 'generated', 'confirmed', 'failed')),
    sealed_round1_secret  BYTEA,
    sealed_round2_secret  BYTEA,
    -- Everyone's round-1 packages (public), index order, kept for round 3.
    round1_packages       BYTEA[],
    sealed_key_package    BYTEA,
    public_key_package    BYTEA,
    group_key             BYTEA,
    monero_address        TEXT,
    failure               TEXT,
    blamed                INTEGER,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
