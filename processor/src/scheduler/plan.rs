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

use monero_wallet::interface::FeeRate;

use crate::accounts::{CHANGE_SUBADDRESS, FORWARD_SUBADDRESS};
use crate::amount::Amount;

/// Outputs of one transaction, change included (Monero's bulletproof limit).
pub const MAX_OUTPUTS: usize = 16;
/// Ring size (decoys + the real output).
pub const RING_LEN: u8 = 16;

/// Most inputs one plan spends, payout or consolidation. A protocol
/// constant: a leader never plans more and a follower refuses more, so every
/// processor draws the line at the same place.
///
/// The hard bound is the weight limit monero-wallet (and wallet2) enforce,
/// half the 300 kB no-penalty block size less 600: measured by
/// `weight_limit_allows_this_many_inputs` below with FROST-CLSAG 16-member
/// rings, mainnet-sized ring offsets and the most outputs a plan has (16),
/// it admits 207 inputs (214 with two outputs). The cap sits well under it
/// because every input costs each signer a FROST-CLSAG machine (nonces, a
/// DLEq proof, a share) and each follower a ring check against its daemon,
/// and a plan's round-trip through the coordinator grows with it: 64 keeps
/// one signing round to seconds and a proposal far below the link's message
/// limit, at the price of a consolidation per 62 outputs beyond it, whose
/// fee is almost all per-input weight that a single larger transaction
/// would pay too.
pub const MAX_INPUTS: usize = 64;

/// What a plan does. Not stored: a plan is a consolidation exactly when it
/// names no burn, which the proposal's `burn_ids` carry to every follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// Pays burns; change returns to the group.
    Payout,
    /// Merges the group's outputs into its change subaddress; pays no burn.
    Consolidation,
}

impl PlanKind {
    /// The kind of a plan naming `burn_ids`.
    pub fn of(burn_ids: &[String]) -> Self {
        if burn_ids.is_empty() {
            Self::Consolidation
        } else {
            Self::Payout
        }
    }
}

impl std::fmt::Display for PlanKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Payout => "payout",
            Self::Consolidation => "consolidation",
        })
    }
}

/// A conservative fee for a transaction with `inputs` inputs and the maximum
/// outputs, to decide which burns fit: 1,500 weight per input (a 16-member
/// CLSAG input weighs about 700) and 3,000 for the rest.
/// (Saturating: a margin too large for 64 bits is one no balance covers.)
pub fn fee_margin(fee_rate: FeeRate, inputs: usize) -> Amount {
    let weight = u64::try_from(inputs)
        .unwrap_or(u64::MAX)
        .saturating_mul(1_500)
        .saturating_add(3_000);
    Amount::from_piconero(fee_rate.per_weight().saturating_mul(weight))
}

/// Whether an amount can be paid from a set of outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cover {
    /// By one transaction: the [`MAX_INPUTS`] largest outputs cover it and
    /// its fee margin.
    OneTransaction,
    /// The whole balance covers it (and the margin of spending every
    /// output, which also covers the consolidations' fees), no
    /// [`MAX_INPUTS`] outputs do: consolidate first.
    AfterConsolidation,
    /// Not at all: it waits for more funds.
    No,
}

/// What a set of spendable outputs can pay, in one transaction and in all.
#[derive(Debug, Clone, Copy)]
pub struct Reach {
    /// The sum of the [`MAX_INPUTS`] largest.
    one_transaction: Amount,
    /// The sum of all.
    balance: Amount,
    /// The fee margin of a transaction spending the largest ones.
    one_margin: Amount,
    /// The fee margin of spending every output.
    all_margin: Amount,
    /// How many outputs there are.
    outputs: usize,
}

impl Reach {
    /// The reach of outputs of these amounts.
    pub fn new(amounts: impl IntoIterator<Item = u64>, fee_rate: FeeRate) -> Result<Self, String> {
        let mut amounts: Vec<u64> = amounts.into_iter().collect();
        amounts.sort_unstable_by(|a, b| b.cmp(a));
        let top = amounts.len().min(MAX_INPUTS);
        let sum =
            |what, of: &[u64]| Amount::sum(what, of.iter().copied()).map_err(|e| e.to_string());
        Ok(Self {
            one_transaction: sum("the largest spendable outputs", &amounts[..top])?,
            balance: sum("the spendable balance", &amounts)?,
            one_margin: fee_margin(fee_rate, top),
            all_margin: fee_margin(fee_rate, amounts.len()),
            outputs: amounts.len(),
        })
    }

