//! Building a payout transaction, and checking one a leader proposed.
//!
//! A follower does not trust the leader's bytes: it reads the inputs out of
//! them, checks each is one of its own spendable outputs, then rebuilds the
//! transaction from those inputs, the burns the plan names (as its own queue
//! holds them), its own change subaddress, the derived outgoing view key and
//! the leader's fee rate, and accepts only an identical transaction. Any extra
//! payment, changed amount or foreign change address makes them differ.

use monero_wallet::address::{MoneroAddress, Network, SubaddressIndex};
use monero_wallet::ringct::RctType;
use monero_wallet::send::{Change, SendError, SignableTransaction};
use monero_wallet::{OutputWithDecoys, ViewPair, WalletOutput};
use sha2::{Digest as _, Sha256, Sha512};
use zeroize::Zeroizing;

use crate::scanner::CHANGE_SUBADDRESS;

/// Outputs of one transaction, change included (Monero's bulletproof limit).
pub const MAX_OUTPUTS: usize = 16;
/// Ring size (decoys + the real output).
pub const RING_LEN: u8 = 16;

/// A plan's id: a hash of its serialized `SignableTransaction`.
pub fn plan_id(signable: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"monero-custody/plan-id/v1");
    hash.update(signable);
    hash.finalize().into()
}

/// The leader of the window starting at a block: every processor computes
/// the same index in 1..=n from the group key and the block hash.
pub fn leader(group_key: &[u8; 32], start_hash: &[u8], n: u16) -> u16 {
    let mut hash = Sha256::new();
    hash.update(b"monero-custody/window-leader/v1");
    hash.update(group_key);
    hash.update(start_hash);
    let digest: [u8; 32] = hash.finalize().into();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    let n = u64::from(n.max(1));
    // The remainder is below n, which fits in u16.
    u16::try_from(u64::from_le_bytes(head) % n).unwrap_or(0) + 1
}

/// The outgoing view key of a plan: bound to the group's view key and the
/// inputs, so leader and followers derive the same one and no two
/// conflicting plans share it.
pub fn outgoing_view_key(group_key: &[u8; 32], inputs: &[OutputWithDecoys]) -> Zeroizing<[u8; 32]> {
    let mut hash = Sha512::new();
    hash.update(b"monero-custody/outgoing-view-key/v1");
    hash.update(crate::keystore::dkg::view_key(group_key).as_bytes());
    for input in inputs {
        hash.update(input.key().compress().to_bytes());
    }
    let digest = hash.finalize();
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&digest[..32]);
    key
}

/// The network burns are paid on. The processors derive mainnet addresses
/// and pay mainnet-prefixed ones, on regtest too.
pub const BURN_NETWORK: Network = Network::Mainnet;

/// Parses a burn's destination (regtest uses mainnet prefixes).
pub fn parse_address(address: &str) -> Result<MoneroAddress, String> {
    MoneroAddress::from_str(BURN_NETWORK, address).map_err(|e| format!("invalid address: {e}"))
}

/// Checks a burn's destination where a caller submits it (the coordinator's
/// `SubmitBurn`), exactly as [`parse_address`] will take it, with a message
/// naming the field, the value and what to give instead.
pub fn check_burn_address(address: &str) -> Result<MoneroAddress, String> {
    use monero_wallet::address::AddressError;
    if address.is_empty() {
        return Err(format!(
            "monero_address is required: give the {BURN_NETWORK:?} Monero address to pay"
        ));
    }
    MoneroAddress::from_str(BURN_NETWORK, address).map_err(|e| match e {
        AddressError::DifferentNetwork { actual, expected } => format!(
            "monero_address {address:?} is a {actual:?} address, but burns are paid on \
             {expected:?} (the processors use {expected:?} prefixes, on regtest too): \
             give a {expected:?} address"
        ),
        other => format!(
            "monero_address {address:?} is not a Monero address ({other}): give a \
             {BURN_NETWORK:?} standard, subaddress or integrated address"
        ),
    })
}

/// Builds the transaction paying `payments` from `inputs`, change to the
/// group's change subaddress.
pub fn build(
    group_key: &[u8; 32],
    pair: &ViewPair,
    inputs: Vec<OutputWithDecoys>,
    payments: Vec<(MoneroAddress, u64)>,
    fee_rate: monero_wallet::interface::FeeRate,
) -> Result<SignableTransaction, SendError> {
    let ovk = outgoing_view_key(group_key, &inputs);
    let change = Change::new(
        pair.clone(),
        SubaddressIndex::new(CHANGE_SUBADDRESS.0, CHANGE_SUBADDRESS.1),
    );
    SignableTransaction::new(
        RctType::ClsagBulletproofPlus,
        ovk,
        inputs,
        payments,
        change,
        vec![],
        fee_rate,
    )
}

