-- Every status, kind and verdict column of the coordinator holds one of the
-- values its Rust enum knows (see each module's db.rs); these were the
-- columns without a CHECK. The signing rows' kind says which procedure they
-- belong to, like `sign_attempts.kind`; a fault's kind is one a processor
-- reports (a fault of another kind is refused before it is stored).
ALTER TABLE sign_preprocesses ADD CONSTRAINT sign_preprocesses_kind_check CHECK (kind IN ('batch', 'plan'));
ALTER TABLE sign_shares ADD CONSTRAINT sign_shares_kind_check CHECK (kind IN ('batch', 'plan'));
ALTER TABLE sign_blames ADD CONSTRAINT sign_blames_kind_check CHECK (kind IN ('batch', 'plan'));
ALTER TABLE faults ADD CONSTRAINT faults_kind_check
    CHECK (kind IN ('plan-refused', 'sign-id-refused', 'inclusion-refused'));
