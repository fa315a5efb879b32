//! FROST Ed25519 signing (batches). Nonces are made here, kept in memory
//! only, and taken out when used: a nonce signs at most once, and an attempt
//! begun before a restart can never be signed (its nonces are gone).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use frost_ed25519::round1::{SigningCommitments, SigningNonces};
use frost_ed25519::{Identifier, SigningPackage};
use rand_core::OsRng;

use super::held::{Held, MAX_HELD_ATTEMPTS};
use super::{Keystore, KeystoreError};

/// Identifies one attempt: (session, kind, id, attempt).
pub type AttemptKey = (u64, String, Vec<u8>, u32);

/// The in-memory nonce store, bounded (see [`super::held`]). `Debug` shows
/// only how many are held.
#[derive(Clone)]
pub struct Nonces(Arc<Mutex<Held<SigningNonces>>>);

impl Default for Nonces {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Held::new("nonces", MAX_HELD_ATTEMPTS))))
    }
}

impl Nonces {
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Held<SigningNonces>) -> R) -> Option<R> {
        self.0.lock().ok().map(|mut held| f(&mut held))
    }
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.with(|m| m.len()).unwrap_or(0);
        write!(f, "Nonces({held} held)")
    }
}

/// Why a share could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A signer's commitments do not parse or are missing.
    #[error("signer {accused}: {reason}")]
    Blame {
        /// The signer at fault.
        accused: u16,
        /// Why.
        reason: String,
    },
    /// Keystore trouble (the key package does not open).
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// frost refused (malformed signing package).
    #[error("signing failed: {0}")]
    Frost(String),
}

fn identifier(index: u16) -> Result<Identifier, SignError> {
    Identifier::try_from(index).map_err(|e| SignError::Frost(format!("index {index}: {e}")))
}

impl Keystore {
    /// Makes fresh nonces for `attempt` and returns the commitments to share.
    /// Calling it again for the same attempt replaces nonces that never left.
    /// Nonces of earlier attempts of the same procedure are dropped (they
    /// are superseded and must never sign).
    pub fn preprocess(
        &self,
        attempt: AttemptKey,
        session: u64,
        sealed_key_package: &[u8],
    ) -> Result<Vec<u8>, SignError> {
        let key = self.open_key_package(session, sealed_key_package)?;
        let (nonces, commitments) = frost_ed25519::round1::commit(key.signing_share(), &mut OsRng);
        let bytes = commitments
            .serialize()
            .map_err(|e| SignError::Frost(e.to_string()))?;
        self.nonces.with(|held| held.insert(attempt, nonces));
        Ok(bytes)
    }

    /// Signs `message` for `attempt` with the nonces made for it, consuming
    /// them. `Ok(None)`: there are none (begun before a restart, or already
    /// used); the caller must not sign and waits for a re-attempt.
    pub fn sign(
        &self,
        attempt: &AttemptKey,
        session: u64,
        sealed_key_package: &[u8],
        commitments: &BTreeMap<u16, Vec<u8>>,
        message: &[u8],
    ) -> Result<Option<Vec<u8>>, SignError> {
        let Some(nonces) = self.nonces.with(|m| m.take(attempt)).flatten() else {
            return Ok(None);
        };
        let key = self.open_key_package(session, sealed_key_package)?;
        let package = signing_package(commitments, message)?;
        let share = frost_ed25519::round2::sign(&package, &nonces, &key)
            .map_err(|e| SignError::Frost(e.to_string()))?;
        Ok(Some(share.serialize()))
    }
}

/// The signing package the signers' commitments and the message make.
pub fn signing_package(
    commitments: &BTreeMap<u16, Vec<u8>>,
    message: &[u8],
) -> Result<SigningPackage, SignError> {
    let mut parsed = BTreeMap::new();
    for (&index, bytes) in commitments {
        let c = SigningCommitments::deserialize(bytes).map_err(|e| SignError::Blame {
            accused: index,
            reason: format!("its commitments do not parse: {e}"),
        })?;
        parsed.insert(identifier(index)?, c);
    }
    Ok(SigningPackage::new(parsed, message))
}

