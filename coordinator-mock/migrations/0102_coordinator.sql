-- The coordinator's own state beside its links (0001_link.sql).

-- Settlement blocks this coordinator produced.
CREATE TABLE settlement_blocks (
    number      BIGINT PRIMARY KEY CHECK (number >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Which processor durably took in which settlement block.
CREATE TABLE settlement_acks (
    processor   TEXT   NOT NULL REFERENCES link_state (link_id),
    number      BIGINT NOT NULL REFERENCES settlement_blocks (number),
    acked_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (processor, number)
);
