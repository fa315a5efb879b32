-- Blame is verified before it has any effect. Each signing blame gets the
-- coordinator's verdict and, when someone is proven at fault, the culprit's
-- index: only culprits are never chosen again for that key.
--   proven      the accused's preprocess or share is invalid: culprit = accused
--   false       the accused's part verifies: culprit = accuser
--   refused     accuser or accused was not a chosen signer of the attempt, or
--               the evidence is not what was relayed: culprit = accuser
--   disputed    accuser and accused proposed different batches: no culprit
--   unverified  a CLSAG (plan) share, which the coordinator cannot check
--               without a signer's state: no culprit
-- Blames recorded before this migration were never checked: unverified.
ALTER TABLE sign_blames ADD COLUMN verdict TEXT NOT NULL DEFAULT 'unverified'
    CHECK (verdict IN ('proven', 'false', 'refused', 'disputed', 'unverified'));
ALTER TABLE sign_blames ALTER COLUMN verdict DROP DEFAULT;
ALTER TABLE sign_blames ADD COLUMN culprit INTEGER;
ALTER TABLE sign_blames ADD COLUMN detail TEXT NOT NULL DEFAULT '';

-- DKG blame likewise: the culprit the evidence proves (the accused for an
-- invalid share, the accuser for a valid one or evidence that does not hold).
ALTER TABLE keygen_blames ADD COLUMN culprit INTEGER;

-- The identity key each participant had when its session started (what
-- round-2 shares were encrypted to): a blame's decryption proof is checked
-- against it, whatever the processor announces later.
ALTER TABLE keygen_participants ADD COLUMN encryption_public_key BYTEA;
