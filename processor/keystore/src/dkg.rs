//! The FROST DKG (frost-ed25519 `keys::dkg::part1/2/3`) with every secret
//! kept sealed between rounds, and the conversions of the result: to
//! `dkg::ThresholdKeys<Ed25519>` for Monero multisig, and to the group's
//! Monero address.

use std::collections::{BTreeMap, HashMap};

use ciphersuite::Ciphersuite;
use curve25519_dalek::Scalar;
use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::traits::{Identity, IsIdentity, VartimeMultiscalarMul};
use dalek_ff_group::Ed25519;
use frost_ed25519::Identifier;
use frost_ed25519::keys::dkg::{self as frost_dkg, round1, round2};
use frost_ed25519::keys::{KeyPackage, PublicKeyPackage, SigningShare};
use rand_core::OsRng;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use super::seal::{decrypt_from, encrypt_to};
use super::{Keystore, KeystoreError};

/// One DKG attempt as this processor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkgParams {
    /// The key's session number.
    pub session: u64,
    /// The attempt.
    pub attempt: u32,
    /// Signers needed (t).
    pub threshold: u16,
    /// This processor's index (1..=n).
    pub own_index: u16,
    /// Every participant's index and X25519 identity key.
    pub participants: BTreeMap<u16, [u8; 32]>,
}

impl DkgParams {
    /// n.
    pub fn n(&self) -> u16 {
        u16::try_from(self.participants.len()).unwrap_or(u16::MAX)
    }

    /// Checks the parameters are a well-formed t-of-n with us in it.
    pub fn validate(&self, own_identity: &[u8; 32]) -> Result<(), String> {
        let n = self.n();
        if n < 2 {
            return Err(format!("a key needs at least 2 participants, got {n}"));
        }
        if self.threshold < 2 || self.threshold > n {
            return Err(format!(
                "threshold {} is not within 2..={n}",
                self.threshold
            ));
        }
        // With t <= n/2, two disjoint sets of t signers could each sign a
        // payout of the same burn from different inputs: both valid on chain.
        if u32::from(self.threshold) * 2 <= u32::from(n) {
            return Err(format!(
                "threshold {} of {n} is not more than half the participants: two disjoint groups \
                 could each sign a conflicting payout; ask for at least {} (the coordinator's \
                 default is floor(2n/3)+1 = {})",
                self.threshold,
                n / 2 + 1,
                n * 2 / 3 + 1
            ));
        }
        let expected: Vec<u16> = (1..=n).collect();
        let got: Vec<u16> = self.participants.keys().copied().collect();
        if got != expected {
            return Err(format!("participant indices must be 1..={n}, got {got:?}"));
        }
        match self.participants.get(&self.own_index) {
            None => Err(format!("own index {} is not a participant", self.own_index)),
            Some(key) if key != own_identity => Err(format!(
                "participant {} has identity key {}, but this processor's is {}",
                self.own_index,
                hex::encode(key),
                hex::encode(own_identity)
            )),
            Some(_) => Ok(()),
        }
    }

    fn purpose(&self, what: &str) -> String {
        format!("keygen/{}/{}/{what}", self.session, self.attempt)
    }

    fn context(&self, from: u16, to: u16) -> Vec<u8> {
        format!(
            "keygen-round2/{}/{}/{from}->{to}",
            self.session, self.attempt
        )
        .into_bytes()
    }
}

/// A participant misbehaved; the evidence lets others check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blame {
    /// The participant at fault.
    pub accused: u16,
    /// What they did.
    pub reason: String,
    /// What shows it: the offending round-1 package, or the accused's
    /// round-2 ciphertext to the accuser (never a plaintext share).
    pub evidence: Vec<u8>,
    /// For a round-2 share: the proof of the two X25519 shared secrets that
    /// open that one ciphertext (see [`super::dleq`]); empty otherwise.
    pub decryption_proof: Vec<u8>,
}

/// Why a DKG round did not produce output.
#[derive(Debug, thiserror::Error)]
pub enum DkgError {
    /// A participant misbehaved (frost's `culprits()`, or an undecodable or
    /// undecryptable package).
    #[error("participant {} misbehaved: {}", .0.accused, .0.reason)]
    Blame(Blame),
    /// The input does not fit the session (missing or extra packages).
    #[error("{0}")]
    Invalid(String),
    /// Keystore trouble.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
}

/// Round 1's output: the broadcast package and the sealed secret.
#[derive(Debug, Clone)]
pub struct Round1Output {
    /// Sealed `round1::SecretPackage`.
    pub sealed_secret: Vec<u8>,
    /// Serialized `round1::Package`, for everyone.
    pub package: Vec<u8>,
}

/// Round 2's output: one encrypted package per other participant.
#[derive(Debug, Clone)]
pub struct Round2Output {
    /// Sealed `round2::SecretPackage`.
    pub sealed_secret: Vec<u8>,
    /// Recipient index -> ciphertext only the recipient can open.
    pub packages: BTreeMap<u16, Vec<u8>>,
}

/// The DKG's result.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// Sealed `KeyPackage` (this processor's secret share).
    pub sealed_key_package: Vec<u8>,
    /// Serialized `PublicKeyPackage` (public).
    pub public_key_package: Vec<u8>,
    /// The group public key (compressed Ed25519).
    pub group_key: [u8; 32],
    /// The group's Monero address (mainnet prefix, as regtest uses).
    pub monero_address: String,
}

fn identifier(index: u16) -> Result<Identifier, DkgError> {
    Identifier::try_from(index).map_err(|e| DkgError::Invalid(format!("index {index}: {e}")))
}

fn index_of(params: &DkgParams, id: &Identifier) -> Option<u16> {
    params
        .participants
        .keys()
        .copied()
        .find(|&i| Identifier::try_from(i).ok().as_ref() == Some(id))
}

/// Turns frost's error into a blame when it names a culprit.
fn blame_from(
    params: &DkgParams,
    error: &frost_ed25519::Error,
    evidence: impl Fn(u16) -> (Vec<u8>, Vec<u8>),
) -> DkgError {
    match error.culprits().first().and_then(|c| index_of(params, c)) {
        Some(accused) => {
            let (evidence, decryption_proof) = evidence(accused);
            DkgError::Blame(Blame {
                accused,
                reason: error.to_string(),
                evidence,
                decryption_proof,
            })
        }
        None => DkgError::Invalid(format!("DKG failed without a culprit: {error}")),
    }
}

fn expect_others<T>(
    params: &DkgParams,
    got: &BTreeMap<u16, T>,
    what: &str,
) -> Result<(), DkgError> {
    let expected: Vec<u16> = params
        .participants
        .keys()
        .copied()
        .filter(|&i| i != params.own_index)
        .collect();
    let have: Vec<u16> = got
        .keys()
        .copied()
        .filter(|&i| i != params.own_index)
        .collect();
    if have != expected {
        return Err(DkgError::Invalid(format!(
            "{what}: expected packages from {expected:?}, got {have:?}"
        )));
    }
    Ok(())
}

