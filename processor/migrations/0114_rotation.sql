-- Key rotation. A key's stages follow from heights fixed when keys are
-- confirmed (see processor/src/lifecycle): only its retirement, observed
-- once it holds nothing, is stored.

-- Two keys open windows of the same number while one forwards to the other:
-- a window is a key's.
ALTER TABLE windows DROP CONSTRAINT windows_pkey;
ALTER TABLE windows ADD PRIMARY KEY (session, "window");

-- The finalized block at which a key that had handed over held no output
-- and no plan in flight: from the next block it is neither scanned nor
-- scheduled.
ALTER TABLE keys ADD COLUMN retired_height BIGINT CHECK (retired_height >= 0);

-- Keys this processor holds no share of but must know: a successor its own
-- key forwards to (a validator set it is leaving). The coordinator confirms
-- them to the old set too.
CREATE TABLE foreign_keys (
    session            BIGINT PRIMARY KEY CHECK (session >= 0),
    group_key          BYTEA  NOT NULL CHECK (length(group_key) = 32),
    activation_height  BIGINT NOT NULL CHECK (activation_height >= 0),
    confirmed_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The key that pays a burn, as the settlement block named it (NULL: the
-- first key). Only that key's windows plan for it.
ALTER TABLE burns ADD COLUMN session BIGINT CHECK (session >= 0);
