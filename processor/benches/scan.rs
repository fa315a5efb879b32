//! Scanning throughput: the processor's scanner against monero-wallet-rpc
//! refreshing a view-only wallet for the same address, from the same height,
//! over the same regtest chain, in one run; on two chains:
//!
//! - `ours`: `--txs` payments (default 500) in 2,000 blocks, every one
//!   paying the scanned address (today's chain: all work is real work);
//! - `dense`: `--dense-txs` transactions (default 3,000) in 2,000 blocks,
//!   one in twenty paying the scanned address and the rest paying other
//!   wallets, as on mainnet, where almost everything a scanner sees is
//!   someone else's.
//!
//! `cargo bench -p processor --bench scan [-- --chain ours|dense|both --blocks 2000 --txs 500 --dense-txs 3000]`
//!
//! Building a chain takes minutes and is not timed; each is built once and
//! kept under `$CARGO_TARGET_TMPDIR/scan-fixtures/` (its monerod data
//! directory, the scanned key, what was sent), then every run starts a
//! monerod on a copy. Delete the directory to build afresh.
//!
//! Beside each figure: the floor, the ECDHs the chain needs (one per
//! transaction key and per additional key, nothing else is per-transaction
//! work for a transaction that is not ours) times one measured
//! variable-base scalar multiplication, over the cores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::monero::{Monerod, WalletRpc, elsewhere};
use monero_wallet::Scanner;

/// Each payment to the scanned address: 0.01 XMR.
const PAYMENT: u64 = 10_000_000_000;