impl Keystore {
    /// Round 1: fresh polynomial, commitments and proof of knowledge.
    pub fn dkg_round1(&self, params: &DkgParams) -> Result<Round1Output, DkgError> {
        let (secret, package) = frost_dkg::part1(
            identifier(params.own_index)?,
            params.n(),
            params.threshold,
            OsRng,
        )
        .map_err(|e| DkgError::Invalid(format!("round 1: {e}")))?;
        let secret_bytes = Zeroizing::new(
            secret
                .serialize()
                .map_err(|e| DkgError::Invalid(format!("serializing round 1 secret: {e}")))?,
        );
        Ok(Round1Output {
            sealed_secret: self.seal(&params.purpose("round1-secret"), &secret_bytes),
            package: package
                .serialize()
                .map_err(|e| DkgError::Invalid(format!("serializing round 1 package: {e}")))?,
        })
    }

    /// Round 2: checks everyone's round-1 package (blaming a bad proof of
    /// knowledge) and encrypts a share to each other participant.
    pub fn dkg_round2(
        &self,
        params: &DkgParams,
        sealed_round1_secret: &[u8],
        round1_packages: &BTreeMap<u16, Vec<u8>>,
    ) -> Result<Round2Output, DkgError> {
        expect_others(params, round1_packages, "round 1")?;
        let secret_bytes =
            self.open_sealed(&params.purpose("round1-secret"), sealed_round1_secret)?;
        let secret = round1::SecretPackage::deserialize(&secret_bytes)
            .map_err(|_| KeystoreError::Malformed(params.purpose("round1-secret")))?;
        let others = parse_round1(params, round1_packages)?;
        let (secret2, packages) = frost_dkg::part2(secret, &others).map_err(|e| {
            blame_from(params, &e, |i| {
                (
                    round1_packages.get(&i).cloned().unwrap_or_default(),
                    Vec::new(),
                )
            })
        })?;
        let mut out = BTreeMap::new();
        let mut corrupt = service::failpoint::eval("keygen-corrupt-share", |_| ()).is_some();
        for (id, package) in packages {
            let to = index_of(params, &id).ok_or_else(|| {
                DkgError::Invalid("frost produced a package for a stranger".into())
            })?;
            let package = if corrupt {
                // Fault injection for blame tests: one wrong share.
                corrupt = false;
                tracing::warn!(to, "fault injection: sending a corrupted DKG share");
                corrupted(&package)
            } else {
                package
            };
            let plain = Zeroizing::new(
                package
                    .serialize()
                    .map_err(|e| DkgError::Invalid(format!("serializing round 2 package: {e}")))?,
            );
            let recipient = params.participants[&to];
            out.insert(
                to,
                encrypt_to(
                    &self.identity,
                    &recipient,
                    &params.context(params.own_index, to),
                    &plain,
                ),
            );
        }
        // The sealed round-2 secret also records which round-1 packages
        // frost checked here (their digest), so round 3 can skip the
        // subgroup checks of those exact bytes (see `round1_digest`).
        let mut secret2_bytes = Zeroizing::new(Vec::from(VERIFIED_ROUND1));
        secret2_bytes.extend_from_slice(&round1_digest(params, round1_packages));
        secret2_bytes.extend_from_slice(&Zeroizing::new(
            secret2
                .serialize()
                .map_err(|e| DkgError::Invalid(format!("serializing round 2 secret: {e}")))?,
        ));
        Ok(Round2Output {
            sealed_secret: self.seal(&params.purpose("round2-secret"), &secret2_bytes),
            packages: out,
        })
    }

    /// Round 3: decrypts and verifies the shares addressed to us (blaming a
    /// bad one) and derives the key, its `ThresholdKeys` form and address.
    pub fn dkg_round3(
        &self,
        params: &DkgParams,
        sealed_round2_secret: &[u8],
        round1_packages: &BTreeMap<u16, Vec<u8>>,
        round2_ciphertexts: &BTreeMap<u16, Vec<u8>>,
    ) -> Result<GeneratedKey, DkgError> {
        expect_others(params, round1_packages, "round 1")?;
        expect_others(params, round2_ciphertexts, "round 2")?;
        let secret_bytes =
            self.open_sealed(&params.purpose("round2-secret"), sealed_round2_secret)?;
        // A secret sealed before the digest existed is frost's bytes alone
        // (they start with frost's version byte 0, never with the tag).
        let (verified, frost_secret) = match secret_bytes.strip_prefix(VERIFIED_ROUND1) {
            Some(rest) if rest.len() >= 32 => (Some(&rest[..32]), &rest[32..]),
            _ => (None, &secret_bytes[..]),
        };
        let secret = round2::SecretPackage::deserialize(frost_secret)
            .map_err(|_| KeystoreError::Malformed(params.purpose("round2-secret")))?;
        let round1 = if verified == Some(&round1_digest(params, round1_packages)[..]) {
            parse_round1_verified(params, round1_packages)?
        } else {
            parse_round1(params, round1_packages)?
        };
        let mut round2 = BTreeMap::new();
        for (&from, ciphertext) in round2_ciphertexts {
            if from == params.own_index {
                continue;
            }
            let sender = params.participants[&from];
            let plain = decrypt_from(
                &self.identity,
                &sender,
                &params.context(from, params.own_index),
                ciphertext,
            )
            .map_err(|_| {
                DkgError::Blame(Blame {
                    accused: from,
                    reason: "its round-2 package does not decrypt under its identity key".into(),
                    evidence: ciphertext.clone(),
                    decryption_proof: self.decryption_proof(params, from, ciphertext),
                })
            })?;
            let package = round2::Package::deserialize(&plain).map_err(|e| {
                DkgError::Blame(Blame {
                    accused: from,
                    reason: format!("its round-2 package does not parse: {e}"),
                    evidence: ciphertext.clone(),
                    decryption_proof: self.decryption_proof(params, from, ciphertext),
                })
            })?;
            round2.insert(identifier(from)?, package);
        }
        let evidence_of = |i: u16| {
            let ciphertext = round2_ciphertexts.get(&i).cloned().unwrap_or_default();
            let proof = self.decryption_proof(params, i, &ciphertext);
            (ciphertext, proof)
        };
        let (key_package, public_key_package) = part3_batched(&secret, &round1, &round2)
            .map_err(|e| blame_from(params, &e, evidence_of))?;
        // Fault injection for blame tests: accuse a participant whose share
        // was valid (a false accusation, with a true decryption proof).
        if service::failpoint::eval("keygen-false-blame", |_| ()).is_some()
            && let Some(&victim) = round2_ciphertexts.keys().find(|&&i| i != params.own_index)
        {
            tracing::warn!(victim, "fault injection: falsely blaming a DKG participant");
            let (evidence, decryption_proof) = evidence_of(victim);
            return Err(DkgError::Blame(Blame {
                accused: victim,
                reason: "fault injection: a false accusation".into(),
                evidence,
                decryption_proof,
            }));
        }
        let group_key: [u8; 32] = public_key_package
            .verifying_key()
            .serialize()
            .map_err(|e| DkgError::Invalid(format!("group key: {e}")))?
            .try_into()
            .map_err(|_| DkgError::Invalid("group key is not 32 bytes".into()))?;
        // The multisig form must agree on the group key (shares line up:
        // frost identifier i is the scalar i).
        let keys = threshold_keys(
            params.threshold,
            params.n(),
            params.own_index,
            &key_package,
            &public_key_package,
        )?;
        if keys.group_key().0.compress().to_bytes() != group_key {
            return Err(DkgError::Invalid(
                "ThresholdKeys recomputed a different group key than frost".into(),
            ));
        }
        let key_bytes = Zeroizing::new(
            key_package
                .serialize()
                .map_err(|e| DkgError::Invalid(format!("serializing key package: {e}")))?,
        );
        Ok(GeneratedKey {
            sealed_key_package: self.seal(&key_purpose(params.session), &key_bytes),
            public_key_package: public_key_package
                .serialize()
                .map_err(|e| DkgError::Invalid(format!("serializing public key package: {e}")))?,
            group_key,
            monero_address: monero_address(&group_key)
                .ok_or_else(|| DkgError::Invalid("group key is not a valid point".into()))?,
        })
    }

