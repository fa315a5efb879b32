//! The keystore: the one place secret key material lives.
//!
//! It holds the key-encryption key (KEK, from a file named by config, never
//! in the database, never logged) and the processor's X25519 identity key,
//! and it runs every computation that touches a secret share: the DKG rounds
//! and, later, signing. The rest of the processor handles only sealed blobs
//! (ChaCha20-Poly1305 under the KEK, bound to their purpose) and public data.

pub mod clsag;
pub mod db;
pub mod dkg;
pub mod dleq;
mod held;
mod seal;
pub mod sign;

use std::path::Path;

use sqlx::PgPool;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

pub use seal::Kek;

/// What can go wrong in the keystore.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    /// The KEK file cannot be read or is not 32 hex-encoded bytes.
    #[error("key-encryption key file {path} (config field `keystore.kek_file`): {reason}")]
    KekFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The KEK does not open what this database holds: the wrong KEK file.
    #[error(
        "the key-encryption key does not open this database's sealed keys ({purpose}); \
         is `keystore.kek_file` the file this processor was first started with? Nothing was changed"
    )]
    WrongKek {
        /// The sealed item that would not open.
        purpose: String,
    },
    /// A sealed blob does not open (corrupted, or moved to another row).
    #[error("sealed data for {purpose} does not open: corrupted or not from this row")]
    Corrupt {
        /// The sealed item.
        purpose: String,
    },
    /// Stored key material does not parse.
    #[error("stored key material for {0} is malformed")]
    Malformed(String),
    /// Postgres trouble.
    #[error("database: {0}")]
    Storage(#[from] sqlx::Error),
}

