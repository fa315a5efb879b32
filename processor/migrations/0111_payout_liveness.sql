-- Payout liveness (README "Payout liveness"): no single participant's
-- message can hold the scheduler.
--
-- 'expired': a proposal never signed here whose window's start is
-- PLAN_LIFETIME_BLOCKS finalized blocks behind; it reserved nothing.
-- 'abandoned': a plan this processor accepted (it was signing, signed or
-- published) whose transaction no finalized block held by then. Its
-- reservations are released; its burns may be paid again only by a plan that
-- spends one of its inputs, so that at most one of the two can ever be mined.
-- Either can still complete if a finalized block holds its transaction.
ALTER TABLE plans DROP CONSTRAINT plans_status_check;
ALTER TABLE plans ADD CONSTRAINT plans_status_check CHECK (status IN
    ('proposed', 'received', 'waiting', 'refused', 'signing', 'signed',
     'published', 'completed', 'superseded', 'expired', 'abandoned'));

-- The highest settlement horizon taken in when the proposal was relayed here
-- (the link delivers in one order, so every processor records the same one).
-- A proposal for a window starting beyond it plus PROPOSAL_PATIENCE_BLOCKS is
-- refused: no honest leader proposes for a window it has not finalized.
ALTER TABLE plans ADD COLUMN relay_horizon BIGINT;