    /// The proof that opens `from`'s round-2 ciphertext to us for anyone:
    /// our X25519 shared secrets with its ephemeral key and its identity
    /// key, with a DLEq proof that they are right. It opens that one
    /// message only (the ephemeral secret is fresh per message); the static
    /// secret it reveals is the one `from` itself holds. Empty if a key is
    /// not a curve point (the coordinator finds that out itself).
    fn decryption_proof(&self, params: &DkgParams, from: u16, ciphertext: &[u8]) -> Vec<u8> {
        let (Some(ephemeral), Some(sender)) = (
            super::seal::ephemeral_of(ciphertext),
            params.participants.get(&from),
        ) else {
            return Vec::new();
        };
        let secret = Zeroizing::new(self.identity.to_bytes());
        super::dleq::prove(
            &secret,
            &[ephemeral, *sender],
            &params.context(from, params.own_index),
        )
        .unwrap_or_default()
    }

    /// Opens a stored key package (for signing; tests use it to check).
    pub fn open_key_package(
        &self,
        session: u64,
        sealed: &[u8],
    ) -> Result<KeyPackage, KeystoreError> {
        let bytes = self.open_sealed(&key_purpose(session), sealed)?;
        KeyPackage::deserialize(&bytes).map_err(|_| KeystoreError::Malformed(key_purpose(session)))
    }
}

/// The public facts a DKG blame is judged against, as the coordinator
/// relayed them.
#[derive(Debug, Clone)]
pub struct BlameCase<'a> {
    /// The session.
    pub session: u64,
    /// The attempt.
    pub attempt: u32,
    /// t.
    pub threshold: u16,
    /// Who accuses.
    pub accuser: u16,
    /// Who is accused.
    pub accused: u16,
    /// Every participant's X25519 identity key, as sent in `KeyGenStart`.
    pub identities: &'a BTreeMap<u16, [u8; 32]>,
    /// The accused's round-1 package, if it sent one.
    pub accused_round1: Option<&'a [u8]>,
    /// The accused's round-2 ciphertext to the accuser, if it sent one.
    pub ciphertext: Option<&'a [u8]>,
    /// The accuser's decryption proof (empty for a round-1 accusation).
    pub decryption_proof: &'a [u8],
}

/// Who a DKG blame proves at fault, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The accused: its round-1 package or its share is invalid.
    Accused(String),
    /// The accuser: what it accused is valid, or its proof does not hold.
    Accuser(String),
}

/// Judges a DKG blame from public data only: the accused's round-1 package
/// must parse, commit to t coefficients and carry a valid proof of
/// knowledge; its round-2 ciphertext must be well-formed, and, opened with
/// the shared secrets the accuser proves, hold a share that matches the
/// accused's round-1 commitment at the accuser's index. Anything invalid
/// there proves the accused at fault; otherwise the accuser is.
pub fn judge_blame(case: &BlameCase<'_>) -> Finding {
    let Some(round1) = case.accused_round1 else {
        return Finding::Accuser("the accused sent no round-1 package to blame".into());
    };
    let Ok(package) = round1::Package::deserialize(round1) else {
        return Finding::Accused("its round-1 package does not parse".into());
    };
    let Ok(accused_id) = Identifier::try_from(case.accused) else {
        return Finding::Accuser("the accused is not a valid index".into());
    };
    if package.commitment().coefficients().len() != usize::from(case.threshold) {
        return Finding::Accused("its round-1 commitment is not of t coefficients".into());
    }
    if frost_core::keys::dkg::verify_proof_of_knowledge(
        accused_id,
        package.commitment(),
        package.proof_of_knowledge(),
    )
    .is_err()
    {
        return Finding::Accused("its round-1 proof of knowledge does not verify".into());
    }
    let Some(ciphertext) = case.ciphertext else {
        return Finding::Accuser(
            "the accused's round-1 package is valid and it sent no share to the accuser".into(),
        );
    };
    let (Some(accuser_key), Some(accused_key)) = (
        case.identities.get(&case.accuser),
        case.identities.get(&case.accused),
    ) else {
        return Finding::Accuser("a participant without an identity key".into());
    };
    let Some(ephemeral) = super::seal::ephemeral_of(ciphertext) else {
        return Finding::Accused("its round-2 ciphertext is too short".into());
    };
    if super::dleq::cleared_base(&ephemeral).is_none() {
        return Finding::Accused("its round-2 ephemeral key is not a curve point".into());
    }
    if super::dleq::cleared_base(accused_key).is_none() {
        return Finding::Accused("its identity key is not a curve point".into());
    }
    let context = format!(
        "keygen-round2/{}/{}/{}->{}",
        case.session, case.attempt, case.accused, case.accuser
    )
    .into_bytes();
    let shared = match super::dleq::verify(
        accuser_key,
        &[ephemeral, *accused_key],
        &context,
        case.decryption_proof,
    ) {
        Ok(shared) => shared,
        Err(e) => {
            return Finding::Accuser(format!(
                "the accused's round-1 package is valid and the decryption proof does not hold ({e})"
            ));
        }
    };
    let Ok(plain) = super::seal::decrypt_with_shared(
        &shared[0],
        &shared[1],
        accused_key,
        accuser_key,
        &context,
        ciphertext,
    ) else {
        return Finding::Accused(
            "its round-2 ciphertext does not open with the proven keys".into(),
        );
    };
    let Ok(share) = round2::Package::deserialize(&plain) else {
        return Finding::Accused("its round-2 package does not parse".into());
    };
    let Ok(accuser_id) = Identifier::try_from(case.accuser) else {
        return Finding::Accuser("the accuser is not a valid index".into());
    };
    let check = frost_ed25519::keys::SecretShare::new(
        accuser_id,
        *share.signing_share(),
        package.commitment().clone(),
    );
    match check.verify() {
        Ok(_) => Finding::Accuser(
            "the accused's share verifies against its round-1 commitment: a false accusation"
                .into(),
        ),
        Err(_) => Finding::Accused(
            "its share does not match its round-1 commitment at the accuser's index".into(),
        ),
    }
}

