-- Payouts: burns become plans (one Monero transaction each), planned by a
-- coordination window's leader, checked by every follower, signed with
-- FROST-CLSAG and watched until final on chain.

-- Outputs: 'received' -> 'included' (spendable; change is included at once)
-- -> 'reserved' by a plan -> 'spent' when the plan's transaction is final.
ALTER TABLE outputs ADD COLUMN plan_id BYTEA;
-- Change returns to subaddress (0, 1); it is the group's own, never a deposit.
UPDATE outputs SET status = 'included' WHERE account = 0 AND subaddress_minor = 1 AND status = 'received';

-- Burns: 'queued' (valid) or 'rejected' (with the reason, reported back) when
-- taken in; 'planned' once a plan pays them; 'paid' when it is final.
ALTER TABLE burns ADD COLUMN seq BIGSERIAL;
ALTER TABLE burns ADD COLUMN plan_id BYTEA;
ALTER TABLE burns ADD COLUMN reason TEXT;
CREATE INDEX burns_queue ON burns (seq) WHERE status = 'queued';

-- Coordination windows: one row per window, written in the scanner's
-- transaction for the window's first block, so none is skipped or run twice.
CREATE TABLE windows (
    "window"      BIGINT PRIMARY KEY CHECK ("window" >= 0),
    session       BIGINT NOT NULL,
    start_height  BIGINT NOT NULL REFERENCES finalized_blocks (height),
    start_hash    BYTEA  NOT NULL,
    leader        INTEGER NOT NULL,
    -- open (the leader has yet to plan) | planned | idle | busy | not-leader
    outcome       TEXT   NOT NULL,
    plan_id       BYTEA,
    handled_at    TIMESTAMPTZ
);

CREATE TABLE plans (
    plan_id           BYTEA PRIMARY KEY CHECK (length(plan_id) = 32),
    session           BIGINT  NOT NULL,
    "window"          BIGINT  NOT NULL,
    leader            INTEGER NOT NULL,
    signable          BYTEA   NOT NULL,
    burn_ids          TEXT[]  NOT NULL,
    -- A leader's own plan is 'proposed' until the coordinator relays it back;
    -- every plan is then checked in the order the coordinator relays them:
    -- received -> (waiting ->) signing | refused; signing -> signed ->
    -- published -> completed. Any open plan can complete (another processor
    -- may publish), or be superseded when a conflicting one completes.
    status            TEXT    NOT NULL CHECK (status IN
                        ('proposed', 'received', 'waiting', 'refused', 'signing', 'signed',
                         'published', 'completed', 'superseded')),
    reason            TEXT,
    tx                BYTEA,
    tx_hash           BYTEA,
    fee               BIGINT,
    completed_height  BIGINT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX plans_open ON plans (status) WHERE status NOT IN ('completed', 'superseded');

-- Faults this processor observed in others (a refused plan names its leader).
CREATE TABLE faults (
    id        BIGSERIAL PRIMARY KEY,
    session   BIGINT  NOT NULL,
    accused   INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
