-- A key generation that fails through a participant's fault (silent past the
-- round timeout, or proven faulty by a blame) is re-attempted as a new
-- session without that participant, while the rest still reach the
-- threshold. `retry_of` links an attempt to the one it replaces (at most
-- one re-attempt each: UNIQUE), `excluded` lists everyone left out so far,
-- `try_number` counts the attempts of one key generation from 1.
ALTER TABLE keygen_sessions
    ADD COLUMN retry_of   BIGINT UNIQUE REFERENCES keygen_sessions (session),
    ADD COLUMN excluded   TEXT[]  NOT NULL DEFAULT '{}',
    ADD COLUMN try_number INTEGER NOT NULL DEFAULT 1 CHECK (try_number >= 1);