/// frost's `keys::dkg::part3` (same checks, same errors, byte-identical
/// output), made fast enough for n = 100: frost verifies each received share
/// with t constant-time scalar multiplications and derives each of the n
/// verification shares with t more, n * t * 2 multiplications per
/// participant (~13,000 at n = 100, t = 67, over a second of one core).
/// Here all shares are checked in one random linear combination, a single
/// variable-time multi-scalar multiplication over every dealer's
/// commitments (public data, so variable time leaks nothing):
///
///   sum_j r_j * (s_j * G - sum_k x^k * C_jk) == 0,
///
/// which, with fresh random r_j, holds for a wrong share with probability
/// 1/l. The commitments are torsion-free (frost's deserialization refuses
/// other points), so no torsion component can cancel out. When the batch
/// fails, each share is checked alone, in frost's order, to name the same
/// culprit frost would. The verification shares are the summed commitment
/// polynomial evaluated at each index by Horner's rule, where x is a small
/// integer: a few doublings and additions per coefficient, not a scalar
/// multiplication.
fn part3_batched(
    secret: &round2::SecretPackage,
    round1_packages: &BTreeMap<Identifier, round1::Package>,
    round2_packages: &BTreeMap<Identifier, round2::Package>,
) -> Result<(KeyPackage, PublicKeyPackage), frost_ed25519::Error> {
    use frost_ed25519::Error;
    use frost_ed25519::keys::VerifyingShare;

    // frost's preconditions, in its order.
    let max_signers = *secret.max_signers();
    let min_signers = *secret.min_signers();
    if round1_packages.len() != usize::from(max_signers).saturating_sub(1) {
        return Err(Error::IncorrectNumberOfPackages);
    }
    if round1_packages.contains_key(secret.identifier())
        || round2_packages.contains_key(secret.identifier())
    {
        return Err(Error::UnknownIdentifier);
    }
    if round1_packages.len() != round2_packages.len() {
        return Err(Error::IncorrectNumberOfPackages);
    }
    if round1_packages
        .keys()
        .any(|id| !round2_packages.contains_key(id))
    {
        return Err(Error::IncorrectPackage);
    }
    let t = usize::from(min_signers);
    // Part 2 refused any other length; a different one here means the
    // round-1 packages changed since, and the sums below need t terms.
    if secret.commitment().coefficients().len() != t
        || round1_packages
            .values()
            .any(|p| p.commitment().coefficients().len() != t)
    {
        return Err(Error::IncorrectNumberOfCommitments);
    }

    let x = secret.identifier().to_scalar();
    let powers: Vec<Scalar> = std::iter::successors(Some(Scalar::ONE), |p| Some(p * x))
        .take(t)
        .collect();
    let mut scalars = Vec::with_capacity(round1_packages.len() * t + 1);
    let mut points = Vec::with_capacity(round1_packages.len() * t + 1);
    let mut base = Scalar::ZERO;
    for (id, package) in round1_packages {
        let share = round2_packages
            .get(id)
            .ok_or(Error::PackageNotFound)?
            .signing_share()
            .to_scalar();
        let mut wide = [0u8; 64];
        rand_core::RngCore::fill_bytes(&mut OsRng, &mut wide);
        let r = Scalar::from_bytes_mod_order_wide(&wide);
        base += r * share;
        let minus_r = -r;
        for (power, c) in powers.iter().zip(package.commitment().coefficients()) {
            scalars.push(minus_r * power);
            points.push(c.value());
        }
    }
    scalars.push(base);
    points.push(curve25519_dalek::constants::ED25519_BASEPOINT_POINT);
    let batch_holds = EdwardsPoint::vartime_multiscalar_mul(&scalars, &points).is_identity();
    if !batch_holds {
        // Name the culprit exactly as frost's part3 would: the first
        // failing share in identifier order.
        for (id, package) in round1_packages {
            let share = *round2_packages
                .get(id)
                .ok_or(Error::PackageNotFound)?
                .signing_share();
            frost_ed25519::keys::SecretShare::new(
                *secret.identifier(),
                share,
                package.commitment().clone(),
            )
            .verify()
            .map_err(|e| match e {
                Error::InvalidSecretShare { .. } => {
                    Error::InvalidSecretShare { culprit: Some(*id) }
                }
                other => other,
            })?;
        }
    }

    let signing_share = round2_packages
        .values()
        .fold(secret.secret_share(), |sum, p| {
            sum + p.signing_share().to_scalar()
        });
    let signing_share = SigningShare::new(signing_share);
    let verifying_share = VerifyingShare::from(signing_share);

    // The group's commitment polynomial: coefficient-wise sum over every
    // dealer, ourselves included.
    let mut group = vec![EdwardsPoint::identity(); t];
    for commitment in round1_packages
        .values()
        .map(round1::Package::commitment)
        .chain(std::iter::once(secret.commitment()))
    {
        for (sum, c) in group.iter_mut().zip(commitment.coefficients()) {
            *sum += c.value();
        }
    }
    let mut verifying_shares = BTreeMap::new();
    for i in 1..=max_signers {
        let id = Identifier::try_from(i)?;
        // frost's participants are exactly 1..=n (identifier i is the
        // scalar i), which is what lets Horner use i as a small integer.
        if id != *secret.identifier() && !round1_packages.contains_key(&id) {
            return Err(Error::UnknownIdentifier);
        }
        let value = group
            .iter()
            .rev()
            .fold(EdwardsPoint::identity(), |acc, c| mul_small(&acc, i) + c);
        verifying_shares.insert(id, VerifyingShare::new(value));
    }
    let first = *group.first().ok_or(Error::IncorrectNumberOfCommitments)?;
    let verifying_key = frost_ed25519::VerifyingKey::new(first);
    // frost's `from_dkg_commitments` takes min_signers from the summed
    // commitment's length, t.
    let public_key_package =
        PublicKeyPackage::new(verifying_shares, verifying_key, Some(min_signers));
    let key_package = KeyPackage::new(
        *secret.identifier(),
        signing_share,
        verifying_share,
        verifying_key,
        min_signers,
    );
    Ok((key_package, public_key_package))
}

