//! Share backup and restore: `processor keys export` / `processor keys import`.
//!
//! A backup holds what a processor cannot get back from `monerod`: its
//! identity key, its finished keys (share, public key package, t, n, index,
//! the parameters fixed with the key and its activation height), the
//! accounts and settlement blocks its coordinator sent, and where its link to
//! the coordinator stands. Everything the chain gives back (blocks, outputs,
//! batches) is rebuilt by rescanning from the key's activation height.
//!
//! The file is sealed under a passphrase: Argon2id (memory-hard, its
//! parameters in the header so a later default change still opens old files)
//! derives a one-file key, XChaCha20-Poly1305 encrypts the contents, and the
//! whole header is the AEAD's associated data, so changing any header byte
//! (say, weakening the KDF parameters) makes the file refuse to open.
//!
//! ```text
//! offset size  field
//!  0      8    magic "MXCKEYS\0"
//!  8      2    format version, little-endian (1)
//! 10      1    KDF id (1 = Argon2id v0x13)
//! 11      4    Argon2 memory, KiB, LE
//! 15      4    Argon2 iterations, LE
//! 19      4    Argon2 lanes, LE
//! 23     16    salt
//! 39     24    XChaCha20-Poly1305 nonce
//! 63      8    ciphertext length in bytes (with the 16-byte tag), LE
//! 71      …    ciphertext: the contents (JSON) sealed
//! ```

pub mod db;

use std::io::Write as _;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keystore::{self, Kek, KeystoreError};

/// The file's first bytes.
pub const MAGIC: [u8; 8] = *b"MXCKEYS\0";
/// The format this code writes (and the only one it reads).
pub const FORMAT_VERSION: u16 = 1;
/// KDF id of Argon2id, version 0x13.
const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Length of the header.
pub const HEADER_LEN: usize = 8 + 2 + 1 + 4 + 4 + 4 + SALT_LEN + NONCE_LEN + 8;
/// Largest file read: a backup of thousands of keys is far below it; the
/// bound keeps a wrong `--in` (a disk image, say) from being read whole.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Shortest passphrase accepted for a new backup: the file may sit on
/// removable media for years, and Argon2 only slows guessing down.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub lanes: u32,
}

impl KdfParams {
    /// What new backups use: 256 MiB, 3 passes, 1 lane (about a second on
    /// a server core): far above RFC 9106's 64 MiB floor, as a backup is
    /// opened rarely and guessed at offline.
    pub const DEFAULT: Self = Self {
        memory_kib: 256 * 1024,
        iterations: 3,
        lanes: 1,
    };
    /// Most memory a file may ask for when opened (4 GiB): a header is
    /// authenticated only after the key is derived, so a tampered header
    /// must not be able to make the importer allocate without bound.
    const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    const MAX_ITERATIONS: u32 = 64;
    const MAX_LANES: u32 = 16;

