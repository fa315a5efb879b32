//! Sealing under the key-encryption key, and point-to-point encryption
//! between processors' identity keys.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use super::KeystoreError;

const SEAL_VERSION: u8 = 1;

/// The key-encryption key. Zeroized on drop; `Debug` prints nothing of it.
#[derive(Clone)]
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// The AEAD failed: wrong key, or tampered or misplaced data.
#[derive(Debug, Clone, Copy)]
pub struct OpenFailed;

impl Kek {
    /// Reads a KEK file: 64 hex characters (surrounding whitespace allowed).
    pub fn from_file(path: &Path) -> Result<Self, KeystoreError> {
        let fail = |reason: String| KeystoreError::KekFile {
            path: path.display().to_string(),
            reason,
        };
        let mut text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?,
        );
        let kek = Self::from_hex(text.trim()).map_err(fail);
        text.zeroize();
        kek
    }

    /// Parses 64 hex characters.
    pub fn from_hex(hex_text: &str) -> Result<Self, String> {
        let mut bytes = Zeroizing::new([0_u8; 32]);
        hex::decode_to_slice(hex_text, bytes.as_mut_slice()).map_err(|_| {
            format!(
                "must hold exactly 64 hex characters (32 bytes), found {} characters",
                hex_text.len()
            )
        })?;
        Ok(Self(bytes))
    }

    /// A fresh random KEK (tests and first-time setup tools).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0_u8; 32]);
        OsRng.fill_bytes(bytes.as_mut_slice());
        Self(bytes)
    }

    /// The KEK as hex, for writing a new KEK file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_slice()))
    }

    /// Encrypts `plaintext`, bound to `purpose` (it opens only with the same
    /// purpose, so a blob moved to another row does not open).
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(&Key::from(*self.0));
        let mut nonce = [0_u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let aad = [&[SEAL_VERSION][..], purpose.as_bytes()].concat();
        // Encryption with a valid key and nonce cannot fail for in-memory data.
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("ChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + 12 + ciphertext.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens what [`Kek::seal`] made for `purpose`.
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
        if sealed.len() < 1 + 12 + 16 || sealed[0] != SEAL_VERSION {
            return Err(OpenFailed);
        }
        let cipher = ChaCha20Poly1305::new(&Key::from(*self.0));
        let aad = [&[SEAL_VERSION][..], purpose.as_bytes()].concat();
        let mut nonce = [0_u8; 12];
        nonce.copy_from_slice(&sealed[1..13]);
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed[13..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenFailed)
    }
}

/// Derives the one-message key for a sender -> recipient package: an
/// ephemeral DH for freshness and a static-static DH so the recipient knows
/// the sender's identity key made it.
fn message_key(
    ephemeral_dh: &[u8; 32],
    static_dh: &[u8; 32],
    ephemeral_public: &[u8; 32],
    sender: &[u8; 32],
    recipient: &[u8; 32],
    context: &[u8],
) -> Zeroizing<[u8; 32]> {
    let mut hash = Sha256::new();
    hash.update(b"monero-custody/p2p/v1");
    hash.update(ephemeral_dh);
    hash.update(static_dh);
    hash.update(ephemeral_public);
    hash.update(sender);
    hash.update(recipient);
    hash.update((context.len() as u64).to_le_bytes());
    hash.update(context);
    Zeroizing::new(hash.finalize().into())
}

