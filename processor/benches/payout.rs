//! Payout latency at 2-of-3: the processor's path from plan to a signed,
//! published transaction beside monero-wallet-rpc's native 2-of-3 multisig
//! doing the same (`transfer` -> `sign_multisig` -> `submit_multisig`), for
//! 1 and 16 inputs, on the same regtest chain, in one run.
//!
//! `cargo bench -p processor --bench payout [-- --runs 3]`
//!
//! Setup is not timed: a 2-of-3 key made by the processor's own DKG rounds
//! (in memory), the wallets' multisig key exchange, funding both with 1 XMR
//! outputs, scanning and the wallets' multisig-info exchange between runs.
//! A block is mined after every run, so every run spends fresh inputs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use common::monero::{Monerod, WalletRpc, elsewhere};
use monero_wallet::interface::{FeePriority, ProvidesTransactions as _};
use monero_wallet::send::SignableTransaction;
use monero_wallet::{OutputWithDecoys, Scanner, WalletOutput};
use processor::keystore::clsag::KeyShape;
use processor::keystore::dkg::{DkgParams, GeneratedKey};
use processor::keystore::{Kek, Keystore};
use processor::scheduler::plan;

/// Every funding output: 1 XMR.
const UNIT: u64 = 1_000_000_000_000;
/// Session of the benchmark's key.
const SESSION: u64 = 0;

