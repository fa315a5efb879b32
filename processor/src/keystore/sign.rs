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

#[cfg(test)]
mod tests {
    use super::*;

    fn held(store: &Keystore) -> String {
        format!("{:?}", store.nonces)
    }

    #[test]
    fn re_attempts_and_completion_drop_earlier_nonces() {
        let (keys, _) = crate::keystore::dkg::generate_for_tests(2, 3);
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
}
