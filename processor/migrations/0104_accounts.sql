-- Deposit accounts registered by the coordinator. Account a's deposits go to
-- the active key's subaddress (major a, minor 0); account 0 is reserved for
-- the processor's own outputs (change).
CREATE TABLE accounts (
    account        INTEGER PRIMARY KEY CHECK (account >= 1),
    registered_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