/// `m * p` for a small public integer m, by double-and-add in variable
/// time: 7 doublings for m <= 100, against a 253-bit scalar multiplication.
fn mul_small(p: &EdwardsPoint, m: u16) -> EdwardsPoint {
    let mut acc = EdwardsPoint::identity();
    for bit in (0..u16::BITS - m.leading_zeros()).rev() {
        acc = acc + acc;
        if (m >> bit) & 1 == 1 {
            acc += p;
        }
    }
    acc
}

/// The seal purpose of a session's key package.
pub fn key_purpose(session: u64) -> String {
    format!("key/{session}/key-package")
}

fn parse_round1(
    params: &DkgParams,
    packages: &BTreeMap<u16, Vec<u8>>,
) -> Result<BTreeMap<Identifier, round1::Package>, DkgError> {
    let mut out = BTreeMap::new();
    for (&from, bytes) in packages {
        if from == params.own_index {
            continue;
        }
        let package = round1::Package::deserialize(bytes).map_err(|e| {
            DkgError::Blame(Blame {
                accused: from,
                reason: format!("its round-1 package does not parse: {e}"),
                evidence: bytes.clone(),
                decryption_proof: Vec::new(),
            })
        })?;
        out.insert(identifier(from)?, package);
    }
    Ok(out)
}

/// Tags a sealed round-2 secret that carries the digest of the round-1
/// packages round 2 verified.
const VERIFIED_ROUND1: &[u8] = b"R2+digest/v1";

/// A digest of the other participants' round-1 packages, exactly as
/// received (index and length framed, in index order).
fn round1_digest(params: &DkgParams, packages: &BTreeMap<u16, Vec<u8>>) -> [u8; 32] {
    let mut hash = Sha512::new();
    hash.update(b"monero-custody/dkg-round1-verified/v1");
    for (index, bytes) in packages.iter().filter(|(i, _)| **i != params.own_index) {
        hash.update(index.to_le_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&hash.finalize()[..32]);
    out
}

/// Round 3's parse of round-1 packages whose exact bytes frost's
/// deserialization accepted in round 2 (the sealed digest says so): points
/// are decompressed but not checked again for a small-order component.
/// That check is a full scalar multiplication per coefficient (n * t of
/// them, most of a processor's DKG time at n = 100), and its answer for
/// these bytes is already known. Anything this parser does not read as
/// expected goes through frost's own deserialization instead.
fn parse_round1_verified(
    params: &DkgParams,
    packages: &BTreeMap<u16, Vec<u8>>,
) -> Result<BTreeMap<Identifier, round1::Package>, DkgError> {
    let mut out = BTreeMap::new();
    for (&from, bytes) in packages {
        if from == params.own_index {
            continue;
        }
        let package = match parse_round1_points(bytes) {
            Some(package) => package,
            None => parse_round1(params, &BTreeMap::from([(from, bytes.clone())]))?
                .pop_first()
                .map(|(_, p)| p)
                .ok_or_else(|| DkgError::Invalid("round-1 package vanished".into()))?,
        };
        out.insert(identifier(from)?, package);
    }
    Ok(out)
}

/// frost's round-1 package layout (postcard): version byte, 4-byte
/// ciphersuite id, the coefficient count as a varint, that many 32-byte
/// points, the proof's length as a varint, the 64-byte proof.
fn parse_round1_points(bytes: &[u8]) -> Option<round1::Package> {
    use frost_ed25519::keys::VerifiableSecretSharingCommitment;
    type CoefficientCommitment =
        frost_core::keys::CoefficientCommitment<frost_ed25519::Ed25519Sha512>;
    fn varint(bytes: &[u8], mut at: usize) -> Option<(usize, usize)> {
        let mut value = 0usize;
        for shift in (0..35).step_by(7) {
            let byte = *bytes.get(at)?;
            at += 1;
            value |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((value, at));
            }
        }
        None
    }
    let (count, mut at) = varint(bytes, 5)?;
    let mut coefficients = Vec::with_capacity(count);
    for _ in 0..count {
        let point: [u8; 32] = bytes.get(at..at + 32)?.try_into().ok()?;
        coefficients.push(CoefficientCommitment::new(
            CompressedEdwardsY(point).decompress()?,
        ));
        at += 32;
    }
    let (len, at) = varint(bytes, at)?;
    if at + len != bytes.len() {
        return None;
    }
    let proof = frost_ed25519::Signature::deserialize(&bytes[at..]).ok()?;
    Some(round1::Package::new(
        VerifiableSecretSharingCommitment::new(coefficients),
        proof,
    ))
}

fn corrupted(package: &round2::Package) -> round2::Package {
    let mut bytes = package.signing_share().serialize();
    bytes[0] ^= 0x01;
    SigningShare::deserialize(&bytes)
        .map(round2::Package::new)
        .unwrap_or_else(|_| package.clone())
}

/// Converts a frost key to the `ThresholdKeys` monero-wallet's multisig needs.
pub fn threshold_keys(
    t: u16,
    n: u16,
    own_index: u16,
    key_package: &KeyPackage,
    public_key_package: &PublicKeyPackage,
) -> Result<dkg::ThresholdKeys<Ed25519>, DkgError> {
    let bad = |what: &str| DkgError::Invalid(format!("converting to ThresholdKeys: {what}"));
    let participant = |i: u16| dkg::Participant::new(i).ok_or_else(|| bad("index 0"));
    let params = dkg::ThresholdParams::new(t, n, participant(own_index)?)
        .map_err(|e| bad(&e.to_string()))?;
    let secret_bytes = Zeroizing::new(key_package.signing_share().serialize());
    let secret = Zeroizing::new(
        Ed25519::read_F(&mut secret_bytes.as_slice()).map_err(|_| bad("secret share"))?,
    );
    let mut shares = HashMap::new();
    for i in 1..=n {
        let id = identifier(i)?;
        let share = public_key_package
            .verifying_shares()
            .get(&id)
            .ok_or_else(|| bad("missing verification share"))?
            .serialize()
            .map_err(|_| bad("verification share"))?;
        let point =
            Ed25519::read_G(&mut share.as_slice()).map_err(|_| bad("verification share"))?;
        shares.insert(participant(i)?, point);
    }
    dkg::ThresholdKeys::new(params, dkg::Interpolation::Lagrange, secret, shares)
        .map_err(|e| bad(&e.to_string()))
}