fn read_varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or_else(|| "truncated length".to_owned())?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("length overflows".into())
}

/// The inputs (with their rings) a serialized `SignableTransaction` spends.
pub fn inputs_of(signable: &[u8]) -> Result<Vec<OutputWithDecoys>, String> {
    // rct type (1 byte), outgoing view key (32), then the inputs as a vector.
    let mut rest = signable
        .get(33..)
        .ok_or_else(|| "the plan's transaction is truncated".to_owned())?;
    let count = read_varint(&mut rest)?;
    if count == 0 || count > 64 {
        return Err(format!("the plan spends {count} inputs"));
    }
    (0..count)
        .map(|i| OutputWithDecoys::read(&mut rest).map_err(|e| format!("input {i}: {e}")))
        .collect()
}

/// Whether a proposed input is exactly this stored output of ours.
pub fn same_output(input: &OutputWithDecoys, ours: &WalletOutput) -> bool {
    input.key() == ours.key()
        && input.key_offset() == ours.key_offset()
        && input.commitment().amount == ours.commitment().amount
        && input.commitment().commit() == ours.commitment().commit()
}

/// Whether an on-chain transaction's rings are exactly the plan's (each
/// input's ring offsets, in any order): among plans whose eventuality a
/// transaction matches, this picks the one actually signed.
pub fn rings_match(
    tx: &monero_wallet::transaction::Transaction<monero_wallet::transaction::Pruned>,
    inputs: &[OutputWithDecoys],
) -> bool {
    use monero_wallet::transaction::Input;
    let mut on_chain: Vec<&[u64]> = tx
        .prefix()
        .inputs
        .iter()
        .filter_map(|i| match i {
            Input::ToKey { key_offsets, .. } => Some(key_offsets.as_slice()),
            Input::Gen(_) => None,
        })
        .collect();
    let mut planned: Vec<&[u64]> = inputs.iter().map(|i| i.decoys().offsets()).collect();
    on_chain.sort_unstable();
    planned.sort_unstable();
    on_chain == planned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaders_are_spread_and_in_range() {
        let key = [9u8; 32];
        let mut seen = [0u32; 4];
        for i in 0u8..=255 {
            let l = leader(&key, &[i; 32], 3);
            assert!((1..=3).contains(&l), "leader {l} out of range");
            seen[usize::from(l)] += 1;
        }
        assert!(
            seen[1..].iter().all(|&c| c > 50),
            "each of 3 leads some windows: {seen:?}"
        );
        assert_eq!(leader(&key, &[1; 32], 3), leader(&key, &[1; 32], 3));
    }

    #[test]
    fn varints_parse_like_monero_writes_them() {
        let mut bytes: &[u8] = &[0x96, 0x01, 0xff];
        assert_eq!(read_varint(&mut bytes), Ok(150));
        assert_eq!(bytes, &[0xff]);
        let mut truncated: &[u8] = &[0x80];
        assert!(read_varint(&mut truncated).is_err());
    }

    #[test]
    fn burn_addresses_are_checked_with_the_network() {
        // Monero's donation address (mainnet).
        let mainnet = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
        let parsed = check_burn_address(mainnet).expect("a mainnet address is payable");
        assert!(parse_address(mainnet).is_ok());
        let testnet = MoneroAddress::new(
            Network::Testnet,
            *parsed.kind(),
            parsed.spend(),
            parsed.view(),
        )
        .to_string();
        let err = check_burn_address(&testnet).expect_err("a testnet address is refused");
        assert!(
            err.contains("Testnet address") && err.contains("give a Mainnet address"),
            "{err}"
        );
        let err = check_burn_address("notanaddress").expect_err("garbage is refused");
        assert!(
            err.contains("\"notanaddress\" is not a Monero address"),
            "{err}"
        );
        assert!(check_burn_address("").is_err());
    }

    #[test]
    fn plan_ids_bind_the_bytes() {
        assert_ne!(plan_id(b"a"), plan_id(b"b"));
        assert!(inputs_of(&[0; 10]).is_err(), "truncated plans are refused");
    }
}
