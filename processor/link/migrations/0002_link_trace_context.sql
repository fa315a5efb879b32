-- The W3C trace context of the span that enqueued each message, sent with
-- it so the receiver's handling joins the sender's trace (also after a
-- restart). Empty when the sender was not tracing.
ALTER TABLE send_log ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