    fn argon2(self) -> Result<Argon2<'static>, BackupError> {
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.iterations > Self::MAX_ITERATIONS
            || self.lanes > Self::MAX_LANES
        {
            return Err(BackupError::Kdf(format!(
                "parameters {self:?} are beyond what this processor accepts \
                 (at most {} KiB, {} iterations, {} lanes): the header is damaged",
                Self::MAX_MEMORY_KIB,
                Self::MAX_ITERATIONS,
                Self::MAX_LANES
            )));
        }
        let params = Params::new(self.memory_kib, self.iterations, self.lanes, Some(32))
            .map_err(|e| BackupError::Kdf(format!("parameters {self:?}: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// What can go wrong with a backup. The messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Not a backup file at all.
    #[error("{0} is not a processor key backup (it does not start with the backup magic)")]
    NotABackup(String),
    /// A format this build does not read.
    #[error(
        "the backup is format version {0}; this processor reads version {FORMAT_VERSION}: \
         import it with the processor version that wrote it"
    )]
    UnsupportedVersion(u16),
    /// An unknown KDF id.
    #[error("the backup names key-derivation function {0}, which this processor does not know")]
    UnsupportedKdf(u8),
    /// Bad KDF parameters.
    #[error("key derivation: {0}")]
    Kdf(String),
    /// Shorter than its header says.
    #[error(
        "the backup is truncated: it should be {expected} bytes, it is {found}; \
         copy the whole file again"
    )]
    Truncated {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// Longer than its header says.
    #[error("the backup has {0} bytes after its end: it is not the file `keys export` wrote")]
    TrailingBytes(u64),
    /// The AEAD refused: wrong passphrase, or the file was altered.
    #[error(
        "the passphrase does not open this backup, or the file was altered; nothing was written"
    )]
    WrongPassphrase,
    /// Opened, but its contents do not make sense.
    #[error("the backup's contents are malformed: {0}")]
    Malformed(String),
    /// A passphrase problem (missing, too short, mismatched).
    #[error("passphrase: {0}")]
    Passphrase(String),
    /// Export refuses to overwrite.
    #[error("{0} already exists; export never overwrites a file: choose another --out")]
    Exists(String),
    /// The database already holds state; import needs an empty one.
    #[error(
        "the database already holds {0}; import restores into an empty database only. \
         Create a new, empty database, point `database_url` at it, and run the import again \
         (do not start the processor on it first)"
    )]
    NotEmpty(String),
    /// Nothing to export.
    #[error("{0}")]
    Nothing(String),
    /// The backup belongs to another processor.
    #[error(
        "the backup was exported by processor {backup:?}, but this configuration's node_id is \
         {config:?}: restore each processor's backup into its own configuration"
    )]
    WrongNode {
        /// Node id in the backup.
        backup: String,
        /// Node id in the config.
        config: String,
    },
    /// File trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Keystore trouble (e.g. the KEK does not open this database).
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// Postgres trouble.
    #[error("database: {0}")]
    Storage(#[from] sqlx::Error),
    /// Connecting, locking or migrating.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

// --- The sealed file ---------------------------------------------------------

fn derive_key(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    let mut key = Zeroizing::new([0_u8; 32]);
    params
        .argon2()?
        .hash_password_into(passphrase, salt, key.as_mut_slice())
        .map_err(|e| BackupError::Kdf(e.to_string()))?;
    Ok(key)
}

fn header(params: KdfParams, salt: &[u8; SALT_LEN], nonce: &[u8; NONCE_LEN], len: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.push(KDF_ARGON2ID);
    h.extend_from_slice(&params.memory_kib.to_le_bytes());
    h.extend_from_slice(&params.iterations.to_le_bytes());
    h.extend_from_slice(&params.lanes.to_le_bytes());
    h.extend_from_slice(salt);
    h.extend_from_slice(nonce);
    h.extend_from_slice(&len.to_le_bytes());
    h
}

/// Seals `plaintext` under `passphrase` into the file format.
pub fn seal(
    plaintext: &[u8],
    passphrase: &[u8],
    params: KdfParams,
) -> Result<Vec<u8>, BackupError> {
    let mut salt = [0_u8; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    let mut nonce = [0_u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let key = derive_key(passphrase, &salt, params)?;
    let len = u64::try_from(plaintext.len() + TAG_LEN).unwrap_or(u64::MAX);
    let head = header(params, &salt, &nonce, len);
    let cipher = XChaCha20Poly1305::new(key.as_ref().into());
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &head,
            },
        )
        .map_err(|_| BackupError::Kdf("encryption failed".into()))?;
    Ok([head, ciphertext].concat())
}

/// A parsed, not yet opened, backup file.
#[derive(Debug)]
pub struct Sealed<'a> {
    /// The KDF parameters the file asks for.
    pub params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    header: &'a [u8],
    ciphertext: &'a [u8],
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0_u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

/// Checks the file's shape (magic, version, KDF, length) before anyone is
/// asked for a passphrase.
pub fn parse<'a>(bytes: &'a [u8], name: &str) -> Result<Sealed<'a>, BackupError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(BackupError::NotABackup(name.to_owned()));
    }
    let found = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if bytes.len() < HEADER_LEN {
        return Err(BackupError::Truncated {
            expected: u64::try_from(HEADER_LEN).unwrap_or(u64::MAX),
            found,
        });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(BackupError::UnsupportedVersion(version));
    }
    if bytes[10] != KDF_ARGON2ID {
        return Err(BackupError::UnsupportedKdf(bytes[10]));
    }
    let params = KdfParams {
        memory_kib: le_u32(bytes, 11),
        iterations: le_u32(bytes, 15),
        lanes: le_u32(bytes, 19),
    };
    let mut salt = [0_u8; SALT_LEN];
    salt.copy_from_slice(&bytes[23..23 + SALT_LEN]);
    let mut nonce = [0_u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[39..39 + NONCE_LEN]);
    let mut len = [0_u8; 8];
    len.copy_from_slice(&bytes[63..71]);
    let len = u64::from_le_bytes(len);
    let body = u64::try_from(bytes.len() - HEADER_LEN).unwrap_or(u64::MAX);
    let expected = u64::try_from(HEADER_LEN)
        .unwrap_or(u64::MAX)
        .saturating_add(len);
    if body < len {
        return Err(BackupError::Truncated { expected, found });
    }
    if body > len {
        return Err(BackupError::TrailingBytes(body - len));
    }
    if len < u64::try_from(TAG_LEN).unwrap_or(u64::MAX) {
        return Err(BackupError::Malformed(
            "ciphertext shorter than its tag".into(),
        ));
    }
    Ok(Sealed {
        params,
        salt,
        nonce,
        header: &bytes[..HEADER_LEN],
        ciphertext: &bytes[HEADER_LEN..],
    })
}

