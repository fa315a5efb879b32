-- Deposit accounts this coordinator registered with every processor.
CREATE TABLE accounts (
    account        INTEGER PRIMARY KEY CHECK (account >= 1),
    registered_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
