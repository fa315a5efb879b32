-- What an operator waits for: a window opening here (its first block final
-- on this processor) to its payout published by this processor. Wall-clock
-- observations for the latency metric and the devnet's summary; nothing
-- that decides reads them (decisions follow finalized heights only).
ALTER TABLE windows ADD COLUMN opened_at TIMESTAMPTZ NOT NULL DEFAULT now();
ALTER TABLE plans ADD COLUMN published_at TIMESTAMPTZ;
