-- The remaining status columns get the CHECK the others have: a value the
-- code does not know is refused where it is written, not discovered when a
-- later query silently skips the row.
ALTER TABLE burns ADD CONSTRAINT burns_status_known
    CHECK (status IN ('received', 'queued', 'rejected', 'planned', 'paid'));
ALTER TABLE sign_attempts ADD CONSTRAINT sign_attempts_status_known
    CHECK (status IN ('preprocessed', 'chosen'));
ALTER TABLE windows ADD CONSTRAINT windows_outcome_known
    CHECK (outcome IN ('open', 'planned', 'idle', 'busy', 'not-leader'));