fn arg(name: &str, default: u64) -> u64 {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one case pays the user: half a unit more than `inputs - 1` units,
/// so exactly `inputs` of the 1 XMR outputs are needed.
fn payment(inputs: usize) -> u64 {
    (inputs as u64 - 1) * UNIT + UNIT / 2
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn secs(times: &[Duration]) -> String {
    times
        .iter()
        .map(|t| format!("{:.3}", t.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A 2-of-3 key from the processor's own DKG rounds, every party in memory.
fn generate_key() -> (Vec<Keystore>, Vec<GeneratedKey>) {
    let stores: Vec<Keystore> = (0..3)
        .map(|_| Keystore::in_memory(Kek::generate()))
        .collect();
    let participants: BTreeMap<u16, [u8; 32]> = (1..=3_u16)
        .zip(&stores)
        .map(|(i, s)| (i, s.identity_public()))
        .collect();
    let params: Vec<DkgParams> = (1..=3)
        .map(|i| DkgParams {
            session: SESSION,
            attempt: 0,
            threshold: 2,
            own_index: i,
            participants: participants.clone(),
        })
        .collect();
    let r1: Vec<_> = stores
        .iter()
        .zip(&params)
        .map(|(s, p)| s.dkg_round1(p).unwrap())
        .collect();
    let all1: BTreeMap<u16, Vec<u8>> = (1..=3_u16)
        .zip(&r1)
        .map(|(i, o)| (i, o.package.clone()))
        .collect();
    let r2: Vec<_> = (0..3)
        .map(|i| {
            stores[i]
                .dkg_round2(&params[i], &r1[i].sealed_secret, &all1)
                .unwrap()
        })
        .collect();
    let keys: Vec<GeneratedKey> = (0..3)
        .map(|i| {
            let me = params[i].own_index;
            let to_me: BTreeMap<u16, Vec<u8>> = (1..=3_u16)
                .zip(&r2)
                .filter(|(j, _)| *j != me)
                .map(|(j, o)| (j, o.packages[&me].clone()))
                .collect();
            stores[i]
                .dkg_round3(&params[i], &r2[i].sealed_secret, &all1, &to_me)
                .unwrap()
        })
        .collect();
    assert!(keys.iter().all(|k| k.group_key == keys[0].group_key));
    (stores, keys)
}

/// Three monero-wallet-rpc processes holding one 2-of-3 multisig wallet.
struct Multisig {
    wallets: Vec<WalletRpc>,
}

impl Multisig {
    async fn start(dir: &Path, daemon: &str) -> Self {
        let mut wallets = Vec::new();
        for i in 0..3 {
            let own = dir.join(format!("multisig{i}"));
            let wallet = WalletRpc::start_with(&own, Some(daemon)).await;
            let name = format!("m{i}");
            wallet.create_wallet(&name).await;
            // wallet-rpc 0.18 refuses multisig key exchange unless the keys
            // file says `enable-multisig-experimental`; only the CLI sets it.
            wallet.client.close_wallet().await.unwrap();
            let mut cli =
                std::process::Command::new(common::tools::monero_tool("monero-wallet-cli"))
                    .arg("--offline")
                    .arg("--wallet-file")
                    .arg(own.join("wallets").join(&name))
                    .args(["--password", ""])
                    .arg("--log-file")
                    .arg(own.join("wallet-cli.log"))
                    .args(["--command", "set", "enable-multisig-experimental", "1"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("monero-wallet-cli from the Debian `monero` package");
            // It asks for the (empty) password once more.
            cli.stdin.take().unwrap().write_all(b"\n").unwrap();
            assert!(cli.wait().unwrap().success(), "monero-wallet-cli set");
            wallet
                .client
                .open_wallet(name.clone(), Some(String::new()))
                .await
                .unwrap();
            wallet
                .call("auto_refresh", serde_json::json!({"enable": false}))
                .await;
            wallets.push(wallet);
        }
        let mut messages = Vec::new();
        for wallet in &wallets {
            messages.push(
                wallet.call("prepare_multisig", serde_json::json!({})).await["multisig_info"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        let others = |messages: &[String], i: usize| -> Vec<String> {
            messages
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, m)| m.clone())
                .collect()
        };
        let mut next = Vec::new();
        for (i, wallet) in wallets.iter().enumerate() {
            next.push(
                wallet
                    .call(
                        "make_multisig",
                        serde_json::json!({"multisig_info": others(&messages, i), "threshold": 2, "password": ""}),
                    )
                    .await["multisig_info"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        messages = next;
        for _ in 0..5 {
            let mut ready = true;
            for wallet in &wallets {
                ready &= wallet.call("is_multisig", serde_json::json!({})).await["ready"]
                    .as_bool()
                    .unwrap();
            }
            if ready {
                return Self { wallets };
            }
            let mut next = Vec::new();
            for (i, wallet) in wallets.iter().enumerate() {
                next.push(
                    wallet
                        .call(
                            "exchange_multisig_keys",
                            serde_json::json!({"multisig_info": others(&messages, i), "password": ""}),
                        )
                        .await["multisig_info"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            messages = next;
        }
        panic!("the multisig wallets are not ready after 5 key exchange rounds");
    }

    async fn address(&self) -> String {
        self.wallets[0].address().await
    }

    /// `count` new subaddresses (the same on every wallet).
    async fn subaddresses(&self, count: usize) -> Vec<String> {
        let mut made = Vec::new();
        for wallet in &self.wallets {
            made.push(
                wallet
                    .call(
                        "create_address",
                        serde_json::json!({"account_index": 0, "count": count}),
                    )
                    .await["addresses"]
                    .clone(),
            );
        }
        assert!(made.iter().all(|m| *m == made[0]));
        made[0]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    }

    /// Refresh, then every wallet imports the others' multisig info (needed
    /// after any receipt or spend before the next spend).
    async fn sync(&self) {
        let mut infos = Vec::new();
        for wallet in &self.wallets {
            wallet.refresh().await;
            infos.push(
                wallet
                    .call("export_multisig_info", serde_json::json!({}))
                    .await["info"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        for (i, wallet) in self.wallets.iter().enumerate() {
            let others: Vec<&String> = infos
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, x)| x)
                .collect();
            wallet
                .call("import_multisig_info", serde_json::json!({"info": others}))
                .await;
        }
    }
}

/// The processor's key, as its signers hold it.
struct Ours {
    stores: Vec<Keystore>,
    keys: Vec<GeneratedKey>,
    pair: monero_wallet::ViewPair,
}

/// Split times of one processor run.
#[derive(Default, Clone, Copy)]
struct Stages {
    decoys: Duration,
    plan: Duration,
    sign: Duration,
    publish: Duration,
}

impl Stages {
    fn total(&self) -> Duration {
        self.decoys + self.plan + self.sign + self.publish
    }
}

/// One processor payout: decoys, plan, a follower's check of it, FROST-CLSAG
/// by signers 1 and 2, publication. Returns the split times and the hash.
async fn our_payout(
    ours: &Ours,
    daemon: &processor::monero::Daemon,
    outputs: Vec<WalletOutput>,
    to: &str,
    amount: u64,
    run: u32,
) -> (Stages, [u8; 32]) {
    let group_key = &ours.keys[0].group_key;
    let start = Instant::now();
    // Leader: decoys from the chain as the daemon has it now.
    let height = usize::try_from(daemon.tip().await.unwrap()).unwrap();
    let rpc = daemon.rpc().await.unwrap();
    let fee_rate = daemon.fee_rate(FeePriority::Normal).await.unwrap();
    // Every input's ring at once, as the scheduler fetches them.
    let inputs = futures::future::try_join_all(outputs.iter().map(|output| {
        let rpc = &rpc;
        async move {
            OutputWithDecoys::fingerprintable_deterministic_new(
                &mut rand_core::OsRng,
                rpc,
                plan::RING_LEN,
                height,
                output.clone(),
            )
            .await
        }
    }))
    .await
    .unwrap();
    let decoys = start.elapsed();

    // Leader plans; a follower checks the proposal as the scheduler does
    // (parse, inputs are its outputs, rebuild, identical).
    let payments = vec![(plan::parse_address(to).unwrap(), amount)];
    let signable = plan::build(group_key, &ours.pair, inputs, payments.clone(), fee_rate).unwrap();
    let proposal = signable.serialize();
    let plan_id = plan::plan_id(&proposal);
    let theirs = SignableTransaction::read(&mut proposal.as_slice()).unwrap();
    let proposed = plan::inputs_of(&proposal).unwrap();
    assert!(
        proposed
            .iter()
            .all(|i| outputs.iter().any(|o| plan::same_output(i, o)))
    );
    let rebuilt =
        plan::build(group_key, &ours.pair, proposed, payments, theirs.fee_rate()).unwrap();
    assert!(rebuilt == theirs, "the follower rebuilds the same plan");
    let planned = start.elapsed();

    // Signers 1 and 2 (the coordinator would relay these messages).
    let attempt = (SESSION, "plan".to_owned(), plan_id.to_vec(), run);
    let signers = [1_u16, 2];
    // Each signer is its own processor on its own machine: both work at
    // once, as they would (here on one core each).
    let preprocess = |i: u16| {
        let k = &ours.keys[usize::from(i - 1)];
        ours.stores[usize::from(i - 1)]
            .plan_preprocess(
                attempt.clone(),
                SESSION,
                KeyShape {
                    threshold: 2,
                    n: 3,
                    own_index: i,
                },
                &k.sealed_key_package,
                &k.public_key_package,
                if i == 1 {
                    signable.clone()
                } else {
                    rebuilt.clone()
                },
            )
            .unwrap()
    };
    let preprocesses: BTreeMap<u16, _> = std::thread::scope(|scope| {
        let running: Vec<_> = signers
            .iter()
            .map(|&i| {
                let preprocess = &preprocess;
                (i, scope.spawn(move || preprocess(i)))
            })
            .collect();
        running
            .into_iter()
            .map(|(i, t)| (i, t.join().unwrap()))
            .collect()
    });
    let shares: BTreeMap<u16, _> = std::thread::scope(|scope| {
        let running: Vec<_> = signers
            .iter()
            .map(|&i| {
                let preprocesses = &preprocesses;
                let attempt = &attempt;
                (
                    i,
                    scope.spawn(move || {
                        ours.stores[usize::from(i - 1)]
                            .plan_sign(attempt, i, preprocesses)
                            .unwrap()
                            .expect("a machine for the attempt")
                    }),
                )
            })
            .collect();
        running
            .into_iter()
            .map(|(i, t)| (i, t.join().unwrap()))
            .collect()
    });
    let tx = ours.stores[0]
        .plan_complete(&attempt, 1, &shares)
        .unwrap()
        .expect("a machine for the attempt");
    let signed = start.elapsed();
    daemon.publish(&tx).await.unwrap();
    let published = start.elapsed();
    (
        Stages {
            decoys,
            plan: planned - decoys,
            sign: signed - planned,
            publish: published - signed,
        },
        tx.hash(),
    )
}

/// One wallet-rpc multisig payout from subaddress `index`: A `transfer`,
/// B `sign_multisig`, B `submit_multisig`. Returns the time, the number of
/// inputs the transfer spent and the transaction's hash.
async fn wallet_payout(
    multisig: &Multisig,
    index: u32,
    to: &str,
    amount: u64,
) -> (Duration, usize, [u8; 32]) {
    let (a, b) = (&multisig.wallets[0], &multisig.wallets[1]);
    let start = Instant::now();
    let made = a
        .call(
            "transfer",
            serde_json::json!({"destinations": [{"amount": amount, "address": to}],
            "account_index": 0, "subaddr_indices": [index]}),
        )
        .await;
    let signed = b
        .call(
            "sign_multisig",
            serde_json::json!({"tx_data_hex": made["multisig_txset"]}),
        )
        .await;
    let submitted = b
        .call(
            "submit_multisig",
            serde_json::json!({"tx_data_hex": signed["tx_data_hex"]}),
        )
        .await;
    let elapsed = start.elapsed();
    let inputs = made["spent_key_images"]["key_images"]
        .as_array()
        .map_or(0, Vec::len);
    let hashes = submitted["tx_hash_list"].as_array().unwrap();
    assert_eq!(hashes.len(), 1, "one transaction");
    let hash: [u8; 32] = hex::decode(hashes[0].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    (elapsed, inputs, hash)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let runs = usize::try_from(arg("--runs", 3).max(1)).unwrap();
    let cases = [1_usize, 16];
    let dir = tempfile::tempdir().unwrap();
    let monerod = Monerod::start(dir.path()).await;
    let daemon = processor::monero::Daemon::new(monerod.url.clone());
    println!("setting up (not timed): regtest chain, 2-of-3 keys, funding...");

    // The processor's key: 2-of-3 from its own DKG.
    let (stores, keys) = generate_key();
    let group_key = keys[0].group_key;
    let ours = Ours {
        pair: processor::accounts::view_pair(&group_key).unwrap(),
        stores,
        keys,
    };
    let group_address = processor::keystore::dkg::monero_address(&group_key).unwrap();

    // The wallets' 2-of-3 key.
    let multisig = Multisig::start(dir.path(), &monerod.url).await;
    let multisig_address = multisig.address().await;
    // Each wallet run spends from a subaddress of its own, so the wallet
    // cannot pick other outputs (or earlier runs' change) as inputs.
    let cases_runs = cases.len() * runs;
    let subaddresses = multisig.subaddresses(cases_runs).await;

    // The user: mined coinbase pays for the funding.
    let user = WalletRpc::start_with(&dir.path().join("user"), Some(&monerod.url)).await;
    user.create_wallet("user").await;
    user.call("auto_refresh", serde_json::json!({"enable": false}))
        .await;
    let user_address = user.address().await;
    monerod.mine(&user_address, 150).await;

    // Funding: 1 XMR outputs, as many as each run of each case spends.
    let mut destinations = Vec::new();
    for (c, &inputs) in cases.iter().enumerate() {
        for run in 0..runs {
            for _ in 0..inputs {
                destinations.push(group_address.clone());
                destinations.push(subaddresses[c * runs + run].clone());
            }
        }
    }
    user.refresh().await;
    for chunk in destinations.chunks(15) {
        let to: Vec<serde_json::Value> = chunk
            .iter()
            .map(|a| serde_json::json!({"amount": UNIT, "address": a}))
            .collect();
        // Repeated addresses, which monero-rpc's `transfer` (a map of
        // destinations) cannot express.
        let sent = user
            .try_call("transfer", serde_json::json!({"destinations": to}))
            .await;
        if sent.is_err() {
            // Out of unlocked coinbase: mature some more and retry once.
            monerod.mine(&user_address, 70).await;
            user.refresh().await;
            user.call("transfer", serde_json::json!({"destinations": to}))
                .await;
        }
    }
    monerod.mine(&elsewhere(), 11).await;

    // Our outputs, found by the processor's scanner path.
    let tip = daemon.tip().await.unwrap();
    let mut scanner = Scanner::new(ours.pair.clone());
    let mut pool: Vec<WalletOutput> = Vec::new();
    let mut next = 0;
    while next <= tip {
        let end = (next + 199).min(tip);
        for block in daemon.blocks(next..=end).await.unwrap() {
            pool.extend(scanner.scan(block).unwrap().ignore_additional_timelock());
        }
        next = end + 1;
    }
    let needed: usize = cases.iter().sum::<usize>() * runs;
    assert_eq!(
        pool.len(),
        needed,
        "the group received every funding output"
    );
    assert!(pool.iter().all(|o| o.commitment().amount == UNIT));

    // The wallets' outputs and their multisig info.
    multisig.sync().await;
    let balance = multisig.wallets[0]
        .call("get_balance", serde_json::json!({"account_index": 0}))
        .await["unlocked_balance"]
        .as_u64()
        .unwrap();
    assert_eq!(
        balance,
        needed as u64 * UNIT,
        "the multisig wallet's unlocked balance"
    );
    println!("processor group address {group_address}");
    println!("wallet-rpc multisig address {multisig_address}");

    // The runs, alternating who goes first; a block after each run.
    let mut results = Vec::new();
    for (c, &inputs) in cases.iter().enumerate() {
        let amount = payment(inputs);
        let mut our_times = Vec::new();
        let mut our_stages = Vec::new();
        let mut wallet_times = Vec::new();
        let mut wallet_inputs = Vec::new();
        for run in 0..runs {
            let spend: Vec<WalletOutput> = pool.drain(..inputs).collect();
            let index = u32::try_from(1 + c * runs + run).unwrap();
            let attempt = u32::try_from(c * runs + run).unwrap();
            let (stages, wallet) = if run % 2 == 0 {
                let o = our_payout(&ours, &daemon, spend, &user_address, amount, attempt).await;
                let w = wallet_payout(&multisig, index, &user_address, amount).await;
                (o, w)
            } else {
                let w = wallet_payout(&multisig, index, &user_address, amount).await;
                let o = our_payout(&ours, &daemon, spend, &user_address, amount, attempt).await;
                (o, w)
            };
            let ((stages, our_hash), (wallet_time, spent, wallet_hash)) = (stages, wallet);
            monerod.mine(&elsewhere(), 1).await;
            // Both are on chain; count the wallet's inputs on the chain too.
            let rpc = daemon.rpc().await.unwrap();
            let on_chain = rpc.pruned_transaction(our_hash).await.unwrap();
            assert_eq!(on_chain.prefix().inputs.len(), inputs);
            let on_chain = rpc.pruned_transaction(wallet_hash).await.unwrap();
            assert_eq!(on_chain.prefix().inputs.len(), spent);
            println!(
                "  {inputs:>2} input(s) run {}: processor {:.3} s, wallet-rpc {:.3} s ({spent} inputs)",
                run + 1,
                stages.total().as_secs_f64(),
                wallet_time.as_secs_f64()
            );
            our_times.push(stages.total());
            our_stages.push(stages);
            wallet_times.push(wallet_time);
            wallet_inputs.push(spent);
            multisig.sync().await;
        }
        results.push((inputs, our_times, our_stages, wallet_times, wallet_inputs));
    }

    println!();
    println!(
        "payout 2-of-3, plan to signed and published, median of {runs} runs (regtest, ring 16):"
    );
    for (inputs, our_times, stages, wallet_times, wallet_inputs) in &results {
        let (ours, theirs) = (median(our_times), median(wallet_times));
        println!(
            "  {inputs:>2} input(s): processor {:.3} s | wallet-rpc multisig {:.3} s | ratio {:.2}x (goal <= 0.5x)",
            ours.as_secs_f64(),
            theirs.as_secs_f64(),
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
        let part = |f: fn(&Stages) -> Duration| {
            median(&stages.iter().map(f).collect::<Vec<_>>()).as_secs_f64()
        };
        println!(
            "      processor runs [{}] s; medians: decoys {:.3}, plan + follower check {:.3}, \
             FROST-CLSAG {:.3}, publish {:.3}",
            secs(our_times),
            part(|s| s.decoys),
            part(|s| s.plan),
            part(|s| s.sign),
            part(|s| s.publish)
        );
        println!(
            "      wallet-rpc runs [{}] s; inputs per transfer {wallet_inputs:?}",
            secs(wallet_times)
        );
    }
    println!();
    println!(
        "processor: tip + fee rate + decoy selection per input (sequential, as the scheduler \
         does), plan::build, a follower's check (parse, inputs, rebuild, compare), \
         plan_preprocess by signers 1 and 2, plan_sign by both, plan_complete, publish to monerod. \
         In process: in production the plan, preprocesses and shares also travel through the \
         coordinator (a few ms of link round trips per step) and each step is persisted; not \
         included here."
    );
    println!(
        "wallet-rpc: A transfer (from one subaddress; returns multisig_txset) -> B sign_multisig \
         -> B submit_multisig, over loopback JSON-RPC; the multisig-info export/import that \
         wallet2 needs between spends is not timed."
    );
}