impl Sealed<'_> {
    /// Derives the key from `passphrase` and opens the contents.
    pub fn open(&self, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, BackupError> {
        let key = derive_key(passphrase, &self.salt, self.params)?;
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        cipher
            .decrypt(
                &XNonce::from(self.nonce),
                Payload {
                    msg: self.ciphertext,
                    aad: self.header,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| BackupError::WrongPassphrase)
    }
}

// --- The contents --------------------------------------------------------------

/// Hex in JSON for public bytes.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(text.as_ref()).map_err(serde::de::Error::custom)
    }
}

/// Hex in JSON for lists of public byte strings.
mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| hex::decode(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// Hex in JSON for secrets: the text forms are zeroized too. (The JSON
/// buffer itself is a `Zeroizing` vector.)
mod secret_hex {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(bytes: &Zeroizing<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(hex::encode(bytes.as_slice()));
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        // Borrowed from the (zeroized) plaintext: hex has no escapes, so
        // serde_json hands out a slice and makes no copy.
        let text = <&'de str>::deserialize(d)?;
        let mut out = Zeroizing::new(vec![0_u8; text.len() / 2]);
        hex::decode_to_slice(text, out.as_mut_slice()).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// Where a key's life is: only finished keys are backed up (a DKG that is
/// still running cannot be resumed from a file; it is re-run instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Generated, waiting for the coordinator's confirmation.
    Generated,
    /// Confirmed: scanned and signed with.
    Confirmed,
}

impl KeyStatus {
    /// The `keys.status` text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generated => "generated",
            Self::Confirmed => "confirmed",
        }
    }

    fn from_db(status: &str) -> Option<Self> {
        match status {
            "generated" => Some(Self::Generated),
            "confirmed" => Some(Self::Confirmed),
            _ => None,
        }
    }
}

/// The identity key pair. `Debug` shows the public half only.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRecord {
    /// X25519 public key.
    #[serde(with = "hex_bytes")]
    pub public: Vec<u8>,
    /// X25519 secret.
    #[serde(with = "secret_hex")]
    pub secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for IdentityRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityRecord")
            .field("public", &hex::encode(&self.public))
            .finish_non_exhaustive()
    }
}

/// One finished key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Session.
    pub session: u64,
    /// DKG attempt that produced it.
    pub attempt: u32,
    /// t.
    pub threshold: u16,
    /// This processor's index.
    pub own_index: u16,
    /// Identity keys of participants 1..n.
    #[serde(with = "hex_list")]
    pub participant_keys: Vec<Vec<u8>>,
    /// Generated or confirmed.
    pub status: KeyStatus,
    /// Everyone's round-1 packages (public), if still stored.
    pub round1_packages: Option<Vec<String>>,
    /// The share: a serialized frost `KeyPackage`.
    #[serde(with = "secret_hex")]
    pub key_package: Zeroizing<Vec<u8>>,
    /// The public key package.
    #[serde(with = "hex_bytes")]
    pub public_key_package: Vec<u8>,
    /// The group key.
    #[serde(with = "hex_bytes")]
    pub group_key: Vec<u8>,
    /// The group's address.
    pub monero_address: String,
    /// Finality depth fixed with the key.
    pub confirmations: Option<u64>,
    /// Window length fixed with the key.
    pub window_blocks: Option<u64>,
    /// First Monero block scanned for it (confirmed keys).
    pub activation_height: Option<u64>,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("session", &self.session)
            .field("threshold", &self.threshold)
            .field("own_index", &self.own_index)
            .field("status", &self.status)
            .field("group_key", &hex::encode(&self.group_key))
            .finish_non_exhaustive()
    }
}

