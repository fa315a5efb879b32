-- What processors derive from the chain is fixed by the chain: the
-- parameters of each key, the Monero height it is scanned from, the height
-- each account is credited from, and how far processors may scan.

-- Fixed in KeyGenStart; activation_height is given with KeyConfirmed, right
-- after the settlement block whose horizon it exceeds.
ALTER TABLE keygen_sessions ADD COLUMN confirmations BIGINT;
ALTER TABLE keygen_sessions ADD COLUMN window_blocks BIGINT;
ALTER TABLE keygen_sessions ADD COLUMN activation_height BIGINT;

-- Registered in a settlement block (NULL: waiting for the next one), and
-- credited from the Monero block after that block's horizon.
ALTER TABLE accounts ADD COLUMN settlement_block BIGINT;
ALTER TABLE accounts ADD COLUMN active_from BIGINT;

-- No processor scans a Monero block above the horizon of the newest
-- settlement block it has taken in.
ALTER TABLE settlement_blocks ADD COLUMN monero_horizon BIGINT NOT NULL DEFAULT 0 CHECK (monero_horizon >= 0);