/// Aggregates the signers' shares into an Ed25519 signature, blaming a
/// signer whose share does not verify. Public data only.
pub fn aggregate(
    public_key_package: &[u8],
    commitments: &BTreeMap<u16, Vec<u8>>,
    shares: &BTreeMap<u16, Vec<u8>>,
    message: &[u8],
) -> Result<[u8; 64], SignError> {
    let public = frost_ed25519::keys::PublicKeyPackage::deserialize(public_key_package)
        .map_err(|e| SignError::Frost(format!("public key package: {e}")))?;
    let package = signing_package(commitments, message)?;
    let mut parsed = BTreeMap::new();
    for (&index, bytes) in shares {
        let share = frost_ed25519::round2::SignatureShare::deserialize(bytes).map_err(|e| {
            SignError::Blame {
                accused: index,
                reason: format!("its signature share does not parse: {e}"),
            }
        })?;
        parsed.insert(identifier(index)?, share);
    }
    let signature = frost_ed25519::aggregate(&package, &parsed, &public).map_err(|e| {
        match e.culprits().first().and_then(|c| {
            commitments
                .keys()
                .copied()
                .find(|&i| identifier(i).ok().as_ref() == Some(c))
        }) {
            Some(accused) => SignError::Blame {
                accused,
                reason: format!("its signature share is invalid: {e}"),
            },
            None => SignError::Frost(e.to_string()),
        }
    })?;
    signature
        .serialize()
        .map_err(|e| SignError::Frost(e.to_string()))?
        .try_into()
        .map_err(|_| SignError::Frost("signature is not 64 bytes".into()))
}

/// The group's public key package (group key and every participant's
/// verifying share) as anyone can compute it from the DKG's public round-1
/// packages (index -> serialized `round1::Package`).
pub fn public_key_package_from_round1(
    round1_packages: &BTreeMap<u16, Vec<u8>>,
) -> Result<frost_ed25519::keys::PublicKeyPackage, SignError> {
    let mut parsed = BTreeMap::new();
    for (&index, bytes) in round1_packages {
        let package = frost_ed25519::keys::dkg::round1::Package::deserialize(bytes)
            .map_err(|e| SignError::Frost(format!("round-1 package of {index}: {e}")))?;
        parsed.insert(identifier(index)?, package);
    }
    let commitments = parsed
        .iter()
        .map(|(id, package)| (*id, package.commitment()))
        .collect();
    frost_ed25519::keys::PublicKeyPackage::from_dkg_commitments(&commitments)
        .map_err(|e| SignError::Frost(format!("public key package: {e}")))
}

