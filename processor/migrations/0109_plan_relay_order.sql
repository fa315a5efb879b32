-- Plans are checked in the order the coordinator relayed them. created_at
-- could not tell that order: a leader stores its own plan before others'
-- proposals arrive, whatever order they are relayed in, and plans received
-- in one link transaction share its now(). The link handles messages one at
-- a time in relay order, so a sequence drawn while handling them keeps it.
CREATE SEQUENCE plan_relay_order;
ALTER TABLE plans ADD COLUMN relay_order BIGINT;