/// Encrypts `plaintext` from `sender` to `recipient`: ephemeral public key
/// (32 bytes) then ciphertext with tag. `context` (e.g. session, attempt,
/// indices) must match on the receiving side.
pub fn encrypt_to(
    sender: &StaticSecret,
    recipient: &[u8; 32],
    context: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let recipient_key = PublicKey::from(*recipient);
    let ephemeral = StaticSecret::random_from_rng(OsRng);
    let ephemeral_public = PublicKey::from(&ephemeral);
    let ephemeral_dh = ephemeral.diffie_hellman(&recipient_key);
    let static_dh = sender.diffie_hellman(&recipient_key);
    let key = message_key(
        ephemeral_dh.as_bytes(),
        static_dh.as_bytes(),
        ephemeral_public.as_bytes(),
        PublicKey::from(sender).as_bytes(),
        recipient,
        context,
    );
    let cipher = ChaCha20Poly1305::new(&Key::from(*key));
    // The key is used for this one message, so a fixed nonce is safe.
    let ciphertext = cipher
        .encrypt(&Nonce::from([0_u8; 12]), plaintext)
        .expect("ChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    [ephemeral_public.as_bytes().as_slice(), &ciphertext].concat()
}

/// Opens what [`encrypt_to`] made, checking it came from `sender`.
pub fn decrypt_from(
    recipient: &StaticSecret,
    sender: &[u8; 32],
    context: &[u8],
    message: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
    if message.len() < 32 + 16 {
        return Err(OpenFailed);
    }
    let mut ephemeral_public = [0_u8; 32];
    ephemeral_public.copy_from_slice(&message[..32]);
    let ephemeral_dh = recipient.diffie_hellman(&PublicKey::from(ephemeral_public));
    let static_dh = recipient.diffie_hellman(&PublicKey::from(*sender));
    decrypt_with_shared(
        ephemeral_dh.as_bytes(),
        static_dh.as_bytes(),
        sender,
        PublicKey::from(recipient).as_bytes(),
        context,
        message,
    )
}

/// The ephemeral public key an [`encrypt_to`] message carries.
pub fn ephemeral_of(message: &[u8]) -> Option<[u8; 32]> {
    message.get(..32)?.try_into().ok()
}

/// Opens what [`encrypt_to`] made with the two X25519 shared secrets the
/// recipient's key gives (recipient x ephemeral, recipient x sender), as a
/// DKG blame reveals them: anyone holding them can open that one message.
pub fn decrypt_with_shared(
    ephemeral_dh: &[u8; 32],
    static_dh: &[u8; 32],
    sender: &[u8; 32],
    recipient: &[u8; 32],
    context: &[u8],
    message: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
    let ephemeral_public = ephemeral_of(message).ok_or(OpenFailed)?;
    if message.len() < 32 + 16 {
        return Err(OpenFailed);
    }
    let key = message_key(
        ephemeral_dh,
        static_dh,
        &ephemeral_public,
        sender,
        recipient,
        context,
    );
    let cipher = ChaCha20Poly1305::new(&Key::from(*key));
    cipher
        .decrypt(&Nonce::from([0_u8; 12]), &message[32..])
        .map(Zeroizing::new)
        .map_err(|_| OpenFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_purpose_and_key() {
        let kek = Kek::generate();
        let sealed = kek.seal("a", b"secret");
        assert_eq!(kek.open("a", &sealed).expect("opens").as_slice(), b"secret");
        assert!(
            kek.open("b", &sealed).is_err(),
            "another purpose must not open it"
        );
        assert!(
            Kek::generate().open("a", &sealed).is_err(),
            "another key must not open it"
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(kek.open("a", &tampered).is_err());
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "ciphertext hides the plaintext"
        );
        assert_eq!(format!("{kek:?}"), "Kek(<redacted>)");
    }

    #[test]
    fn kek_hex_is_checked() {
        assert!(Kek::from_hex(&"ab".repeat(32)).is_ok());
        let err = Kek::from_hex("abcd").expect_err("too short");
        assert!(err.contains("64 hex characters"), "{err}");
        assert!(Kek::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn point_to_point_authenticates_the_sender() {
        let alice = StaticSecret::random_from_rng(OsRng);
        let bob = StaticSecret::random_from_rng(OsRng);
        let mallory = StaticSecret::random_from_rng(OsRng);
        let alice_pub = *PublicKey::from(&alice).as_bytes();
        let bob_pub = *PublicKey::from(&bob).as_bytes();
        let message = encrypt_to(&alice, &bob_pub, b"ctx", b"share");
        assert_eq!(
            decrypt_from(&bob, &alice_pub, b"ctx", &message)
                .expect("opens")
                .as_slice(),
            b"share"
        );
        assert!(decrypt_from(&bob, &alice_pub, b"other", &message).is_err());
        let forged = encrypt_to(&mallory, &bob_pub, b"ctx", b"share");
        assert!(
            decrypt_from(&bob, &alice_pub, b"ctx", &forged).is_err(),
            "a package from another key is refused"
        );
    }
}
