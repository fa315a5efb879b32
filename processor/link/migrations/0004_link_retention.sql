-- Retention on the exactly-once link (both ends).
--
-- A background task deletes, in bounded batches, rows older than
-- link.retention that nobody can need again: send_log rows the peer
-- acknowledged (it never asks for an id at or below its acknowledgement),
-- inbox rows (a journal: inbound deduplication is link_state.last_handled_in),
-- and quarantine entries an operator marked resolved. link_state keeps the
-- totals, so the admin API and the metrics show what went.

ALTER TABLE quarantine
    ADD COLUMN resolved_at TIMESTAMPTZ,
    -- What the operator did about it (ResolveQuarantine's note).
    ADD COLUMN resolution  TEXT NOT NULL DEFAULT '';

ALTER TABLE link_state
    ADD COLUMN pruned_send_log   BIGINT NOT NULL DEFAULT 0 CHECK (pruned_send_log >= 0),
    ADD COLUMN pruned_inbox      BIGINT NOT NULL DEFAULT 0 CHECK (pruned_inbox >= 0),
    ADD COLUMN pruned_quarantine BIGINT NOT NULL DEFAULT 0 CHECK (pruned_quarantine >= 0),
    ADD COLUMN last_pruned_at    TIMESTAMPTZ;

-- The pruning scans: old rows first, and only the part that can go.
CREATE INDEX send_log_created ON send_log (link_id, created_at);
CREATE INDEX inbox_handled ON inbox (link_id, handled_at);
CREATE INDEX quarantine_resolved ON quarantine (link_id, resolved_at)
    WHERE resolved_at IS NOT NULL;
