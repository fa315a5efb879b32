-- Key generation as the coordinator runs it: identities, sessions, each
-- participant's progress, relayed round-2 ciphertexts, blames.

CREATE TABLE processor_identities (
    processor               TEXT PRIMARY KEY REFERENCES link_state (link_id),
    encryption_public_key   BYTEA NOT NULL CHECK (length(encryption_public_key) = 32),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE keygen_sessions (
    session           BIGINT PRIMARY KEY CHECK (session >= 0),
    threshold         INTEGER NOT NULL,
    attempt           INTEGER NOT NULL DEFAULT 0,
    status            TEXT NOT NULL CHECK (status IN ('round1', 'round2', 'generating', 'confirmed', 'failed')),
    group_key         BYTEA,
    monero_address    TEXT,
    failure           TEXT,
    -- Participants that did not answer within the round timeout.
    silent            TEXT[] NOT NULL DEFAULT '{}',
    round_started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE keygen_participants (
    session           BIGINT  NOT NULL REFERENCES keygen_sessions (session),
    idx               INTEGER NOT NULL CHECK (idx >= 1),
    processor         TEXT    NOT NULL REFERENCES link_state (link_id),
    round1            BYTEA,
    round2_done       BOOLEAN NOT NULL DEFAULT FALSE,
    group_key         BYTEA,
    monero_address    TEXT,
    PRIMARY KEY (session, idx),
    UNIQUE (session, processor)
);

CREATE TABLE keygen_round2 (
    session     BIGINT  NOT NULL,
    from_idx    INTEGER NOT NULL,
    to_idx      INTEGER NOT NULL,
    ciphertext  BYTEA   NOT NULL,
    PRIMARY KEY (session, from_idx, to_idx),
    FOREIGN KEY (session, from_idx) REFERENCES keygen_participants (session, idx)
);

CREATE TABLE keygen_blames (
    session     BIGINT  NOT NULL REFERENCES keygen_sessions (session),
    accuser     INTEGER NOT NULL,
    accused     INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    evidence    BYTEA   NOT NULL,
    raised_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (session, accuser)
);
