-- The W3C trace context of the span that enqueued each message, sent with
-- it so the receiver's handling joins the sender's trace (also after a
-- restart). Empty when the sender was not tracing.
ALTER TABLE send_log ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';

-- A payout's trace: the context its plan was proposed (or received) in, so
-- the checks, signing and publishing that happen later in the scheduler's
-- own task join the same trace.
ALTER TABLE plans ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