/// An account registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountRecord {
    /// Account number.
    pub account: u32,
    /// First Monero block credited to it.
    pub active_from: u64,
    /// Settlement block that registered it.
    pub settlement_block: Option<u64>,
}

/// A settlement block, without burns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementRecord {
    /// Block number.
    pub number: u64,
    /// Batches it included.
    pub included_batch_ids: Vec<u64>,
    /// Monero horizon.
    pub monero_horizon: u64,
}

/// A send-log row the coordinator had not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingRecord {
    /// Link sequence number.
    pub id: u64,
    /// Idempotency key.
    pub uid: String,
    /// Kind.
    pub kind: String,
    /// Encoded message.
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
}

/// A link's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRecord {
    /// The peer.
    pub link_id: String,
    /// Highest inbound id handled.
    pub last_handled_in: u64,
    /// Highest outbound id assigned.
    pub last_enqueued_out: u64,
    /// Highest outbound id acknowledged.
    pub acked_out: u64,
    /// Unacknowledged outbound rows.
    pub unacked: Vec<PendingRecord>,
}

/// Everything a backup holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    /// The exporting processor's `node_id`.
    pub node_id: String,
    /// When it was written, Unix ms (shown at import).
    pub exported_unix_ms: u64,
    /// The identity key pair.
    pub identity: IdentityRecord,
    /// Finished keys.
    pub keys: Vec<KeyRecord>,
    /// Registered accounts.
    pub accounts: Vec<AccountRecord>,
    /// Settlement blocks taken in.
    pub settlement_blocks: Vec<SettlementRecord>,
    /// Link positions.
    pub links: Vec<LinkRecord>,
    /// Keys of the group this processor holds no share of (a successor its
    /// keys forward to). Absent in backups written before key rotation.
    #[serde(default)]
    pub foreign_keys: Vec<ForeignKeyRecord>,
}

/// A key this processor knows but holds no share of.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForeignKeyRecord {
    /// Session.
    pub session: u64,
    /// Group key, hex.
    pub group_key: String,
    /// Its activation height.
    pub activation_height: u64,
}

impl std::fmt::Debug for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contents")
            .field("node_id", &self.node_id)
            .field("identity_public", &hex::encode(&self.identity.public))
            .field("keys", &self.keys)
            .field("accounts", &self.accounts.len())
            .field("settlement_blocks", &self.settlement_blocks.len())
            .finish_non_exhaustive()
    }
}

impl Contents {
    /// The JSON form, in a buffer that is zeroized on drop. The buffer is
    /// sized up front so that growing it leaves no copies behind.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, BackupError> {
        let estimate = 4096
            + self
                .keys
                .iter()
                .map(|k| 4 * k.public_key_package.len() + 4096)
                .sum::<usize>()
            + 64 * (self.accounts.len() + self.settlement_blocks.len())
            + self
                .links
                .iter()
                .map(|l| {
                    l.unacked
                        .iter()
                        .map(|r| 2 * r.payload.len() + 256)
                        .sum::<usize>()
                })
                .sum::<usize>();
        let mut out = Zeroizing::new(Vec::with_capacity(estimate));
        serde_json::to_writer(&mut *out, self)
            .map_err(|e| BackupError::Malformed(format!("encoding: {e}")))?;
        Ok(out)
    }

    /// Parses and checks the contents: every key's share must be a key
    /// package for its group key and index, the identity's halves must
    /// match.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BackupError> {
        let contents: Self =
            serde_json::from_slice(bytes).map_err(|e| BackupError::Malformed(e.to_string()))?;
        contents.check()?;
        Ok(contents)
    }

    fn check(&self) -> Result<(), BackupError> {
        let secret: [u8; 32] = self
            .identity
            .secret
            .as_slice()
            .try_into()
            .map_err(|_| BackupError::Malformed("identity secret is not 32 bytes".into()))?;
        let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret));
        if public.as_bytes().as_slice() != self.identity.public.as_slice() {
            return Err(BackupError::Malformed(
                "identity public key does not belong to its secret".into(),
            ));
        }
        for key in &self.keys {
            check_key(key)?;
        }
        Ok(())
    }
}

