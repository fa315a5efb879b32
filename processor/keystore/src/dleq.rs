//! A proof that revealed X25519 shared secrets are right: the DKG blame's
//! evidence. No crate in the workspace offers a DLEq proof over
//! curve25519-dalek points (Serai's `dleq` is not among them), so this is a
//! small Chaum-Pedersen proof, domain-separated and bound to its context.
//!
//! Statement: for the prover's X25519 key (clamped scalar `c = 8k`,
//! public `u(c·G)`) and the points `P_1..P_m` (Montgomery u-coordinates,
//! mapped to Edwards), the revealed points `D_j` satisfy `D_j = k·(8·P_j)`
//! with the same `k` as `A = k·(8·G)` and `u(A)` = the prover's public key.
//! Then `u(D_j)` is exactly X25519(secret, P_j): what the prover's
//! `diffie_hellman` computes, since `c·P = k·(8·P)`. Revealed points must be
//! torsion-free, so a point off by a small-order component cannot verify.
//!
//! Encoding: `A || D_1 || .. || D_m || e || s` (compressed points, scalars),
//! `e` the challenge and `s = r + e·k`.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

const DOMAIN: &[u8] = b"monero-custody/x25519-dleq/v1";

/// A Montgomery u-coordinate as an Edwards point with its cofactor cleared
/// (`None`: not a point of the curve, e.g. on the twist).
pub fn cleared_base(u: &[u8; 32]) -> Option<EdwardsPoint> {
    MontgomeryPoint(*u)
        .to_edwards(0)
        .map(|p| p.mul_by_cofactor())
}

fn challenge(
    context: &[u8],
    bases: &[EdwardsPoint],
    claims: &[EdwardsPoint],
    nonces: &[EdwardsPoint],
) -> Scalar {
    let mut hash = Sha512::new();
    hash.update(DOMAIN);
    hash.update((context.len() as u64).to_le_bytes());
    hash.update(context);
    hash.update((bases.len() as u64).to_le_bytes());
    for point in bases.iter().chain(claims).chain(nonces) {
        hash.update(point.compress().as_bytes());
    }
    Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
}

/// Proves the X25519 shared secrets of `secret` with each of `others`
/// (Montgomery u-coordinates). `None` if one of them is not a curve point.
pub fn prove(secret: &Zeroizing<[u8; 32]>, others: &[[u8; 32]], context: &[u8]) -> Option<Vec<u8>> {
    let clamped = Zeroizing::new(clamp_integer(**secret));
    // c = 8k as integers, so k = c / 8 (mod the group order).
    let k = Zeroizing::new(Scalar::from_bytes_mod_order(*clamped) * Scalar::from(8_u8).invert());
    let mut bases = vec![ED25519_BASEPOINT_POINT.mul_by_cofactor()];
    for u in others {
        bases.push(cleared_base(u)?);
    }
    let claims: Vec<EdwardsPoint> = bases.iter().map(|b| b * *k).collect();
    let mut wide = Zeroizing::new([0_u8; 64]);
    OsRng.fill_bytes(wide.as_mut_slice());
    let r = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide));
    let nonces: Vec<EdwardsPoint> = bases.iter().map(|b| b * *r).collect();
    let e = challenge(context, &bases, &claims, &nonces);
    let s = *r + e * *k;
    let mut out = Vec::with_capacity(32 * (claims.len() + 2));
    for claim in &claims {
        out.extend_from_slice(claim.compress().as_bytes());
    }
    out.extend_from_slice(e.as_bytes());
    out.extend_from_slice(s.as_bytes());
    Some(out)
}

/// Why a proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// One of the other keys is not a curve point: no proof can exist.
    #[error("a key is not a point of the curve")]
    NotAPoint,
    /// The proof is malformed or does not verify.
    #[error("the proof does not verify: {0}")]
    Invalid(&'static str),
}

