//! Scanning throughput: the processor's scanner against monero-wallet-rpc
//! refreshing a view-only wallet for the same address, from the same height,
//! over the same regtest chain, in one run.
//!
//! `cargo bench -p processor --bench scan [-- --blocks 2000 --txs 500]`
//!
//! The chain is built first (a user wallet makes `--txs` transactions paying
//! the scanned address, then blocks are mined up to `--blocks`); building it
//! takes minutes and is not timed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::monero::{Monerod, WalletRpc, elsewhere};
use monero_wallet::Scanner;

fn arg(name: &str, default: u64) -> u64 {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let blocks = arg("--blocks", 2000);
    let txs = arg("--txs", 500);
    let dir = tempfile::tempdir().unwrap();
    let monerod = Monerod::start(dir.path()).await;
    let wallet = WalletRpc::start_with(dir.path(), Some(&monerod.url)).await;

    // The scanned address: a group-like key with the processors' view key.
    let key = curve25519_dalek::EdwardsPoint::mul_base_clamped(rand::random::<[u8; 32]>())
        .compress()
        .to_bytes();
    let address = processor::keystore::dkg::monero_address(&key).unwrap();
    let view = processor::keystore::dkg::view_key(&key);

    // Build the chain: a funded user, `txs` payments to the address.
    println!("building a regtest chain: {txs} payments, then up to {blocks} blocks (not timed)...");
    wallet.create_wallet("user").await;
    let user = wallet.address().await;
    wallet
        .call("auto_refresh", serde_json::json!({"enable": false}))
        .await;
    monerod.mine(&user, 320).await;
    let mut made = 0;
    while made < txs {
        wallet.refresh().await;
        for _ in 0..50 {
            if made == txs {
                break;
            }
            let sent = wallet
                .transfer(&[(&address, 10_000_000_000_u64)], Default::default())
                .await;
            if sent.is_err() {
                break; // out of unlocked outputs until the next blocks
            }
            made += 1;
        }
        monerod.mine(&user, 11).await;
        print!("\r  {made}/{txs} payments");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    println!();
    let daemon = processor::monero::Daemon::new(monerod.url.clone());
    let tip = daemon.tip().await.unwrap();
    if tip < blocks {
        monerod
            .mine(&elsewhere(), usize::try_from(blocks - tip).unwrap())
            .await;
    }
    let tip = daemon.tip().await.unwrap();
    let range_blocks = tip + 1;

    // Ours: the scanner's fetch and `scan_all` (monero-wallet's Scanner on
    // every core), as the processor runs them, from block 0 to the tip; the
    // next range is fetched while the current one is scanned.
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

    // monero-wallet-rpc: a view-only wallet for the same address, from 0.
    wallet.client.close_wallet().await.unwrap();
    wallet
        .client
        .generate_from_keys(monero_rpc::GenerateFromKeysArgs {
            restore_height: Some(0),
            filename: "view".to_owned(),
            address: address.parse().unwrap(),
            spendkey: None,
            viewkey: monero_rpc::monero::PrivateKey::from_slice(&view.to_bytes()).unwrap(),
            password: String::new(),
            autosave_current: Some(false),
        })
        .await
        .unwrap();
    wallet
        .call("auto_refresh", serde_json::json!({"enable": false}))
        .await;
    let start = Instant::now();
    wallet.client.refresh(Some(0)).await.unwrap();
    let theirs = start.elapsed();
    let balance = wallet
        .client
        .get_balance(0, None)
        .await
        .unwrap()
        .balance
        .as_pico();
    let seen = usize::try_from(balance / 10_000_000_000).unwrap_or(0);

    // The floor: monerod serving the same blocks, nothing scanned, every
    // request in flight at once. Measured last, on the warmest caches, so it
    // is the most generous bound: no client of this daemon can scan faster.
    let start = Instant::now();
    let served = processor::scanner::fetch(&daemon, 0..=tip)
        .await
        .unwrap()
        .len();
    let floor = start.elapsed();
    assert_eq!(u64::try_from(served).unwrap(), range_blocks);

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
    let daemon_only = start.elapsed();
    let bytes: usize = responses.iter().map(Vec::len).sum();

    let rate = |d: Duration, n: f64| n / d.as_secs_f64();
    println!("scanned blocks 0..={tip} ({range_blocks} blocks), {made} payment transactions");
    println!(
        "processor scanner:      {:>8.2} s  {:>8.0} blocks/s  {:>8.0} outputs/s  ({found} outputs found)",
        ours.as_secs_f64(),
        rate(ours, range_blocks as f64),
        rate(ours, found as f64)
    );
    println!(
        "  of which waiting for monerod's blocks {:.2} s, scanning {:.2} s",
        waiting.as_secs_f64(),
        scanning.as_secs_f64()
    );
    println!(
        "monero-wallet-rpc view: {:>8.2} s  {:>8.0} blocks/s  {:>8.0} outputs/s  ({seen} payments in its balance)",
        theirs.as_secs_f64(),
        rate(theirs, range_blocks as f64),
        rate(theirs, seen as f64)
    );
    println!(
        "ratio (wallet time / processor time): {:.2}x (goal: at least 3x)",
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    println!(
        "processor fetch alone (requested, parsed and checked, not scanned): {:.2} s",
        floor.as_secs_f64()
    );
    println!(
        "monerod alone ({} get_blocks.bin answers, {:.1} MB, not parsed): {:.2} s; \
         a client that took no time at all would reach {:.2}x",
        responses.len(),
        bytes as f64 / 1e6,
        daemon_only.as_secs_f64(),
        theirs.as_secs_f64() / daemon_only.as_secs_f64()
    );
    assert_eq!(
        found, seen,
        "both found the same payments (each pays 0.01 XMR)"
    );
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