fn arg(name: &str, default: u64) -> u64 {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn text_arg(name: &str, default: &str) -> String {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

/// A chain to scan.
#[derive(Clone, Copy)]
struct Chain {
    name: &'static str,
    blocks: u64,
    txs: u64,
    /// One transaction in `ours_every` pays the scanned address.
    ours_every: u64,
    /// Transactions sent between mining rounds.
    per_round: u64,
}

/// A chain on a running monerod, and what was sent on it.
struct Fixture {
    _dir: tempfile::TempDir,
    monerod: Monerod,
    key: [u8; 32],
    made: u64,
    ours: u64,
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// The chain's fixture: a copy of the saved one, else built and saved.
async fn fixture(chain: Chain) -> Fixture {
    let saved = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("scan-fixtures")
        .join(format!(
            "{}-{}blocks-{}txs-1in{}-v1",
            chain.name, chain.blocks, chain.txs, chain.ours_every
        ));
    let dir = tempfile::tempdir().unwrap();
    if saved.join("done").exists() {
        copy_dir(&saved.join("monerod"), &dir.path().join("monerod"));
        let meta = std::fs::read_to_string(saved.join("done")).unwrap();
        let mut fields = meta.split_whitespace();
        let mut next = || fields.next().expect("fixture meta: key made ours");
        let key = hex::decode(next()).unwrap().try_into().unwrap();
        let made = next().parse().unwrap();
        let ours = next().parse().unwrap();
        let monerod = Monerod::start_keeping(dir.path()).await;
        println!(
            "{} chain: the saved fixture {}",
            chain.name,
            saved.display()
        );
        return Fixture {
            _dir: dir,
            monerod,
            key,
            made,
            ours,
        };
    }

    let mut monerod = Monerod::start(dir.path()).await;
    let wallet_dir = dir.path().join("builder");
    std::fs::create_dir_all(&wallet_dir).unwrap();
    let wallet = WalletRpc::start_with(&wallet_dir, Some(&monerod.url)).await;
    // The scanned address: a group-like key with the processors' view key.
    let key = curve25519_dalek::EdwardsPoint::mul_base_clamped(rand::random::<[u8; 32]>())
        .compress()
        .to_bytes();
    let address = processor::keystore::dkg::monero_address(&key).unwrap();
    println!(
        "{} chain: building {} transactions (1 in {} ours), then up to {} blocks (not timed, kept in {})...",
        chain.name,
        chain.txs,
        chain.ours_every,
        chain.blocks,
        saved.display()
    );
    let built = Instant::now();
    wallet.create_wallet("user").await;
    let user = wallet.address().await;
    wallet
        .call("auto_refresh", serde_json::json!({"enable": false}))
        .await;
    monerod.mine(&user, 320).await;
    let (mut made, mut ours) = (0, 0);
    while made < chain.txs {
        wallet.refresh().await;
        for _ in 0..chain.per_round {
            if made == chain.txs {
                break;
            }
            let to_us = made % chain.ours_every == 0;
            let to = if to_us { address.clone() } else { elsewhere() };
            if wallet
                .transfer(&[(&to, PAYMENT)], Default::default())
                .await
                .is_err()
            {
                break; // out of unlocked outputs until the next blocks
            }
            made += 1;
            ours += u64::from(to_us);
        }
        monerod.mine(&user, 11).await;
        print!(
            "\r  {made}/{} transactions, {ours} ours, {:.0} s",
            chain.txs,
            built.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
    }
    println!();
    let tip = monerod.height().await;
    if tip < chain.blocks {
        monerod
            .mine(&elsewhere(), usize::try_from(chain.blocks - tip).unwrap())
            .await;
    }
    drop(wallet);
    // Saved only whole: a stopped daemon's chain, then the marker.
    monerod.stop();
    let _ = std::fs::remove_dir_all(&saved);
    std::fs::create_dir_all(&saved).unwrap();
    copy_dir(&dir.path().join("monerod"), &saved.join("monerod"));
    std::fs::write(
        saved.join("done"),
        format!("{} {made} {ours}\n", hex::encode(key)),
    )
    .unwrap();
    monerod.restart().await;
    Fixture {
        _dir: dir,
        monerod,
        key,
        made,
        ours,
    }
}

/// One variable-base scalar multiplication (the ECDH `view * tx_key`),
/// measured over many distinct points.
fn one_ecdh() -> Duration {
    let view = curve25519_dalek::Scalar::from_bytes_mod_order(rand::random());
    let points: Vec<_> = (0..4000)
        .map(|_| curve25519_dalek::EdwardsPoint::mul_base_clamped(rand::random::<[u8; 32]>()))
        .collect();
    let start = Instant::now();
    let mut sink = curve25519_dalek::EdwardsPoint::default();
    for point in &points {
        sink += view * point;
    }
    let elapsed = start.elapsed();
    std::hint::black_box(sink);
    elapsed / u32::try_from(points.len()).unwrap()
}

/// What one chain measured.
struct Figures {
    name: &'static str,
    blocks: u64,
    made: u64,
    ours_sent: u64,
    ours: Duration,
    waiting: Duration,
    scanning: Duration,
    found: usize,
    theirs: Duration,
    all_refreshes: Vec<Duration>,
    seen: usize,
    ecdhs: usize,
    floor: Duration,
    fetch_alone: Duration,
    daemon_alone: Duration,
    daemon_bytes: usize,
}

async fn measure(chain: Chain, ecdh: Duration, cores: u32) -> Figures {
    let fixture = fixture(chain).await;
    let monerod = &fixture.monerod;
    let key = fixture.key;
    let address = processor::keystore::dkg::monero_address(&key).unwrap();
    let view = processor::keystore::dkg::view_key(&key);
    let daemon = processor::monero::Daemon::new(monerod.url.clone());
    let tip = daemon.tip().await.unwrap();
    let range_blocks = tip + 1;

    // Ours: the scanner's fetch and `scan_all` (view-tag pre-filter, then
    // monero-wallet's Scanner, on every core), as the processor runs them,
    // from block 0 to the tip; the next range is fetched while the current
    // one is scanned.
    let start = Instant::now();
    let pair = monero_wallet::ViewPair::new(
        monero_ed25519::Point::from(
            curve25519_dalek::edwards::CompressedEdwardsY(key)
                .decompress()
                .unwrap(),
        ),
        zeroize::Zeroizing::new(monero_ed25519::Scalar::from(*view)),
    )
    .unwrap();
    let scanner = Scanner::new(pair);
    let filter = processor::scanner::prefilter::ViewTagFilter::new(view.clone());
    let daemon = std::sync::Arc::new(daemon);
    let range = processor::scanner::FETCH_CHUNK;
    let fetch = |from: u64| {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            processor::scanner::fetch(&daemon, from..=(from + range - 1).min(tip)).await
        })
    };
    let mut found = 0_usize;
    let mut next = 0;
    let mut pending = Some(fetch(0));
    // Where the time goes: waiting for blocks vs scanning them.
    let (mut waiting, mut scanning) = (Duration::ZERO, Duration::ZERO);
    while let Some(fetching) = pending.take() {
        let waited = Instant::now();
        let blocks = fetching.await.unwrap().unwrap();
        waiting += waited.elapsed();
        next += range;
        if next <= tip {
            pending = Some(fetch(next));
        }
        let scanned = Instant::now();
        found += processor::scanner::scan_all(&scanner, &filter, blocks, false)
            .unwrap()
            .iter()
            .map(|b| b.outputs.len())
            .sum::<usize>();
        scanning += scanned.elapsed();
    }
    let ours = start.elapsed();

    // monero-wallet-rpc: a view-only wallet for the same address, from 0,
    // its refresh timed (checked not to have synced before: its balance is
    // empty until the refresh). Three fresh wallets, the median kept: a refresh's
    // time varies run to run far more than ours does.
    let mut refreshes = Vec::new();
    let mut wallet = None;
    for attempt in 0..3 {
        // A wallet-rpc of its own each time: a second wallet with the same
        // keys in one wallet-rpc process can come up already synced.
        let dir = fixture._dir.path().join(format!("viewer-{attempt}"));
        std::fs::create_dir_all(&dir).unwrap();
        let fresh = WalletRpc::start_with(&dir, Some(&monerod.url)).await;
        let wallet = wallet.insert(fresh);
        // The first wallet a wallet-rpc process creates may sync as it is
        // created; one restored at the tip (nothing to scan) goes first.
        let view_only = |restore_height: u64, filename: &str| monero_rpc::GenerateFromKeysArgs {
            restore_height: Some(restore_height),
            filename: filename.to_owned(),
            address: address.parse().unwrap(),
            spendkey: None,
            viewkey: monero_rpc::monero::PrivateKey::from_slice(&view.to_bytes()).unwrap(),
            password: String::new(),
            autosave_current: Some(false),
        };
        wallet
            .client
            .generate_from_keys(view_only(tip, "at-tip"))
            .await
            .unwrap();
        wallet.client.close_wallet().await.unwrap();
        wallet
            .client
            .generate_from_keys(view_only(0, "view"))
            .await
            .unwrap();
        wallet
            .call("auto_refresh", serde_json::json!({"enable": false}))
            .await;
        let unsynced = wallet
            .client
            .get_balance(0, None)
            .await
            .unwrap()
            .balance
            .as_pico();
        assert_eq!(
            unsynced, 0,
            "a new view-only wallet holds nothing before its refresh"
        );
        let start = Instant::now();
        wallet.client.refresh(Some(0)).await.unwrap();
        refreshes.push(start.elapsed());
    }
    let wallet = wallet.expect("three wallets were made");
    let all_refreshes = refreshes.clone();
    refreshes.sort();
    let theirs = refreshes[1];
    let balance = wallet
        .client
        .get_balance(0, None)
        .await
        .unwrap()
        .balance
        .as_pico();
    let seen = usize::try_from(balance / PAYMENT).unwrap_or(0);

    // The processor's fetch alone: monerod serving the same blocks, parsed
    // and checked, nothing scanned, every request in flight at once.
    // Measured after both, on the warmest caches: the most generous bound.
    let start = Instant::now();
    let blocks = processor::scanner::fetch(&daemon, 0..=tip).await.unwrap();
    let fetch_alone = start.elapsed();
    assert_eq!(u64::try_from(blocks.len()).unwrap(), range_blocks);
    // The ECDHs this chain needs (counted, not timed).
    let ecdhs: usize = blocks
        .into_iter()
        .map(|mut block| filter.strip(&mut block).ecdhs)
        .sum();
    let floor = ecdh * u32::try_from(ecdhs).unwrap() / cores;

    // The daemon alone: the same `get_blocks.bin` requests (pruned, from
    // each chunk's start; what wallet2 asks too), bytes received and not
    // parsed. No client of this monerod can take in the blocks faster.
    let rpc = daemon.rpc().await.unwrap();
    let start = Instant::now();
    let starts: Vec<u64> = (1..=tip).step_by(usize::try_from(range).unwrap()).collect();
    let responses = futures::future::try_join_all(
        starts
            .iter()
            .map(|&from| rpc.bin_call("get_blocks.bin", get_blocks_request(from), 100 << 20)),
    )
    .await
    .unwrap();
    let daemon_alone = start.elapsed();

    assert_eq!(
        found, seen,
        "{} chain: both found the same payments (each pays 0.01 XMR)",
        chain.name
    );
    assert_eq!(
        u64::try_from(found).unwrap(),
        fixture.ours,
        "{} chain: every payment to the address was found",
        chain.name
    );
    Figures {
        name: chain.name,
        blocks: range_blocks,
        made: fixture.made,
        ours_sent: fixture.ours,
        ours,
        waiting,
        scanning,
        found,
        theirs,
        all_refreshes,
        seen,
        ecdhs,
        floor,
        fetch_alone,
        daemon_alone,
        daemon_bytes: responses.iter().map(Vec::len).sum(),
    }
}

fn report(f: &Figures) {
    let rate = |d: Duration, n: f64| n / d.as_secs_f64();
    println!();
    println!(
        "{} chain: blocks 0..{} ({} blocks), {} transactions, {} of them paying the scanned address",
        f.name,
        f.blocks - 1,
        f.blocks,
        f.made,
        f.ours_sent
    );
    println!(
        "  processor scanner:      {:>7.3} s  {:>7.0} blocks/s  ({} outputs found)",
        f.ours.as_secs_f64(),
        rate(f.ours, f.blocks as f64),
        f.found
    );
    println!(
        "    of which waiting for monerod's blocks {:.3} s, scanning {:.3} s",
        f.waiting.as_secs_f64(),
        f.scanning.as_secs_f64()
    );
    println!(
        "  monero-wallet-rpc view: {:>7.3} s  {:>7.0} blocks/s  ({} payments in its balance)",
        f.theirs.as_secs_f64(),
        rate(f.theirs, f.blocks as f64),
        f.seen
    );
    println!(
        "    median of 3 refreshes of fresh view-only wallets: {}",
        f.all_refreshes
            .iter()
            .map(|d| format!("{:.3} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  ratio (wallet time / processor time): {:.2}x (goal: at least 3x)",
        f.theirs.as_secs_f64() / f.ours.as_secs_f64()
    );
    println!(
        "  ECDH floor: {} ECDHs x one ECDH / cores = {:.3} s; the processor is at {:.0}% of it          (floor / processor time)",
        f.ecdhs,
        f.floor.as_secs_f64(),
        100.0 * f.floor.as_secs_f64() / f.ours.as_secs_f64()
    );
    println!(
        "  processor fetch alone (requested, parsed and checked, not scanned): {:.3} s",
        f.fetch_alone.as_secs_f64()
    );
    println!(
        "  monerod alone (get_blocks.bin, {:.1} MB, not parsed): {:.3} s; a client that took          no time at all would reach {:.2}x",
        f.daemon_bytes as f64 / 1e6,
        f.daemon_alone.as_secs_f64(),
        f.theirs.as_secs_f64() / f.daemon_alone.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let blocks = arg("--blocks", 2000);
    let which = text_arg("--chain", "both");
    let mut chains = Vec::new();
    if which == "ours" || which == "both" {
        chains.push(Chain {
            name: "ours",
            blocks,
            txs: arg("--txs", 500),
            ours_every: 1,
            per_round: 50,
        });
    }
    if which == "dense" || which == "both" {
        chains.push(Chain {
            name: "dense",
            blocks,
            txs: arg("--dense-txs", 3000),
            ours_every: 20,
            per_round: 250,
        });
    }
    assert!(!chains.is_empty(), "--chain is ours, dense or both");

    let cores =
        u32::try_from(std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
            .unwrap();
    let ecdh = one_ecdh();
    let mut figures = Vec::new();
    for chain in chains {
        figures.push(measure(chain, ecdh, cores).await);
    }
    println!();
    println!(
        "one ECDH (variable-base scalar multiplication, curve25519-dalek): {:.1} us; {cores} cores",
        ecdh.as_secs_f64() * 1e6
    );
    for f in &figures {
        report(f);
    }
    println!();
    println!(
        "| chain | blocks | txs | ours | processor | monero-wallet-rpc | ratio | ECDH floor | of floor |"
    );
    println!(
        "|-------|--------|-----|------|-----------|-------------------|-------|------------|----------|"
    );
    for f in &figures {
        println!(
            "| {} | {} | {} | {} | {:.3} s | {:.3} s | {:.2}x | {:.3} s | {:.0}% |",
            f.name,
            f.blocks,
            f.made,
            f.ours_sent,
            f.ours.as_secs_f64(),
            f.theirs.as_secs_f64(),
            f.theirs.as_secs_f64() / f.ours.as_secs_f64(),
            f.floor.as_secs_f64(),
            100.0 * f.floor.as_secs_f64() / f.ours.as_secs_f64()
        );
    }
}

/// An epee `get_blocks.bin` request: pruned blocks from `start_height`.
fn get_blocks_request(start_height: u64) -> Vec<u8> {
    // Portable-storage header, version 1, then a section of two entries
    // (count 2 as a varint with size marker 0: 2 << 2).
    let mut request = b"\x01\x11\x01\x01\x01\x01\x02\x01\x01".to_vec();
    request.push(2 << 2);
    request.push(5);
    request.extend(b"prune");
    request.push(11); // bool
    request.push(1);
    request.push(12);
    request.extend(b"start_height");
    request.push(5); // u64
    request.extend(start_height.to_le_bytes());
    request
}