/// Verifies a [`prove`] proof for the X25519 public key `public` and
/// `others`, returning the proven shared secrets (X25519 outputs), in
/// order.
pub fn verify(
    public: &[u8; 32],
    others: &[[u8; 32]],
    context: &[u8],
    proof: &[u8],
) -> Result<Vec<[u8; 32]>, ProofError> {
    let mut bases = vec![ED25519_BASEPOINT_POINT.mul_by_cofactor()];
    for u in others {
        bases.push(cleared_base(u).ok_or(ProofError::NotAPoint)?);
    }
    if proof.len() != 32 * (bases.len() + 2) {
        return Err(ProofError::Invalid("wrong length"));
    }
    let chunk = |i: usize| -> [u8; 32] {
        let mut b = [0_u8; 32];
        b.copy_from_slice(&proof[32 * i..32 * (i + 1)]);
        b
    };
    let mut claims = Vec::with_capacity(bases.len());
    for i in 0..bases.len() {
        let point = CompressedEdwardsY(chunk(i))
            .decompress()
            .ok_or(ProofError::Invalid("a revealed point does not decompress"))?;
        if !point.is_torsion_free() {
            return Err(ProofError::Invalid(
                "a revealed point has a small-order part",
            ));
        }
        claims.push(point);
    }
    if claims[0].to_montgomery().to_bytes() != *public {
        return Err(ProofError::Invalid("it is not about the prover's key"));
    }
    let scalar = |i: usize| {
        Option::<Scalar>::from(Scalar::from_canonical_bytes(chunk(i)))
            .ok_or(ProofError::Invalid("a scalar is not canonical"))
    };
    let e = scalar(bases.len())?;
    let s = scalar(bases.len() + 1)?;
    let nonces: Vec<EdwardsPoint> = bases
        .iter()
        .zip(&claims)
        .map(|(b, y)| b * s - y * e)
        .collect();
    if challenge(context, &bases, &claims, &nonces) != e {
        return Err(ProofError::Invalid("the challenge does not match"));
    }
    Ok(claims[1..]
        .iter()
        .map(|d| d.to_montgomery().to_bytes())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x25519_dalek::{PublicKey, StaticSecret};

    fn key() -> (Zeroizing<[u8; 32]>, [u8; 32]) {
        let secret = StaticSecret::random_from_rng(OsRng);
        (
            Zeroizing::new(secret.to_bytes()),
            *PublicKey::from(&secret).as_bytes(),
        )
    }

    #[test]
    fn a_proof_reveals_exactly_the_x25519_shared_secrets() {
        let (secret, public) = key();
        let (_, a) = key();
        let (_, b) = key();
        let proof = prove(&secret, &[a, b], b"ctx").expect("curve points");
        let shared = verify(&public, &[a, b], b"ctx", &proof).expect("verifies");
        let ours = StaticSecret::from(*secret);
        assert_eq!(
            shared[0],
            *ours.diffie_hellman(&PublicKey::from(a)).as_bytes()
        );
        assert_eq!(
            shared[1],
            *ours.diffie_hellman(&PublicKey::from(b)).as_bytes()
        );
    }

    #[test]
    fn a_forged_or_misplaced_proof_is_refused() {
        let (secret, public) = key();
        let (_, a) = key();
        let (_, b) = key();
        let proof = prove(&secret, &[a, b], b"ctx").expect("curve points");
        assert!(verify(&public, &[a, b], b"other context", &proof).is_err());
        assert!(
            verify(&public, &[b, a], b"ctx", &proof).is_err(),
            "other points"
        );
        let (_, stranger) = key();
        assert!(
            verify(&stranger, &[a, b], b"ctx", &proof).is_err(),
            "another prover"
        );
        // A wrong shared secret with a proof made for it by someone who
        // does not know the key: swap in another point, keep the rest.
        let (other_secret, _) = key();
        let forged = prove(&other_secret, &[a, b], b"ctx").expect("curve points");
        let mut spliced = proof.clone();
        spliced[32..64].copy_from_slice(&forged[32..64]);
        assert!(verify(&public, &[a, b], b"ctx", &spliced).is_err());
        // A revealed point off by a small-order component.
        let mut torsion = proof.clone();
        let d = CompressedEdwardsY(torsion[32..64].try_into().expect("32 bytes"))
            .decompress()
            .expect("a point");
        let eight_torsion = curve25519_dalek::constants::EIGHT_TORSION[1];
        torsion[32..64].copy_from_slice((d + eight_torsion).compress().as_bytes());
        assert_eq!(
            verify(&public, &[a, b], b"ctx", &torsion),
            Err(ProofError::Invalid(
                "a revealed point has a small-order part"
            ))
        );
        for i in 0..proof.len() {
            let mut flipped = proof.clone();
            flipped[i] ^= 1;
            assert!(
                verify(&public, &[a, b], b"ctx", &flipped).is_err(),
                "byte {i}"
            );
        }
        assert!(verify(&public, &[a, b], b"ctx", &proof[..proof.len() - 1]).is_err());
    }
}