    /// How `amount` can be paid.
    pub fn covers(&self, amount: Amount) -> Cover {
        let within = |margin: Amount, have: Amount| {
            amount.checked_add(margin).is_some_and(|need| need <= have)
        };
        if within(self.one_margin, self.one_transaction) {
            Cover::OneTransaction
        } else if self.outputs > MAX_INPUTS && within(self.all_margin, self.balance) {
            Cover::AfterConsolidation
        } else {
            Cover::No
        }
    }
}

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
    fee_rate: FeeRate,
) -> Result<SignableTransaction, SendError> {
    build_to(
        group_key,
        pair,
        CHANGE_SUBADDRESS,
        inputs,
        payments,
        fee_rate,
    )
}

/// Builds the transaction paying `payments` from `inputs` of the key
/// `group_key`, change to subaddress `change` of `change_pair` (the group's
/// own, or the key it forwards to).
fn build_to(
    group_key: &[u8; 32],
    change_pair: &ViewPair,
    change: (u32, u32),
    inputs: Vec<OutputWithDecoys>,
    payments: Vec<(MoneroAddress, u64)>,
    fee_rate: FeeRate,
) -> Result<SignableTransaction, SendError> {
    let ovk = outgoing_view_key(group_key, &inputs);
    let change = Change::new(
        change_pair.clone(),
        SubaddressIndex::new(change.0, change.1),
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

/// Builds a consolidation: `inputs` (the group's own outputs) merged into the
/// group's change subaddress, no burn paid, the fee paid from the inputs
/// (see [`build_merge`]).
pub fn build_consolidation(
    group_key: &[u8; 32],
    pair: &ViewPair,
    inputs: Vec<OutputWithDecoys>,
    fee_rate: FeeRate,
) -> Result<SignableTransaction, SendError> {
    build_merge(group_key, pair, CHANGE_SUBADDRESS, inputs, fee_rate)
}

/// Builds a forward: `inputs` (outputs of the key `group_key`, which has
/// handed over) moved whole to the forwarding subaddress of the key it
/// forwards to (`target`), whose scanner takes either output as the group's
/// own funds, never as a deposit (see [`build_merge`]).
pub fn build_forward(
    group_key: &[u8; 32],
    target: &ViewPair,
    inputs: Vec<OutputWithDecoys>,
    fee_rate: FeeRate,
) -> Result<SignableTransaction, SendError> {
    build_merge(group_key, target, FORWARD_SUBADDRESS, inputs, fee_rate)
}

/// `inputs` of the key `group_key` moved whole to subaddress `index` of
/// `target`, no burn paid, the fee paid from the inputs.
///
/// Monero requires at least two outputs and monero-wallet at least one that
/// is not change, so the merged value leaves as two outputs, both to that
/// subaddress: a payment of half the inputs' sum, rounded down, and the
/// change (the other half less the fee). Two halves rather than a dummy
/// zero-value output, so neither output is dust a later plan would pay a fee
/// to spend. Every amount is a function of the inputs and the fee rate
/// alone: a follower rebuilds the same bytes.
fn build_merge(
    group_key: &[u8; 32],
    target: &ViewPair,
    index: (u32, u32),
    inputs: Vec<OutputWithDecoys>,
    fee_rate: FeeRate,
) -> Result<SignableTransaction, SendError> {
    let total: u128 = inputs
        .iter()
        .map(|i| u128::from(i.commitment().amount))
        .sum();
    let half = u64::try_from(total / 2).map_err(|_| SendError::AmountsUnrepresentable {
        in_amount: total,
        out_amount: total / 2,
    })?;
    let to = SubaddressIndex::new(index.0, index.1).ok_or(SendError::InvalidInputs)?;
    let to = target.subaddress(BURN_NETWORK, to);
    build_to(group_key, target, index, inputs, vec![(to, half)], fee_rate)
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
    if count == 0 || count > MAX_INPUTS as u64 {
        return Err(format!(
            "the plan spends {count} inputs; a plan spends 1 to {MAX_INPUTS}"
        ));
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

    /// A spendable-looking input: the `n+1`th multiple of the basepoint as
    /// key, the basepoint as every ring member, mainnet-sized ring offsets (the first an absolute index near
    /// today's 150 million outputs, the rest gaps of up to two million), so
    /// the weight is what a real 16-member ring weighs.
    fn synthetic_input(n: u64, amount: u64) -> OutputWithDecoys {
        // Distinct keys: monero-wallet refuses an input spent twice.
        let key = (curve25519_dalek::constants::ED25519_BASEPOINT_POINT
            * curve25519_dalek::Scalar::from(n + 1))
        .compress()
        .to_bytes();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&key); // output key
        bytes.extend_from_slice(&[0; 32]); // key offset (scalar zero)
        bytes.extend_from_slice(&[0; 32]); // commitment mask (scalar zero)
        bytes.extend_from_slice(&amount.to_le_bytes());
        let mut offsets = vec![150_000_000u64];
        offsets.extend(std::iter::repeat_n(2_000_000u64, usize::from(RING_LEN) - 1));
        let ring = vec![
            [
                monero_ed25519::Point::from(curve25519_dalek::constants::ED25519_BASEPOINT_POINT),
                monero_ed25519::Point::from(curve25519_dalek::constants::ED25519_BASEPOINT_POINT),
            ];
            usize::from(RING_LEN)
        ];
        let decoys = monero_wallet::ringct::clsag::Decoys::new(offsets, 0, ring)
            .expect("16 increasing offsets and 16 members are a valid ring");
        bytes.extend(decoys.serialize());
        OutputWithDecoys::read(&mut bytes.as_slice()).expect("the bytes were written as read")
    }

    /// The most inputs a transaction with `payments` payments (plus change)
    /// may spend before monero-wallet refuses it as too large.
    fn weight_limit(payments: usize) -> usize {
        let group_key = curve25519_dalek::constants::ED25519_BASEPOINT_COMPRESSED.to_bytes();
        let pair = crate::accounts::view_pair(&group_key).expect("the basepoint is a point");
        let to = parse_address(
            "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A",
        )
        .expect("Monero's donation address parses");
        let fee_rate =
            monero_wallet::interface::FeeRate::new(1, 1).expect("non-zero rate and mask");
        let mut fits = 0;
        for count in 1..=400usize {
            let inputs = (0..count as u64)
                .map(|n| synthetic_input(n, 1_000_000_000_000))
                .collect();
            match build(&group_key, &pair, inputs, vec![(to, 1); payments], fee_rate) {
                Ok(_) => fits = count,
                Err(SendError::TooLargeTransaction) => break,
                Err(e) => panic!("{count} inputs: {e}"),
            }
        }
        fits
    }

    #[test]
    fn weight_limit_allows_this_many_inputs() {
        let most_outputs = weight_limit(MAX_OUTPUTS - 1);
        let two_outputs = weight_limit(1);
        eprintln!(
            "weight limit: {most_outputs} inputs with {MAX_OUTPUTS} outputs, {two_outputs} with 2"
        );
        assert!(
            MAX_INPUTS <= most_outputs,
            "MAX_INPUTS {MAX_INPUTS} exceeds the weight limit ({most_outputs} inputs with {MAX_OUTPUTS} outputs)"
        );
        assert_eq!(
            (most_outputs, two_outputs),
            (207, 214),
            "the measured limits the docs quote"
        );
    }

    #[test]
    fn consolidations_pay_only_the_change_subaddress() {
        let group_key = curve25519_dalek::constants::ED25519_BASEPOINT_COMPRESSED.to_bytes();
        let pair = crate::accounts::view_pair(&group_key).expect("the basepoint is a point");
        let fee_rate =
            monero_wallet::interface::FeeRate::new(1, 1).expect("non-zero rate and mask");
        let inputs: Vec<_> = (0..MAX_INPUTS as u64)
            .map(|n| synthetic_input(n, 1_000_000))
            .collect();
        let a = build_consolidation(&group_key, &pair, inputs.clone(), fee_rate)
            .expect("64 inputs fit and cover the fee");
        let b = build_consolidation(&group_key, &pair, inputs, fee_rate).expect("as above");
        assert_eq!(a.serialize(), b.serialize(), "deterministic");
        let own = pair.subaddress(
            BURN_NETWORK,
            SubaddressIndex::new(CHANGE_SUBADDRESS.0, CHANGE_SUBADDRESS.1).expect("(0, 1)"),
        );
        let text = hex::encode(a.serialize());
        assert!(
            text.contains(&hex::encode(own.to_string().as_bytes())),
            "the payment goes to the group's own change subaddress"
        );
        // Too many inputs is refused by the follower's reader.
        let mut too_many = a.serialize();
        too_many[33] = u8::try_from(MAX_INPUTS + 1).expect("65 fits a byte");
        assert!(inputs_of(&too_many).is_err());
        assert_eq!(inputs_of(&a.serialize()).map(|i| i.len()), Ok(MAX_INPUTS));
        // Dust that cannot pay its own fee is not consolidated.
        let dust: Vec<_> = (0..4).map(|n| synthetic_input(n, 1)).collect();
        assert!(build_consolidation(&group_key, &pair, dust, fee_rate).is_err());
    }

    #[test]
    fn plan_ids_bind_the_bytes() {
        assert_ne!(plan_id(b"a"), plan_id(b"b"));
        assert!(inputs_of(&[0; 10]).is_err(), "truncated plans are refused");
    }
}
