//! FROST-CLSAG signing of payout transactions through monero-wallet's
//! multisig machines. As with batches, the machines (which hold the nonces)
//! live only in memory and are taken out when used: a preprocess is never
//! answered twice, and an attempt begun before a restart can never be signed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use modular_frost::sign::{PreprocessMachine as _, SignMachine as _, SignatureMachine as _};
use modular_frost::{FrostError, Participant};
use monero_wallet::send::{
    SignableTransaction, TransactionSignMachine, TransactionSignatureMachine,
};
use monero_wallet::transaction::Transaction;
use rand_core::OsRng;

use super::Keystore;
use super::dkg::threshold_keys;
use super::held::{Held, MAX_HELD_ATTEMPTS};
use super::sign::{AttemptKey, SignError};

/// Where one attempt's machine stands.
pub(crate) enum Stage {
    /// Preprocess sent; waiting for the chosen signers' preprocesses.
    Preprocessed(Box<TransactionSignMachine>),
    /// Share sent; waiting for the other shares to complete the transaction.
    Shared(Box<TransactionSignatureMachine>),
}

/// The in-memory CLSAG machines, bounded (see [`super::held`]). `Debug`
/// shows only how many are held.
#[derive(Clone)]
pub struct PlanMachines(Arc<Mutex<Held<Stage>>>);

impl Default for PlanMachines {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Held::new(
            "plan machines",
            MAX_HELD_ATTEMPTS,
        ))))
    }
}

impl std::fmt::Debug for PlanMachines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.with(|m| m.len()).unwrap_or(0);
        write!(f, "PlanMachines({held} held)")
    }
}

impl PlanMachines {
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Held<Stage>) -> R) -> Option<R> {
        self.0.lock().ok().map(|mut held| f(&mut held))
    }

    fn put(&self, attempt: AttemptKey, stage: Stage) {
        self.with(|held| held.insert(attempt, stage));
    }

    fn take(&self, attempt: &AttemptKey) -> Option<Stage> {
        self.with(|m| m.take(attempt)).flatten()
    }
}

/// The public parts of a key a signer needs besides its sealed share.
#[derive(Debug, Clone, Copy)]
pub struct KeyShape {
    /// Signers needed.
    pub threshold: u16,
    /// Participants.
    pub n: u16,
    /// Our index.
    pub own_index: u16,
}

fn participant(index: u16) -> Result<Participant, SignError> {
    Participant::new(index).ok_or_else(|| SignError::Frost(format!("participant index {index}")))
}

fn blame_of(e: FrostError) -> SignError {
    match e {
        FrostError::InvalidPreprocess(p) => SignError::Blame {
            accused: u16::from(p),
            reason: "its CLSAG preprocess is invalid".into(),
        },
        FrostError::InvalidShare(p) => SignError::Blame {
            accused: u16::from(p),
            reason: "its CLSAG signature share is invalid".into(),
        },
        other => SignError::Frost(other.to_string()),
    }
}

impl Keystore {
    /// Starts signing `signable` for `attempt`: builds the multisig machine
    /// from the session's key and returns this signer's preprocess.
    pub fn plan_preprocess(
        &self,
        attempt: AttemptKey,
        session: u64,
        shape: KeyShape,
        sealed_key_package: &[u8],
        public_key_package: &[u8],
        signable: SignableTransaction,
    ) -> Result<Vec<u8>, SignError> {
        let key = self.open_key_package(session, sealed_key_package)?;
        let public = frost_ed25519::keys::PublicKeyPackage::deserialize(public_key_package)
            .map_err(|e| SignError::Frost(format!("public key package: {e}")))?;
        let keys = threshold_keys(shape.threshold, shape.n, shape.own_index, &key, &public)
            .map_err(|e| SignError::Frost(e.to_string()))?;
        let machine = signable
            .multisig(keys)
            .map_err(|e| SignError::Frost(format!("the plan does not fit this key: {e}")))?;
        let (machine, preprocess) = machine.preprocess(&mut OsRng);
        let mut bytes = Vec::new();
        modular_frost::sign::Writable::write(&preprocess, &mut bytes)
            .map_err(|e| SignError::Frost(e.to_string()))?;
        self.plan_machines
            .put(attempt, Stage::Preprocessed(Box::new(machine)));
        Ok(bytes)
    }

    /// Answers the chosen signers' preprocesses with this signer's share.
    /// `Ok(None)`: no machine for this attempt (begun before a restart, or
    /// already answered); the caller must not sign.
    pub fn plan_sign(
        &self,
        attempt: &AttemptKey,
        own_index: u16,
        preprocesses: &BTreeMap<u16, Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, SignError> {
        let Some(Stage::Preprocessed(machine)) = self.plan_machines.take(attempt) else {
            return Ok(None);
        };
        let mut parsed = HashMap::new();
        for (&index, bytes) in preprocesses {
            if index == own_index {
                continue;
            }
            let preprocess = machine
                .read_preprocess(&mut bytes.as_slice())
                .map_err(|e| SignError::Blame {
                    accused: index,
                    reason: format!("its CLSAG preprocess does not parse: {e}"),
                })?;
            parsed.insert(participant(index)?, preprocess);
        }
        let (machine, share) = machine.sign(parsed, &[]).map_err(blame_of)?;
        let mut bytes = Vec::new();
        modular_frost::sign::Writable::write(&share, &mut bytes)
            .map_err(|e| SignError::Frost(e.to_string()))?;
        self.plan_machines
            .put(attempt.clone(), Stage::Shared(Box::new(machine)));
        Ok(Some(bytes))
    }

    /// Completes the transaction from the other signers' shares, blaming a
    /// signer whose share is invalid. `Ok(None)`: no machine (this signer
    /// restarted since sharing; another signer completes).
    pub fn plan_complete(
        &self,
        attempt: &AttemptKey,
        own_index: u16,
        shares: &BTreeMap<u16, Vec<u8>>,
    ) -> Result<Option<Transaction>, SignError> {
        let Some(Stage::Shared(machine)) = self.plan_machines.take(attempt) else {
            return Ok(None);
        };
        let mut parsed = HashMap::new();
        for (&index, bytes) in shares {
            if index == own_index {
                continue;
            }
            let share =
                machine
                    .read_share(&mut bytes.as_slice())
                    .map_err(|e| SignError::Blame {
                        accused: index,
                        reason: format!("its CLSAG share does not parse: {e}"),
                    })?;
            parsed.insert(participant(index)?, share);
        }
        machine.complete(parsed).map(Some).map_err(blame_of)
    }
}