/// Whether signer `accused` of a FROST Ed25519 attempt is at fault, decided
/// from public data only: the key's public key package, the chosen signers'
/// commitments and shares as the coordinator relayed them, and the message.
/// `Ok(true)`: its commitments or its share do not parse, or its share does
/// not verify (frost's share verification against its verifying share).
/// `Ok(false)`: its part is valid; an accusation of it is false.
pub fn signer_at_fault(
    public: &frost_ed25519::keys::PublicKeyPackage,
    commitments: &BTreeMap<u16, Vec<u8>>,
    shares: &BTreeMap<u16, Vec<u8>>,
    accused: u16,
    message: &[u8],
) -> Result<bool, SignError> {
    let Some(own_commitments) = commitments.get(&accused) else {
        return Err(SignError::Frost(format!(
            "{accused} is not a chosen signer"
        )));
    };
    if SigningCommitments::deserialize(own_commitments).is_err() {
        return Ok(true);
    }
    let package = match signing_package(commitments, message) {
        Ok(package) => package,
        // Another signer's commitments are bad: not the accused's fault.
        Err(SignError::Blame { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    let Some(share) = shares.get(&accused) else {
        // No share of it was relayed: a share cannot be at fault.
        return Ok(false);
    };
    let Ok(share) = frost_ed25519::round2::SignatureShare::deserialize(share) else {
        return Ok(true);
    };
    let id = identifier(accused)?;
    let verifying_share = public
        .verifying_shares()
        .get(&id)
        .ok_or_else(|| SignError::Frost(format!("no verifying share for {accused}")))?;
    match frost_core::verify_signature_share(
        id,
        verifying_share,
        &share,
        &package,
        public.verifying_key(),
    ) {
        Ok(()) => Ok(false),
        Err(frost_core::Error::InvalidSignatureShare { .. }) => Ok(true),
        Err(e) => Err(SignError::Frost(format!("verifying the share: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(store: &Keystore) -> String {
        format!("{:?}", store.nonces)
    }

    #[test]
    fn re_attempts_and_completion_drop_earlier_nonces() {
        let (keys, _) = crate::dkg::generate_for_tests(2, 3);
        let (store, key) = &keys[0];
        let batch = |attempt| {
            (
                7,
                "batch".to_owned(),
                42_u64.to_be_bytes().to_vec(),
                attempt,
            )
        };
        for attempt in 0..3 {
            store
                .preprocess(batch(attempt), 7, &key.sealed_key_package)
                .expect("preprocess");
        }
        let other = (7, "batch".to_owned(), 43_u64.to_be_bytes().to_vec(), 0);
        store
            .preprocess(other, 7, &key.sealed_key_package)
            .expect("preprocess");
        assert_eq!(
            held(store),
            "Nonces(2 held)",
            "superseded attempts' nonces must be dropped"
        );
        // A superseded attempt can never sign.
        let none = store
            .sign(
                &batch(1),
                7,
                &key.sealed_key_package,
                &BTreeMap::new(),
                b"m",
            )
            .expect("no error");
        assert!(none.is_none());
        assert_eq!(store.forget_signing(7, "batch", &42_u64.to_be_bytes()), 1);
        assert_eq!(store.held_signing_state(), (1, 0));
    }

    #[test]
    fn a_share_is_judged_from_public_data_only() {
        let (keys, round1) = crate::dkg::generate_for_tests(2, 3);
        let public = public_key_package_from_round1(&round1).expect("public key package");
        let stored =
            frost_ed25519::keys::PublicKeyPackage::deserialize(&keys[0].1.public_key_package)
                .expect("stored package");
        assert_eq!(public.verifying_key(), stored.verifying_key());
        assert_eq!(public.verifying_shares(), stored.verifying_shares());

        let message = b"a batch";
        let mut commitments = BTreeMap::new();
        for (i, (store, key)) in keys.iter().enumerate().take(2) {
            let index = u16::try_from(i + 1).expect("small");
            let attempt = (7, "batch".to_owned(), vec![1], 0);
            commitments.insert(
                index,
                store
                    .preprocess(attempt, 7, &key.sealed_key_package)
                    .expect("preprocess"),
            );
        }
        let mut shares = BTreeMap::new();
        for (i, (store, key)) in keys.iter().enumerate().take(2) {
            let index = u16::try_from(i + 1).expect("small");
            let attempt = (7, "batch".to_owned(), vec![1], 0);
            let share = store
                .sign(&attempt, 7, &key.sealed_key_package, &commitments, message)
                .expect("sign")
                .expect("nonces held");
            shares.insert(index, share);
        }
        for accused in [1, 2] {
            assert!(
                !signer_at_fault(&public, &commitments, &shares, accused, message).expect("check"),
                "an honest share is not at fault"
            );
        }
        assert!(
            signer_at_fault(&public, &commitments, &shares, 1, b"another message").expect("check"),
            "a share for another message does not verify"
        );
        let mut corrupt = shares.clone();
        let bytes = corrupt.get_mut(&2).expect("share of 2");
        bytes[0] ^= 1;
        assert!(signer_at_fault(&public, &commitments, &corrupt, 2, message).expect("check"));
        assert!(
            !signer_at_fault(&public, &commitments, &corrupt, 1, message).expect("check"),
            "only the corrupted share is at fault"
        );
        let mut bad = commitments.clone();
        bad.insert(2, vec![0; 3]);
        assert!(signer_at_fault(&public, &bad, &shares, 2, message).expect("check"));
    }
}
