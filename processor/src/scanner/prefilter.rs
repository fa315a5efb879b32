//! A view-tag pre-filter in front of monero-wallet's `Scanner`.
//!
//! The `Scanner` computes, for every output of every transaction, the ECDH
//! `view * tx_key` (a variable-base scalar multiplication) before it looks
//! at the output's view tag. Almost every transaction on a real chain pays
//! someone else, so that is almost all of scanning. This filter computes one
//! ECDH per transaction key and compares the one-byte view tag of each
//! output; a transaction none of whose outputs can be ours has its `extra`
//! emptied, which makes the `Scanner` skip it after counting its outputs (so
//! global output indices stay right). The `Scanner` stays the authority on
//! what is ours: the filter only ever passes on more than it must.
//!
//! What passes untouched, mirroring `Scanner::scan_transaction`: any
//! transaction that is not version 2, whose extra does not parse or names
//! no key (the `Scanner` finds nothing in those either), and any with an
//! output without a view tag (older outputs carry none) or whose view tag
//! matches under one of its keys (1 in 256 of the others, by chance).

use curve25519_dalek::{EdwardsPoint, Scalar};
use monero_wallet::extra::Extra;
use monero_wallet::interface::ScannableBlock;
use monero_wallet::io::VarInt as _;
use monero_wallet::primitives::keccak256;
use monero_wallet::transaction::{Pruned, Transaction};
use zeroize::Zeroizing;

/// The view tag of output `index` for the ECDH `view * tx_key`:
/// `keccak256("view_tag" || 8 * ecdh || varint(index))[0]`, as Monero
/// (`derive_view_tag`) and monero-wallet compute it.
fn view_tag(ecdh: &EdwardsPoint, index: usize) -> u8 {
    let mut preimage = Zeroizing::new(Vec::with_capacity(8 + 32 + 10));
    preimage.extend_from_slice(b"view_tag");
    preimage.extend_from_slice(&ecdh.mul_by_cofactor().compress().to_bytes());
    usize::write(&index, &mut *preimage).expect("writing to a Vec cannot fail");
    keccak256(&*preimage)[0]
}

/// What the filter did to one block's transactions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filtered {
    /// Transactions handed to the `Scanner` as they were.
    pub passed: usize,
    /// Transactions that cannot pay us, stripped of their keys.
    pub stripped: usize,
    /// ECDHs computed (one per transaction key, one per additional key).
    pub ecdhs: usize,
}

/// The pre-filter for one view key.
pub struct ViewTagFilter {
    view: Zeroizing<Scalar>,
}

impl std::fmt::Debug for ViewTagFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ViewTagFilter(<view key redacted>)")
    }
}

impl ViewTagFilter {
    /// A filter for the private view key `view`.
    pub fn new(view: Zeroizing<Scalar>) -> Self {
        Self { view }
    }

    /// Whether `tx` may hold an output the `Scanner` would find for this
    /// view key; counts the ECDHs computed into `ecdhs`.
    pub fn may_pay_us(&self, tx: &Transaction<Pruned>, ecdhs: &mut usize) -> bool {
        if tx.version() != 2 {
            return true;
        }
        let Ok(extra) = Extra::read(&mut tx.prefix().extra.as_slice()) else {
            return true;
        };
        let Some((keys, additional)) = extra.keys() else {
            return true;
        };
        let outputs = &tx.prefix().outputs;
        if outputs.iter().any(|o| o.view_tag.is_none()) {
            return true;
        }
        let shared: Vec<EdwardsPoint> = keys
            .iter()
            .map(|key| {
                *ecdhs += 1;
                *self.view * monero_wallet::ed25519::Point::into(*key)
            })
            .collect();
        for (index, output) in outputs.iter().enumerate() {
            let Some(tag) = output.view_tag else {
                return true;
            };
            if shared.iter().any(|ecdh| view_tag(ecdh, index) == tag) {
                return true;
            }
            if let Some(key) = additional.as_ref().and_then(|a| a.get(index)) {
                *ecdhs += 1;
                if view_tag(
                    &(*self.view * monero_wallet::ed25519::Point::into(*key)),
                    index,
                ) == tag
                {
                    return true;
                }
            }
        }
        false
    }

