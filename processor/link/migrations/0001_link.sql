-- The exactly-once link: one row per peer in link_state, every outbound
-- message in send_log, every inbound message handled in inbox, and inbound
-- messages that could not be acted on in quarantine.
--
-- The link crate owns these tables; both ends apply its migrations to their
-- own database (link::MIGRATOR), so both keep the same bookkeeping.

CREATE TABLE link_state (
    -- The peer's name on this side ("coordinator" on a processor, the
    -- processor's configured name on the coordinator).
    link_id            TEXT PRIMARY KEY,
    -- Highest inbound data id handled; written in the same transaction as the
    -- message's effects.
    last_handled_in    BIGINT NOT NULL DEFAULT 0 CHECK (last_handled_in >= 0),
    -- Highest outbound id assigned. Enqueuers lock this row, so ids are
    -- gapless and commit in id order (a reader never sees id n+1 before n).
    last_enqueued_out  BIGINT NOT NULL DEFAULT 0 CHECK (last_enqueued_out >= 0),
    -- Highest outbound id the peer acknowledged: one watermark, not a flag per
    -- row, so an acknowledgement costs one row update per batch.
    acked_out          BIGINT NOT NULL DEFAULT 0,
    CHECK (acked_out >= 0 AND acked_out <= last_enqueued_out)
);

CREATE TABLE send_log (
    link_id     TEXT        NOT NULL REFERENCES link_state (link_id),
    id          BIGINT      NOT NULL CHECK (id > 0),
    -- Derived from the message's meaning; a second attempt to send the same
    -- thing is a no-op (INSERT ... ON CONFLICT (link_id, uid) DO NOTHING).
    uid         TEXT        NOT NULL,
    kind        TEXT        NOT NULL,
    payload     BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (link_id, id),
    UNIQUE (link_id, uid)
);

CREATE TABLE inbox (
    link_id     TEXT        NOT NULL REFERENCES link_state (link_id),
    id          BIGINT      NOT NULL CHECK (id > 0),
    uid         TEXT        NOT NULL,
    kind        TEXT        NOT NULL,
    payload     BYTEA       NOT NULL,
    handled_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (link_id, id)
);

CREATE TABLE quarantine (
    link_id     TEXT        NOT NULL REFERENCES link_state (link_id),
    id          BIGINT      NOT NULL CHECK (id > 0),
    uid         TEXT        NOT NULL,
    code        TEXT        NOT NULL,
    reason      TEXT        NOT NULL,
    payload     BYTEA       NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (link_id, id)
);
