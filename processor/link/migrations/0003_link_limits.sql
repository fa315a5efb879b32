-- Size limits and handler faults on the exactly-once link (both ends).

-- The largest payload `enqueue` accepts on this link, written from the
-- link's config (link.max_payload_bytes) at start, so every enqueuer checks
-- the same limit in the statement that already locks the row.
ALTER TABLE link_state
    ADD COLUMN max_payload_bytes BIGINT NOT NULL DEFAULT 1048576 CHECK (max_payload_bytes > 0);

-- The inbound ids [handling_from, handling_to] a process (handling_boot,
-- random per start) began to handle last. Written before each batch without
-- waiting for the disk: a successor that finds another process's mark on
-- the id it is about to handle knows its predecessor died handling it.
ALTER TABLE link_state
    ADD COLUMN handling_from BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN handling_to   BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN handling_boot TEXT   NOT NULL DEFAULT '';

-- Failed tries of an inbound message not yet handled: its handler panicked,
-- or the process died while handling it alone. After link.max_handler_tries
-- the message is quarantined (HANDLER_PANIC) with the last failure; the rows
-- go when the message's batch commits.
CREATE TABLE inbound_tries (
    link_id      TEXT   NOT NULL REFERENCES link_state (link_id),
    id           BIGINT NOT NULL CHECK (id > 0),
    tries        INT    NOT NULL CHECK (tries > 0),
    last_failure TEXT   NOT NULL,
    PRIMARY KEY (link_id, id)
);