    /// Empties the `extra` of every transaction of `block` (not the miner's)
    /// that cannot pay us, so the `Scanner` counts its outputs and moves on.
    pub fn strip(&self, block: &mut ScannableBlock) -> Filtered {
        let mut filtered = Filtered::default();
        for tx in &mut block.transactions {
            if self.may_pay_us(tx, &mut filtered.ecdhs) {
                filtered.passed += 1;
            } else {
                tx.prefix_mut().extra.clear();
                filtered.stripped += 1;
            }
        }
        filtered
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
    use monero_wallet::block::{Block, BlockHeader};
    use monero_wallet::ed25519::{CompressedPoint, Point};
    use monero_wallet::transaction::{Input, NotPruned, Output, Timelock, TransactionPrefix};
    use monero_wallet::{Scanner, ViewPair, WalletOutput};
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng as _;

    /// One generated output: paid to us (via the transaction key or its
    /// additional key), or to someone else; with or without a view tag.
    #[derive(Debug, Clone, Copy)]
    struct OutputPlan {
        ours: bool,
        tagged: bool,
    }

    #[derive(Debug, Clone)]
    struct TxPlan {
        additional_keys: bool,
        outputs: Vec<OutputPlan>,
    }

    fn tx_plans() -> impl Strategy<Value = Vec<TxPlan>> {
        let output = (prop::bool::weighted(0.2), prop::bool::weighted(0.95))
            .prop_map(|(ours, tagged)| OutputPlan { ours, tagged });
        let tx = (any::<bool>(), prop::collection::vec(output, 1..5)).prop_map(
            |(additional_keys, outputs)| TxPlan {
                additional_keys,
                outputs,
            },
        );
        prop::collection::vec(tx, 1..8)
    }

    fn random_scalar(rng: &mut ChaCha20Rng) -> Scalar {
        Scalar::random(rng)
    }

    /// Builds a block of the planned transactions the way a sender would:
    /// from the transaction secret `r` and the recipient's public keys
    /// (`r * A`, not `a * R` as the filter and the Scanner compute it).
    fn block(
        plans: &[TxPlan],
        view_public: EdwardsPoint,
        spend_public: EdwardsPoint,
        rng: &mut ChaCha20Rng,
    ) -> (ScannableBlock, usize) {
        let mut transactions = Vec::new();
        let mut hashes = Vec::new();
        let mut ours = 0;
        for plan in plans {
            let r = random_scalar(rng);
            let additional: Vec<Scalar> = if plan.additional_keys {
                plan.outputs.iter().map(|_| random_scalar(rng)).collect()
            } else {
                Vec::new()
            };
            let mut outputs = Vec::new();
            for (index, output) in plan.outputs.iter().enumerate() {
                let secret = additional.get(index).copied().unwrap_or(r);
                let ecdh = secret * view_public;
                let (key, tag) = if output.ours {
                    ours += 1;
                    let mut derivation = ecdh.mul_by_cofactor().compress().to_bytes().to_vec();
                    usize::write(&index, &mut derivation).unwrap();
                    let shared = Scalar::from_bytes_mod_order(keccak256(&derivation));
                    (
                        &shared * ED25519_BASEPOINT_TABLE + spend_public,
                        view_tag(&ecdh, index),
                    )
                } else {
                    let mut tag = [0u8; 1];
                    rand_core::RngCore::fill_bytes(rng, &mut tag);
                    (&random_scalar(rng) * ED25519_BASEPOINT_TABLE, tag[0])
                };
                outputs.push(Output {
                    amount: Some(1_000 + u64::try_from(index).unwrap()),
                    key: CompressedPoint::from(key.compress().to_bytes()),
                    view_tag: output.tagged.then_some(tag),
                });
            }
            let mut extra = vec![1u8];
            extra.extend((&r * ED25519_BASEPOINT_TABLE).compress().to_bytes());
            if plan.additional_keys {
                extra.push(4);
                usize::write(&additional.len(), &mut extra).unwrap();
                for k in &additional {
                    extra.extend((k * ED25519_BASEPOINT_TABLE).compress().to_bytes());
                }
            }
            transactions.push(Transaction::<Pruned>::V2 {
                prefix: TransactionPrefix {
                    additional_timelock: Timelock::None,
                    inputs: vec![],
                    outputs,
                    extra,
                },
                proofs: None,
            });
            let mut hash = [0u8; 32];
            rand_core::RngCore::fill_bytes(rng, &mut hash);
            hashes.push(hash);
        }
        let miner = Transaction::<NotPruned>::V2 {
            prefix: TransactionPrefix {
                additional_timelock: Timelock::Block(70),
                inputs: vec![Input::Gen(10)],
                outputs: vec![],
                extra: vec![],
            },
            proofs: None,
        };
        let header = BlockHeader {
            hardfork_version: 16,
            hardfork_signal: 16,
            timestamp: 0,
            previous: [0; 32],
            nonce: 0,
        };
        let block = Block::new(header, miner, hashes).expect("a miner transaction with Gen");
        (
            ScannableBlock {
                block,
                transactions,
                output_index_for_first_ringct_output: Some(1_000),
            },
            ours,
        )
    }

    fn scan(scanner: &mut Scanner, block: ScannableBlock) -> Vec<WalletOutput> {
        scanner
            .scan(block)
            .expect("a well-formed block scans")
            .ignore_additional_timelock()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The filter never drops an output the Scanner finds: scanning the
        /// filtered block finds exactly what scanning the original finds
        /// (same outputs, same global indices), and that is every output
        /// the generator paid to us (which checks the generator too).
        #[test]
        fn the_filter_never_drops_an_output_the_scanner_finds(plans in tx_plans(), seed in any::<u64>()) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let view = Zeroizing::new(random_scalar(&mut rng));
            let spend = random_scalar(&mut rng);
            let view_public = &*view * ED25519_BASEPOINT_TABLE;
            let spend_public = &spend * ED25519_BASEPOINT_TABLE;
            let (original, ours) = block(&plans, view_public, spend_public, &mut rng);
            let pair = ViewPair::new(
                Point::from(spend_public),
                Zeroizing::new(monero_wallet::ed25519::Scalar::from(*view)),
            )
            .expect("a valid view pair");
            let mut scanner = Scanner::new(pair);
            let found = scan(&mut scanner, original.clone());
            prop_assert_eq!(found.len(), ours, "the Scanner finds what was paid to us");

            let filter = ViewTagFilter::new(view);
            let mut filtered = original;
            let stats = filter.strip(&mut filtered);
            prop_assert_eq!(stats.passed + stats.stripped, plans.len());
            let found_filtered = scan(&mut scanner, filtered);
            prop_assert_eq!(found_filtered, found);
            // A transaction paying us is never stripped.
            let paying = plans.iter().filter(|p| p.outputs.iter().any(|o| o.ours)).count();
            prop_assert!(stats.passed >= paying);
        }
    }