/// The private view key every processor derives from the group key.
pub fn view_key(group_key: &[u8; 32]) -> Zeroizing<Scalar> {
    let mut hash = Sha512::new();
    hash.update(b"monero-custody/view-key/v1");
    hash.update(group_key);
    Zeroizing::new(Scalar::from_bytes_mod_order_wide(&hash.finalize().into()))
}

/// The group's Monero address: spend key = group key, view key as above.
pub fn monero_address(group_key: &[u8; 32]) -> Option<String> {
    let spend = CompressedEdwardsY(*group_key).decompress()?;
    let view = &*view_key(group_key) * ED25519_BASEPOINT_TABLE;
    Some(
        monero_address::MoneroAddress::new(
            monero_address::Network::Mainnet,
            monero_address::AddressType::Legacy,
            monero_ed25519::Point::from(spend),
            monero_ed25519::Point::from(view),
        )
        .to_string(),
    )
}

/// Every participant's keystore and key (index i + 1 at position i), and
/// the public round-1 packages.
#[cfg(test)]
pub(crate) type TestKeys = (Vec<(Keystore, GeneratedKey)>, BTreeMap<u16, Vec<u8>>);

/// A whole t-of-n DKG in one process, for unit tests.
#[cfg(test)]
pub(crate) fn generate_for_tests(t: u16, n: u16) -> TestKeys {
    let stores: Vec<Keystore> = (0..n)
        .map(|_| Keystore::in_memory(super::Kek::generate()))
        .collect();
    let participants: BTreeMap<u16, [u8; 32]> = (1..=n)
        .zip(&stores)
        .map(|(i, s)| (i, s.identity_public()))
        .collect();
    let ps: Vec<DkgParams> = (1..=n)
        .map(|own_index| DkgParams {
            session: 7,
            attempt: 0,
            threshold: t,
            own_index,
            participants: participants.clone(),
        })
        .collect();
    let r1: Vec<Round1Output> = stores
        .iter()
        .zip(&ps)
        .map(|(s, p)| s.dkg_round1(p).expect("round 1 of an honest DKG"))
        .collect();
    let all1: BTreeMap<u16, Vec<u8>> = (1..=n)
        .zip(&r1)
        .map(|(i, o)| (i, o.package.clone()))
        .collect();
    let r2: Vec<Round2Output> = (0..usize::from(n))
        .map(|i| {
            stores[i]
                .dkg_round2(&ps[i], &r1[i].sealed_secret, &all1)
                .expect("round 2 of an honest DKG")
        })
        .collect();
    let keys = (0..usize::from(n))
        .map(|i| {
            let me = ps[i].own_index;
            let to_me: BTreeMap<u16, Vec<u8>> = (1..=n)
                .zip(&r2)
                .filter(|(j, _)| *j != me)
                .map(|(j, o)| (j, o.packages[&me].clone()))
                .collect();
            let key = stores[i]
                .dkg_round3(&ps[i], &r2[i].sealed_secret, &all1, &to_me)
                .expect("round 3 of an honest DKG");
            (stores[i].clone(), key)
        })
        .collect();
    (keys, all1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kek;

    fn keystores(n: u16) -> Vec<Keystore> {
        (0..n)
            .map(|_| Keystore::in_memory(Kek::generate()))
            .collect()
    }

    fn params(stores: &[Keystore], t: u16, own: u16) -> DkgParams {
        DkgParams {
            session: 7,
            attempt: 0,
            threshold: t,
            own_index: own,
            participants: stores
                .iter()
                .enumerate()
                .map(|(i, s)| (u16::try_from(i + 1).expect("small"), s.identity_public()))
                .collect(),
        }
    }

    #[test]
    fn a_threshold_of_half_or_less_is_refused() {
        let stores = keystores(4);
        let own = stores[0].identity_public();
        let why = params(&stores, 2, 1)
            .validate(&own)
            .expect_err("2 of 4 is half");
        assert!(why.contains("not more than half"), "{why}");
        assert!(
            params(&stores, 3, 1).validate(&own).is_ok(),
            "3 of 4 is a majority"
        );
    }

    #[test]
    fn three_parties_agree_and_blame_a_bad_proof() {
        let stores = keystores(3);
        let ps: Vec<DkgParams> = (1..=3).map(|i| params(&stores, 2, i)).collect();
        let r1: Vec<Round1Output> = stores
            .iter()
            .zip(&ps)
            .map(|(s, p)| s.dkg_round1(p).expect("round 1"))
            .collect();
        let all1: BTreeMap<u16, Vec<u8>> = r1
            .iter()
            .enumerate()
            .map(|(i, o)| (i as u16 + 1, o.package.clone()))
            .collect();

        // A round-1 package with another participant's proof is blamed.
        let mut forged = all1.clone();
        forged.insert(3, all1[&2].clone());
        match stores[0].dkg_round2(&ps[0], &r1[0].sealed_secret, &forged) {
            Err(DkgError::Blame(b)) => assert_eq!(b.accused, 3, "{b:?}"),
            other => panic!("expected blame of 3, got {other:?}"),
        }

        let r2: Vec<Round2Output> = (0..3)
            .map(|i| {
                stores[i]
                    .dkg_round2(&ps[i], &r1[i].sealed_secret, &all1)
                    .expect("round 2")
            })
            .collect();
        let keys: Vec<GeneratedKey> = (0..3)
            .map(|i| {
                let me = i as u16 + 1;
                let to_me: BTreeMap<u16, Vec<u8>> = r2
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, o)| (j as u16 + 1, o.packages[&me].clone()))
                    .collect();
                stores[i]
                    .dkg_round3(&ps[i], &r2[i].sealed_secret, &all1, &to_me)
                    .expect("round 3")
            })
            .collect();
        assert!(keys.iter().all(|k| k.group_key == keys[0].group_key));
        assert!(
            keys.iter()
                .all(|k| k.monero_address == keys[0].monero_address)
        );
        assert!(
            keys[0].monero_address.starts_with('4'),
            "{}",
            keys[0].monero_address
        );
    }

    #[test]
    fn dkg_blame_is_judged_from_public_data_and_the_accusers_proof() {
        let stores = keystores(3);
        let ps: Vec<DkgParams> = (1..=3).map(|i| params(&stores, 2, i)).collect();
        let r1: Vec<Round1Output> = stores
            .iter()
            .zip(&ps)
            .map(|(s, p)| s.dkg_round1(p).expect("round 1"))
            .collect();
        let all1: BTreeMap<u16, Vec<u8>> = (1..=3)
            .zip(&r1)
            .map(|(i, o)| (i, o.package.clone()))
            .collect();
        let r2: Vec<Round2Output> = (0..3)
            .map(|i| {
                stores[i]
                    .dkg_round2(&ps[i], &r1[i].sealed_secret, &all1)
                    .expect("round 2")
            })
            .collect();
        let identities = ps[0].participants.clone();
        // Participant 1 accuses 2 about the share 2 sent it.
        let honest = r2[1].packages[&1].clone();
        let case = |ciphertext: &'_ [u8], proof: &'_ [u8]| {
            judge_blame(&BlameCase {
                session: 7,
                attempt: 0,
                threshold: 2,
                accuser: 1,
                accused: 2,
                identities: &identities,
                accused_round1: Some(&all1[&2]),
                ciphertext: Some(ciphertext),
                decryption_proof: proof,
            })
        };
        let proof = stores[0].decryption_proof(&ps[0], 2, &honest);
        assert!(
            matches!(case(&honest, &proof), Finding::Accuser(_)),
            "a valid share: false accusation"
        );
        assert!(
            matches!(case(&honest, b""), Finding::Accuser(_)),
            "no proof"
        );
        // A proof by another participant's key does not hold.
        let stolen = stores[2].decryption_proof(&ps[2], 2, &honest);
        assert!(matches!(case(&honest, &stolen), Finding::Accuser(_)));

        // 2 sends 1 a wrong share (encrypted properly): 2 is proven at fault.
        let plain = decrypt_from(
            &stores[0].identity,
            &identities[&2],
            &ps[0].context(2, 1),
            &honest,
        )
        .expect("opens");
        let package = round2::Package::deserialize(&plain).expect("parses");
        let bad = corrupted(&package).serialize().expect("serializes");
        let wrong = encrypt_to(
            &stores[1].identity,
            &identities[&1],
            &ps[0].context(2, 1),
            &bad,
        );
        let proof = stores[0].decryption_proof(&ps[0], 2, &wrong);
        assert!(
            matches!(case(&wrong, &proof), Finding::Accused(_)),
            "a wrong share"
        );
        // What 1's round 3 reports about it is the same evidence.
        let mut to_1: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
        to_1.insert(2, wrong.clone());
        to_1.insert(3, r2[2].packages[&1].clone());
        match stores[0].dkg_round3(&ps[0], &r2[0].sealed_secret, &all1, &to_1) {
            Err(DkgError::Blame(b)) => {
                assert_eq!(b.accused, 2);
                assert_eq!(b.evidence, wrong);
                assert!(matches!(
                    case(&b.evidence, &b.decryption_proof),
                    Finding::Accused(_)
                ));
            }
            other => panic!("expected a blame of 2, got {other:?}"),
        }
        // Garbage that does not open: 2 is at fault.
        let mut garbled = honest.clone();
        let last = garbled.len() - 1;
        garbled[last] ^= 1;
        let proof = stores[0].decryption_proof(&ps[0], 2, &garbled);
        assert!(matches!(case(&garbled, &proof), Finding::Accused(_)));
        // A round-1 package with another's proof of knowledge.
        let forged = judge_blame(&BlameCase {
            session: 7,
            attempt: 0,
            threshold: 2,
            accuser: 1,
            accused: 3,
            identities: &identities,
            accused_round1: Some(&all1[&2]),
            ciphertext: None,
            decryption_proof: b"",
        });
        assert!(matches!(forged, Finding::Accused(_)), "{forged:?}");
        let valid = judge_blame(&BlameCase {
            session: 7,
            attempt: 0,
            threshold: 2,
            accuser: 1,
            accused: 3,
            identities: &identities,
            accused_round1: Some(&all1[&3]),
            ciphertext: None,
            decryption_proof: b"",
        });
        assert!(matches!(valid, Finding::Accuser(_)), "{valid:?}");
    }

    /// A t-of-n DKG straight through frost's parts 1 and 2: every
    /// participant's round-2 secret, the round-1 packages it received and
    /// the round-2 packages addressed to it.
    #[allow(clippy::type_complexity)]
    fn frost_rounds(
        t: u16,
        n: u16,
    ) -> Vec<(
        round2::SecretPackage,
        BTreeMap<Identifier, round1::Package>,
        BTreeMap<Identifier, round2::Package>,
    )> {
        let ids: Vec<Identifier> = (1..=n)
            .map(|i| Identifier::try_from(i).expect("1..=n are valid identifiers"))
            .collect();
        let r1: Vec<_> = ids
            .iter()
            .map(|id| frost_dkg::part1(*id, n, t, OsRng).expect("valid t-of-n"))
            .collect();
        let r2: Vec<_> = ids
            .iter()
            .zip(&r1)
            .map(|(id, (secret, _))| {
                let others = ids
                    .iter()
                    .zip(&r1)
                    .filter(|(j, _)| *j != id)
                    .map(|(j, (_, p))| (*j, p.clone()))
                    .collect();
                frost_dkg::part2(secret.clone(), &others).expect("honest round 1")
            })
            .collect();
        ids.iter()
            .zip(r2.iter())
            .map(|(id, (secret, _))| {
                let round1 = ids
                    .iter()
                    .zip(&r1)
                    .filter(|(j, _)| *j != id)
                    .map(|(j, (_, p))| (*j, p.clone()))
                    .collect();
                let round2 = ids
                    .iter()
                    .zip(&r2)
                    .filter(|(j, _)| *j != id)
                    .map(|(j, (_, out))| (*j, out[id].clone()))
                    .collect();
                (secret.clone(), round1, round2)
            })
            .collect()
    }

    #[test]
    fn batched_part3_is_byte_identical_to_frosts() {
        for (t, n) in [(2, 3), (5, 7), (11, 15)] {
            for (secret, round1, round2) in frost_rounds(t, n) {
                let (key, public) = frost_dkg::part3(&secret, &round1, &round2).expect("frost");
                let (our_key, our_public) =
                    part3_batched(&secret, &round1, &round2).expect("batched");
                assert_eq!(
                    our_key.serialize().expect("serializes"),
                    key.serialize().expect("serializes"),
                    "key package of {:?} in {t}-of-{n}",
                    secret.identifier()
                );
                assert_eq!(
                    our_public.serialize().expect("serializes"),
                    public.serialize().expect("serializes"),
                    "public key package in {t}-of-{n}"
                );
            }
        }
    }

    #[test]
    fn batched_part3_names_the_culprit_frost_names() {
        let mut rounds = frost_rounds(7, 10);
        let (secret, round1, round2) = &mut rounds[0];
        // Two wrong shares: frost names the first in identifier order.
        for bad in [8u16, 4] {
            let id = Identifier::try_from(bad).expect("valid identifier");
            let share = round2[&id].clone();
            round2.insert(id, corrupted(&share));
        }
        let theirs = frost_dkg::part3(secret, round1, round2).expect_err("frost refuses");
        let ours = part3_batched(secret, round1, round2).expect_err("batch refuses");
        assert_eq!(ours, theirs);
        assert_eq!(
            ours.culprits(),
            vec![Identifier::try_from(4u16).expect("valid identifier")]
        );
        // A round-1 package missing: frost's own precondition error.
        let four = Identifier::try_from(4u16).expect("valid identifier");
        round1.remove(&four);
        assert_eq!(
            part3_batched(secret, round1, round2).expect_err("refused"),
            frost_dkg::part3(secret, round1, round2).expect_err("refused")
        );
    }

    #[test]
    fn one_corrupted_share_among_many_is_caught_and_its_sender_blamed() {
        let (n, t) = (15u16, 11u16);
        let stores = keystores(n);
        let ps: Vec<DkgParams> = (1..=n).map(|i| params(&stores, t, i)).collect();
        let r1: Vec<Round1Output> = stores
            .iter()
            .zip(&ps)
            .map(|(s, p)| s.dkg_round1(p).expect("round 1"))
            .collect();
        let all1: BTreeMap<u16, Vec<u8>> = (1..=n)
            .zip(&r1)
            .map(|(i, o)| (i, o.package.clone()))
            .collect();
        let r2: Vec<Round2Output> = (0..usize::from(n))
            .map(|i| {
                stores[i]
                    .dkg_round2(&ps[i], &r1[i].sealed_secret, &all1)
                    .expect("round 2")
            })
            .collect();
        let identities = ps[0].participants.clone();
        let mut to_1: BTreeMap<u16, Vec<u8>> = (2..=n)
            .map(|j| (j, r2[usize::from(j) - 1].packages[&1].clone()))
            .collect();
        // The honest set yields a key (the batch accepts valid shares).
        stores[0]
            .dkg_round3(&ps[0], &r2[0].sealed_secret, &all1, &to_1)
            .expect("all 14 shares are valid");

        // 9 sends 1 a wrong share, properly encrypted: among 14 shares,
        // only 9 is blamed, with its ciphertext and a proof that holds.
        let plain = decrypt_from(
            &stores[0].identity,
            &identities[&9],
            &ps[0].context(9, 1),
            &to_1[&9],
        )
        .expect("opens");
        let package = round2::Package::deserialize(&plain).expect("parses");
        let bad = corrupted(&package).serialize().expect("serializes");
        let wrong = encrypt_to(
            &stores[8].identity,
            &identities[&1],
            &ps[0].context(9, 1),
            &bad,
        );
        to_1.insert(9, wrong.clone());
        match stores[0].dkg_round3(&ps[0], &r2[0].sealed_secret, &all1, &to_1) {
            Err(DkgError::Blame(b)) => {
                assert_eq!(b.accused, 9, "{b:?}");
                assert_eq!(b.evidence, wrong);
                assert!(
                    b.reason.contains("secret share"),
                    "frost's reason: {}",
                    b.reason
                );
                let finding = judge_blame(&BlameCase {
                    session: 7,
                    attempt: 0,
                    threshold: t,
                    accuser: 1,
                    accused: 9,
                    identities: &identities,
                    accused_round1: Some(&all1[&9]),
                    ciphertext: Some(&b.evidence),
                    decryption_proof: &b.decryption_proof,
                });
                assert!(matches!(finding, Finding::Accused(_)), "{finding:?}");
            }
            other => panic!("expected a blame of 9, got {other:?}"),
        }
    }

    #[test]
    fn small_multiples_match_scalar_multiplication() {
        let p = ED25519_BASEPOINT_TABLE * &Scalar::from(12_345u64);
        for m in [0u16, 1, 2, 3, 7, 64, 67, 100, 255, u16::MAX] {
            assert_eq!(mul_small(&p, m), p * Scalar::from(m), "m = {m}");
        }
    }

    #[test]
    fn the_verified_round1_parse_reads_what_frost_reads() {
        // 130 coefficients: the count takes two varint bytes.
        for (t, n) in [(2u16, 3u16), (67, 100), (130, 131)] {
            let id = Identifier::try_from(1u16).expect("valid identifier");
            let (_, package) = frost_dkg::part1(id, n, t, OsRng).expect("valid t-of-n");
            let bytes = package.serialize().expect("serializes");
            assert_eq!(parse_round1_points(&bytes), Some(package), "t = {t}");
            assert_eq!(parse_round1_points(&bytes[..bytes.len() - 1]), None);
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(parse_round1_points(&longer), None);
        }
    }

    #[test]
    fn round_three_rechecks_round1_packages_that_changed_since_round_two() {
        let stores = keystores(4);
        let ps: Vec<DkgParams> = (1..=4).map(|i| params(&stores, 3, i)).collect();
        let r1: Vec<Round1Output> = stores
            .iter()
            .zip(&ps)
            .map(|(s, p)| s.dkg_round1(p).expect("round 1"))
            .collect();
        let all1: BTreeMap<u16, Vec<u8>> = (1..=4)
            .zip(&r1)
            .map(|(i, o)| (i, o.package.clone()))
            .collect();
        let r2: Vec<Round2Output> = (0..4)
            .map(|i| {
                stores[i]
                    .dkg_round2(&ps[i], &r1[i].sealed_secret, &all1)
                    .expect("round 2")
            })
            .collect();
        let to_1: BTreeMap<u16, Vec<u8>> = (2..=4)
            .map(|j| (j, r2[usize::from(j) - 1].packages[&1].clone()))
            .collect();
        // 3's first coefficient plus a point of order 2: it decompresses,
        // so only the subgroup check frost makes can refuse it.
        let mut tampered = all1.clone();
        let package = tampered.get_mut(&3).expect("3 sent one");
        let point = CompressedEdwardsY(package[6..38].try_into().expect("32 bytes"))
            .decompress()
            .expect("a point");
        let order_two = CompressedEdwardsY({
            let mut b = [0u8; 32];
            b[0] = 0xec;
            b[1..31].fill(0xff);
            b[31] = 0x7f;
            b
        })
        .decompress()
        .expect("(0, -1) is on the curve");
        assert!(!order_two.is_torsion_free() && order_two.mul_by_cofactor().is_identity());
        package[6..38].copy_from_slice((point + order_two).compress().as_bytes());
        assert!(parse_round1_points(&tampered[&3]).is_some(), "it parses");
        match stores[0].dkg_round3(&ps[0], &r2[0].sealed_secret, &tampered, &to_1) {
            Err(DkgError::Blame(b)) => {
                assert_eq!(b.accused, 3, "{b:?}");
                assert!(
                    b.reason.contains("round-1 package does not parse"),
                    "{}",
                    b.reason
                );
            }
            other => panic!("expected a blame of 3, got {other:?}"),
        }
        // Unchanged, the same round 3 succeeds.
        stores[0]
            .dkg_round3(&ps[0], &r2[0].sealed_secret, &all1, &to_1)
            .expect("the packages round 2 verified");
    }
}