fn check_key(key: &KeyRecord) -> Result<(), BackupError> {
    let bad = |what: &str| BackupError::Malformed(format!("key {}: {what}", key.session));
    let package = frost_ed25519::keys::KeyPackage::deserialize(&key.key_package)
        .map_err(|_| bad("the share is not a key package"))?;
    let group = package
        .verifying_key()
        .serialize()
        .map_err(|_| bad("the share's group key does not serialize"))?;
    if group != key.group_key {
        return Err(bad("the share belongs to another group key"));
    }
    let identifier = frost_ed25519::Identifier::try_from(key.own_index)
        .map_err(|_| bad("own index is not a participant index"))?;
    if *package.identifier() != identifier {
        return Err(bad("the share is not this processor's index"));
    }
    let public = frost_ed25519::keys::PublicKeyPackage::deserialize(&key.public_key_package)
        .map_err(|_| bad("the public key package does not parse"))?;
    if public.verifying_key() != package.verifying_key() {
        return Err(bad("the public key package is for another group key"));
    }
    let n = key.participant_keys.len();
    if key.own_index == 0 || usize::from(key.own_index) > n {
        return Err(bad("own index is outside 1..=n"));
    }
    if key.threshold < 2 || usize::from(key.threshold) > n {
        return Err(bad("threshold is outside 2..=n"));
    }
    if key.status == KeyStatus::Confirmed && key.activation_height.is_none() {
        return Err(bad("a confirmed key without an activation height"));
    }
    Ok(())
}

// --- Export --------------------------------------------------------------------

/// What an export wrote, for the operator.
#[derive(Debug)]
pub struct ExportSummary {
    /// Keys written: (session, status, activation height).
    pub keys: Vec<(u64, KeyStatus, Option<u64>)>,
    /// Keys not written (a DKG still running, or failed): (session, status).
    pub skipped: Vec<(u64, String)>,
    /// Accounts written.
    pub accounts: usize,
}

/// Reads everything a backup holds from the database, opening the sealed
/// secrets with `kek`. One `REPEATABLE READ` snapshot, so a running
/// processor can be backed up and the parts agree with each other.
pub async fn collect(
    pool: &sqlx::PgPool,
    kek: &Kek,
    node_id: &str,
) -> Result<(Contents, ExportSummary), BackupError> {
    let mut tx = pool.begin().await?;
    db::snapshot(&mut tx).await?;
    let Some((public, sealed)) = db::identity(&mut tx).await? else {
        return Err(BackupError::Nothing(
            "this database has no identity key: the processor was never started on it, \
             so there is nothing to back up"
                .into(),
        ));
    };
    let stored = db::keys(&mut tx).await?;
    let accounts = db::accounts(&mut tx).await?;
    let blocks = db::settlement_blocks(&mut tx).await?;
    let links = link::db::positions(&mut tx).await?;
    let foreign = crate::lifecycle::db::foreign_keys(&mut *tx).await?;
    tx.commit().await?;

    let secret = keystore::open_identity(kek, &public, &sealed)?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for k in stored {
        let (Some(status), Some(sealed), Some(public_key_package), Some(group_key), Some(address)) = (
            KeyStatus::from_db(&k.status),
            k.sealed_key_package,
            k.public_key_package,
            k.group_key,
            k.monero_address,
        ) else {
            skipped.push((k.session, k.status));
            continue;
        };
        let key_package = keystore::open_key_share(kek, k.session, &sealed)?;
        keys.push(KeyRecord {
            session: k.session,
            attempt: k.attempt,
            threshold: k.threshold,
            own_index: k.own_index,
            participant_keys: k.participant_keys,
            status,
            round1_packages: k
                .round1_packages
                .map(|list| list.iter().map(hex::encode).collect()),
            key_package,
            public_key_package,
            group_key,
            monero_address: address,
            confirmations: k.confirmations,
            window_blocks: k.window_blocks,
            activation_height: k.activation_height,
        });
    }
    let contents = Contents {
        node_id: node_id.to_owned(),
        exported_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        identity: IdentityRecord { public, secret },
        keys,
        foreign_keys: foreign
            .into_iter()
            .map(|(session, group_key, activation_height)| ForeignKeyRecord {
                session,
                group_key: hex::encode(group_key),
                activation_height,
            })
            .collect(),
        accounts: accounts
            .iter()
            .map(|a| AccountRecord {
                account: a.account,
                active_from: a.active_from,
                settlement_block: a.settlement_block,
            })
            .collect(),
        settlement_blocks: blocks
            .into_iter()
            .map(|b| SettlementRecord {
                number: b.number,
                included_batch_ids: b.included_batch_ids,
                monero_horizon: b.monero_horizon,
            })
            .collect(),
        links: links
            .into_iter()
            .map(|l| LinkRecord {
                link_id: l.link_id,
                last_handled_in: l.counters.last_handled_in,
                last_enqueued_out: l.counters.last_enqueued_out,
                acked_out: l.counters.acked_out,
                unacked: l
                    .unacked
                    .into_iter()
                    .map(|r| PendingRecord {
                        id: r.id,
                        uid: r.uid,
                        kind: r.kind,
                        payload: r.payload,
                    })
                    .collect(),
            })
            .collect(),
    };
    contents.check()?;
    let summary = ExportSummary {
        keys: contents
            .keys
            .iter()
            .map(|k| (k.session, k.status, k.activation_height))
            .collect(),
        skipped,
        accounts: contents.accounts.len(),
    };
    Ok((contents, summary))
}