    #[test]
    fn a_transaction_for_someone_else_is_stripped_with_one_ecdh_per_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let view = Zeroizing::new(random_scalar(&mut rng));
        let view_public = &*view * ED25519_BASEPOINT_TABLE;
        let spend_public = &random_scalar(&mut rng) * ED25519_BASEPOINT_TABLE;
        // Someone else's three tagged outputs under one key; tags chosen not
        // to match ours by chance.
        let plan = TxPlan {
            additional_keys: false,
            outputs: vec![
                OutputPlan {
                    ours: false,
                    tagged: true,
                };
                3
            ],
        };
        let (mut block, _) = block(&[plan], view_public, spend_public, &mut rng);
        let extra = block.transactions[0].prefix().extra.clone();
        let r = Extra::read(&mut extra.as_slice())
            .unwrap()
            .keys()
            .unwrap()
            .0[0];
        let ecdh = *view * r.into();
        for (index, output) in block.transactions[0]
            .prefix_mut()
            .outputs
            .iter_mut()
            .enumerate()
        {
            output.view_tag = Some(view_tag(&ecdh, index).wrapping_add(1));
        }
        let filter = ViewTagFilter::new(view);
        let stats = filter.strip(&mut block);
        assert_eq!((stats.passed, stats.stripped, stats.ecdhs), (0, 1, 1));
        assert!(block.transactions[0].prefix().extra.is_empty());
        // An output without a view tag always goes through.
        block.transactions[0].prefix_mut().extra = extra;
        block.transactions[0].prefix_mut().outputs[1].view_tag = None;
        let stats = filter.strip(&mut block);
        assert_eq!((stats.passed, stats.stripped), (1, 0));
    }
}
