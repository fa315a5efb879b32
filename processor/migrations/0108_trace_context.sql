-- (send_log's traceparent is the link's: processor/link/migrations.)

-- A payout's trace: the context its plan was proposed (or received) in, so
-- the checks, signing and publishing that happen later in the scheduler's
-- own task join the same trace.
ALTER TABLE plans ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