/// The processor's secrets. Cloning shares nothing mutable; `Debug` shows
/// only public data.
#[derive(Clone)]
pub struct Keystore {
    kek: Kek,
    identity: StaticSecret,
    identity_public: PublicKey,
    /// Signing nonces of attempts in flight: memory only, used once.
    nonces: sign::Nonces,
    /// Payout signing machines in flight: memory only, used once.
    plan_machines: clsag::PlanMachines,
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystore")
            .field(
                "identity_public",
                &hex::encode(self.identity_public.as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

const IDENTITY_PURPOSE: &str = "identity/x25519";

impl Keystore {
    /// Opens the keystore: reads the KEK from `kek_file`, then opens the
    /// identity key in the database, creating it on first start. A KEK that
    /// does not open an existing identity is refused before anything is
    /// written.
    pub async fn open(pool: &PgPool, kek_file: &Path) -> Result<Self, KeystoreError> {
        let kek = Kek::from_file(kek_file)?;
        Self::open_with(pool, kek).await
    }

    /// As [`Keystore::open`], with the KEK already read.
    pub async fn open_with(pool: &PgPool, kek: Kek) -> Result<Self, KeystoreError> {
        let identity = match db::identity(pool).await? {
            Some((public, sealed)) => {
                let secret = open_identity(&kek, &public, &sealed)?;
                let bytes: [u8; 32] = secret
                    .as_slice()
                    .try_into()
                    .expect("open_identity checked the secret is 32 bytes");
                StaticSecret::from(bytes)
            }
            None => {
                let identity = StaticSecret::random_from_rng(rand_core::OsRng);
                let public = PublicKey::from(&identity);
                let sealed = kek.seal(IDENTITY_PURPOSE, identity.as_bytes());
                // Another instance cannot race us: the instance lock is held.
                db::insert_identity(pool, public.as_bytes(), &sealed).await?;
                identity
            }
        };
        let identity_public = PublicKey::from(&identity);
        Ok(Self {
            kek,
            identity,
            identity_public,
            nonces: sign::Nonces::default(),
            plan_machines: clsag::PlanMachines::default(),
        })
    }

    /// A keystore with a fresh identity that is never persisted: for
    /// benchmarks and tests that run the DKG without a database.
    pub fn in_memory(kek: Kek) -> Self {
        let identity = StaticSecret::random_from_rng(rand_core::OsRng);
        Self {
            kek,
            identity_public: PublicKey::from(&identity),
            identity,
            nonces: sign::Nonces::default(),
            plan_machines: clsag::PlanMachines::default(),
        }
    }

    /// The X25519 public key others encrypt DKG shares to.
    pub fn identity_public(&self) -> [u8; 32] {
        *self.identity_public.as_bytes()
    }

    /// Drops (and zeroizes) every attempt's nonces and machines of one
    /// signing procedure: it completed, or it is no longer being signed.
    pub fn forget_signing(&self, session: u64, kind: &str, id: &[u8]) -> usize {
        self.nonces
            .with(|h| h.forget(session, kind, id))
            .unwrap_or(0)
            + self
                .plan_machines
                .with(|h| h.forget(session, kind, id))
                .unwrap_or(0)
    }

    /// Drops (and zeroizes) the state of `attempt` and every earlier
    /// attempt of its procedure: the coordinator abandoned it.
    pub fn abandon_attempt(&self, attempt: &sign::AttemptKey) -> usize {
        self.nonces
            .with(|h| h.supersede(attempt, true))
            .unwrap_or(0)
            + self
                .plan_machines
                .with(|h| h.supersede(attempt, true))
                .unwrap_or(0)
    }

    /// How many attempts' nonces (batches) and machines (plans) are held in
    /// memory: for tests and diagnostics.
    pub fn held_signing_state(&self) -> (usize, usize) {
        (
            self.nonces.with(|h| h.len()).unwrap_or(0),
            self.plan_machines.with(|h| h.len()).unwrap_or(0),
        )
    }

    fn seal(&self, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
        self.kek.seal(purpose, plaintext)
    }

    fn open_sealed(
        &self,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        self.kek
            .open(purpose, sealed)
            .map_err(|_| KeystoreError::Corrupt {
                purpose: purpose.to_owned(),
            })
    }
}

// What a share backup (the processor's `backup` module) needs: the sealed secrets opened for
// export and sealed again under another processor's KEK at import. Kept here
// so that the purposes the seals are bound to stay this module's business.

/// Opens the sealed identity secret for a backup, checking it belongs to
/// `public`.
pub fn open_identity(
    kek: &Kek,
    public: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let secret = kek
        .open(IDENTITY_PURPOSE, sealed)
        .map_err(|_| KeystoreError::WrongKek {
            purpose: IDENTITY_PURPOSE.into(),
        })?;
    let bytes: [u8; 32] = secret
        .as_slice()
        .try_into()
        .map_err(|_| KeystoreError::Malformed(IDENTITY_PURPOSE.into()))?;
    let bytes = Zeroizing::new(bytes);
    if PublicKey::from(&StaticSecret::from(*bytes)).as_bytes() != public {
        return Err(KeystoreError::Malformed(IDENTITY_PURPOSE.into()));
    }
    Ok(secret)
}

/// Seals an identity secret under `kek`: (public key, sealed secret).
pub fn seal_identity(kek: &Kek, secret: &[u8; 32]) -> ([u8; 32], Vec<u8>) {
    let public = PublicKey::from(&StaticSecret::from(*secret));
    (*public.as_bytes(), kek.seal(IDENTITY_PURPOSE, secret))
}

/// Opens a session's sealed key package (the serialized frost `KeyPackage`).
pub fn open_key_share(
    kek: &Kek,
    session: u64,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    kek.open(&dkg::key_purpose(session), sealed)
        .map_err(|_| KeystoreError::WrongKek {
            purpose: dkg::key_purpose(session),
        })
}

/// Seals a session's key package under `kek`, bound to its row.
pub fn seal_key_share(kek: &Kek, session: u64, key_package: &[u8]) -> Vec<u8> {
    kek.seal(&dkg::key_purpose(session), key_package)
}