/// Writes `bytes` to a new file at `path`, readable by its owner only;
/// refuses an existing file (also one created between check and write).
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BackupError::Exists(path.display().to_string())
            } else {
                io(e)
            }
        })?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        // A half-written backup must not be mistaken for a good one.
        let _ = std::fs::remove_file(path);
        return Err(io(e));
    }
    Ok(())
}

/// Reads a backup file (bounded in size).
pub fn read_file(path: &Path) -> Result<Vec<u8>, BackupError> {
    use std::io::Read as _;
    let io = |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(BackupError::Malformed(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes: not a key backup",
            path.display()
        )));
    }
    Ok(bytes)
}

// --- Import --------------------------------------------------------------------

/// What an import restored, for the operator.
#[derive(Debug)]
pub struct ImportSummary {
    /// Keys restored: (session, status, activation height).
    pub keys: Vec<(u64, KeyStatus, Option<u64>)>,
    /// Accounts restored.
    pub accounts: usize,
    /// Settlement blocks restored.
    pub settlement_blocks: usize,
}

/// Restores `contents` into the empty database behind `pool`, re-sealing
/// every secret under `kek`, in one transaction: either everything is
/// restored or nothing is.
pub async fn restore(
    pool: &sqlx::PgPool,
    kek: &Kek,
    contents: &Contents,
) -> Result<ImportSummary, BackupError> {
    let identity_secret: [u8; 32] = contents
        .identity
        .secret
        .as_slice()
        .try_into()
        .map_err(|_| BackupError::Malformed("identity secret is not 32 bytes".into()))?;
    let identity_secret = Zeroizing::new(identity_secret);
    let (public, sealed_identity) = keystore::seal_identity(kek, &identity_secret);
    let mut tx = pool.begin().await?;
    if let Some(occupant) = db::occupant(&mut tx).await? {
        return Err(BackupError::NotEmpty(occupant));
    }
    keystore::db::insert_identity(&mut *tx, &public, &sealed_identity).await?;
    for key in &contents.keys {
        let round1_packages = key
            .round1_packages
            .as_ref()
            .map(|list| {
                list.iter()
                    .map(hex::decode)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        BackupError::Malformed(format!("key {}: round-1 packages", key.session))
                    })
            })
            .transpose()?;
        db::insert_key(
            &mut tx,
            &db::StoredKey {
                session: key.session,
                attempt: key.attempt,
                threshold: key.threshold,
                own_index: key.own_index,
                participant_keys: key.participant_keys.clone(),
                status: key.status.as_str().to_owned(),
                round1_packages,
                sealed_key_package: Some(keystore::seal_key_share(
                    kek,
                    key.session,
                    &key.key_package,
                )),
                public_key_package: Some(key.public_key_package.clone()),
                group_key: Some(key.group_key.clone()),
                monero_address: Some(key.monero_address.clone()),
                confirmations: key.confirmations,
                window_blocks: key.window_blocks,
                activation_height: key.activation_height,
            },
        )
        .await?;
    }
    for foreign in &contents.foreign_keys {
        let group_key = hex::decode(&foreign.group_key)
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| {
                BackupError::Malformed(format!("foreign key {}: group key", foreign.session))
            })?;
        crate::lifecycle::db::insert_foreign(
            &mut tx,
            foreign.session,
            &group_key,
            foreign.activation_height,
        )
        .await?;
    }
    for block in &contents.settlement_blocks {
        db::insert_settlement_block(
            &mut tx,
            &db::StoredSettlementBlock {
                number: block.number,
                included_batch_ids: block.included_batch_ids.clone(),
                monero_horizon: block.monero_horizon,
            },
        )
        .await?;
    }
    for account in &contents.accounts {
        db::insert_account(
            &mut tx,
            &db::StoredAccount {
                account: account.account,
                active_from: account.active_from,
                settlement_block: account.settlement_block,
            },
        )
        .await?;
    }
    for l in &contents.links {
        link::db::restore_position(
            &mut tx,
            &link::db::LinkPosition {
                link_id: l.link_id.clone(),
                counters: link::db::LinkCounters {
                    last_handled_in: l.last_handled_in,
                    last_enqueued_out: l.last_enqueued_out,
                    acked_out: l.acked_out,
                },
                unacked: l
                    .unacked
                    .iter()
                    .map(|r| link::db::PendingRow {
                        id: r.id,
                        uid: r.uid.clone(),
                        kind: r.kind.clone(),
                        payload: r.payload.clone(),
                    })
                    .collect(),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(ImportSummary {
        keys: contents
            .keys
            .iter()
            .map(|k| (k.session, k.status, k.activation_height))
            .collect(),
        accounts: contents.accounts.len(),
        settlement_blocks: contents.settlement_blocks.len(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Cheap parameters: the format, not the cost, is under test.
    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };

    fn sealed() -> Vec<u8> {
        seal(b"{\"secret\":\"shares\"}", b"correct horse battery", FAST).unwrap()
    }

    #[test]
    fn a_sealed_file_roundtrips_and_hides_its_contents() {
        let file = sealed();
        assert_eq!(&file[..8], &MAGIC);
        assert!(
            !file.windows(6).any(|w| w == b"shares"),
            "contents are encrypted"
        );
        let parsed = parse(&file, "f").unwrap();
        assert_eq!(
            parsed.params, FAST,
            "the KDF parameters are read from the header"
        );
        assert_eq!(
            parsed.open(b"correct horse battery").unwrap().as_slice(),
            b"{\"secret\":\"shares\"}"
        );
        assert_ne!(sealed(), file, "a fresh salt and nonce every time");
    }

    #[test]
    fn a_wrong_passphrase_is_refused() {
        let file = sealed();
        let err = parse(&file, "f")
            .unwrap()
            .open(b"correct horse batterY")
            .unwrap_err();
        assert!(matches!(err, BackupError::WrongPassphrase), "{err}");
        assert!(err.to_string().contains("nothing was written"), "{err}");
    }

    #[test]
    fn any_tampered_byte_is_refused() {
        let file = sealed();
        // Every byte of the header (bar the magic, version, KDF id and
        // length, which fail earlier with their own errors) and the body.
        for at in (23..HEADER_LEN - 8)
            .chain(HEADER_LEN..file.len())
            .chain([11, 15, 19])
        {
            let mut bad = file.clone();
            bad[at] ^= 0x01;
            let result = parse(&bad, "f").and_then(|s| s.open(b"correct horse battery"));
            assert!(result.is_err(), "a flip at byte {at} went unnoticed");
        }
    }

    #[test]
    fn truncated_or_extended_files_are_refused_before_any_passphrase() {
        let file = sealed();
        for len in [0, 5, 8, 40, HEADER_LEN, file.len() - 1] {
            let err = parse(&file[..len], "f").unwrap_err();
            let text = err.to_string();
            if len < 8 {
                assert!(matches!(err, BackupError::NotABackup(_)), "{len}: {text}");
            } else {
                assert!(
                    matches!(err, BackupError::Truncated { .. }),
                    "{len}: {text}"
                );
                assert!(text.contains("truncated"), "{text}");
            }
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            parse(&longer, "f").unwrap_err(),
            BackupError::TrailingBytes(1)
        ));
    }

    #[test]
    fn other_files_versions_and_absurd_parameters_are_refused() {
        let err = parse(b"hello, this is not a backup at all....", "notes.txt").unwrap_err();
        assert!(
            err.to_string()
                .contains("notes.txt is not a processor key backup"),
            "{err}"
        );
        let mut file = sealed();
        file[8] = 2;
        assert!(matches!(
            parse(&file, "f").unwrap_err(),
            BackupError::UnsupportedVersion(2)
        ));
        let mut file = sealed();
        file[10] = 9;
        assert!(matches!(
            parse(&file, "f").unwrap_err(),
            BackupError::UnsupportedKdf(9)
        ));
        // A header asking for 4 TiB of memory is refused before allocating.
        let mut file = sealed();
        file[11..15].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = parse(&file, "f")
            .unwrap()
            .open(b"correct horse battery")
            .unwrap_err();
        assert!(matches!(err, BackupError::Kdf(_)), "{err}");
    }

    fn contents() -> Contents {
        use std::collections::BTreeMap;
        // A real 2-of-2 key from frost's trusted dealer: the checks parse it.
        let (shares, public) = frost_ed25519::keys::generate_with_dealer(
            2,
            2,
            frost_ed25519::keys::IdentifierList::Default,
            OsRng,
        )
        .unwrap();
        let shares: BTreeMap<_, _> = shares.into_iter().collect();
        let (_, share) = shares.into_iter().next().unwrap();
        let package = frost_ed25519::keys::KeyPackage::try_from(share).unwrap();
        let identity = x25519_dalek::StaticSecret::random_from_rng(OsRng);
        Contents {
            node_id: "validator-1".into(),
            exported_unix_ms: 1,
            identity: IdentityRecord {
                public: x25519_dalek::PublicKey::from(&identity).as_bytes().to_vec(),
                secret: Zeroizing::new(identity.to_bytes().to_vec()),
            },
            keys: vec![KeyRecord {
                session: 0,
                attempt: 0,
                threshold: 2,
                own_index: 1,
                participant_keys: vec![vec![1; 32], vec![2; 32]],
                status: KeyStatus::Confirmed,
                round1_packages: None,
                key_package: Zeroizing::new(package.serialize().unwrap()),
                public_key_package: public.serialize().unwrap(),
                group_key: public.verifying_key().serialize().unwrap(),
                monero_address: "4...".into(),
                confirmations: Some(3),
                window_blocks: Some(4),
                activation_height: Some(140),
            }],
            accounts: vec![AccountRecord {
                account: 1,
                active_from: 141,
                settlement_block: Some(3),
            }],
            settlement_blocks: vec![SettlementRecord {
                number: 3,
                included_batch_ids: vec![150],
                monero_horizon: 150,
            }],
            links: vec![],
            foreign_keys: vec![ForeignKeyRecord {
                session: 1,
                group_key: hex::encode([9; 32]),
                activation_height: 160,
            }],
        }
    }

    #[test]
    fn contents_roundtrip_through_a_sealed_file() {
        let c = contents();
        let bytes = c.to_bytes().unwrap();
        let file = seal(&bytes, b"correct horse battery", FAST).unwrap();
        let opened = parse(&file, "f")
            .unwrap()
            .open(b"correct horse battery")
            .unwrap();
        let back = Contents::from_bytes(&opened).unwrap();
        assert_eq!(
            back.identity.secret.as_slice(),
            c.identity.secret.as_slice()
        );
        assert_eq!(
            back.keys[0].key_package.as_slice(),
            c.keys[0].key_package.as_slice()
        );
        assert_eq!(back.keys[0].activation_height, Some(140));
        assert_eq!(back.accounts, c.accounts);
        assert_eq!(back.settlement_blocks, c.settlement_blocks);
        assert_eq!(back.foreign_keys.len(), 1);
        assert_eq!(back.foreign_keys[0].activation_height, 160);
        // A backup written before rotation (no foreign keys) still opens.
        let mut old: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        old.as_object_mut().unwrap().remove("foreign_keys");
        let old = Contents::from_bytes(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(old.foreign_keys.is_empty());
        assert!(
            !format!("{back:?}").contains(&hex::encode(c.identity.secret.as_slice())),
            "Debug shows no secret"
        );
    }

    #[test]
    fn contents_that_do_not_fit_together_are_refused() {
        let mut c = contents();
        c.keys[0].own_index = 2;
        let err = Contents::from_bytes(&c.to_bytes().unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("not this processor's index"),
            "{err}"
        );
        let mut c = contents();
        c.keys[0].group_key = vec![7; 32];
        let err = Contents::from_bytes(&c.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("another group key"), "{err}");
        let mut c = contents();
        c.identity.public = vec![0; 32];
        let err = Contents::from_bytes(&c.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("identity public key"), "{err}");
    }
}
