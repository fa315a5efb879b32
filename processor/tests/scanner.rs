//! Scanning a real `monerod --regtest`: blocks are finalized `confirmations`
//! deep, outputs paid to the group's address are found by every processor
//! alike, nothing above the finality depth is stored, and a processor killed
//! mid-scan resumes without skipping or repeating a block.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::monero::*;
use common::*;
use sqlx::PgPool;

async fn next_height(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT next_height FROM scan_cursor")
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

async fn outputs(pool: &PgPool) -> Vec<(Vec<u8>, i64, i64, i64, i64, Option<i64>)> {
    sqlx::query_as(
        "SELECT tx_hash, index_in_tx, block_height, account, amount, unlock_height FROM outputs ORDER BY block_height, tx_hash",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalized_blocks_and_outputs_match_on_every_processor() {
    let chain_dir = tempfile::tempdir().unwrap();
    let mut monerod = Monerod::start(chain_dir.path()).await;
    let url: &'static str = Box::leak(monerod.url.clone().into_boxed_str());
    let env = move |_| {
        vec![
            ("PROCESSOR_MONERO__DAEMON_URL", url),
            ("PROCESSOR_MONERO__POLL_INTERVAL", "200ms"),
        ]
    };
    let mut cluster =
        Cluster::start_with("scan", 3, env, &common::deposits::chain_config(url)).await;
    let session = cluster.coordinator.start_keygen(2, &[]).await.unwrap();
    let status = cluster.wait_status(session, "confirmed").await;

    // Blocks 1..=5 pay the group; 6..=9 pay someone else. Tip 9, three
    // confirmations: 0..=6 are final, 7..=9 are not.
    monerod.mine(&status.monero_address, 5).await;
    monerod.mine(&elsewhere(), 4).await;
    let pools: Vec<PgPool> = futures::future::join_all(cluster.dbs.iter().map(|d| d.pool())).await;
    for pool in &pools {
        eventually(
            "blocks 0..=6 finalized",
            Duration::from_secs(60),
            || async { (next_height(pool).await == 7).then_some(()) },
        )
        .await;
    }
    // The key was confirmed on a chain of one block (the genesis block, 0)
    // with 3 confirmations: no block was final, the horizon was 0, and the
    // key is scanned from block 1 on every processor alike.
    for pool in &pools {
        assert_eq!(
            scalar_i64(pool, "SELECT activation_height FROM keys WHERE session = 0").await,
            1
        );
    }
    // Give a wrong implementation the chance to run ahead, then look.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let first = outputs(&pools[0]).await;
    assert_eq!(
        first.len(),
        5,
        "one coinbase output per group-paid block: {first:?}"
    );
    for (i, o) in first.iter().enumerate() {
        let height = i64::try_from(i).unwrap() + 1;
        assert_eq!(o.2, height, "block of output {i}");
        assert_eq!(
            o.3, 0,
            "coinbase to the main address is the processors' own account"
        );
        assert!(o.4 > 0, "an amount");
        assert_eq!(o.5, Some(height + 60), "coinbase unlocks 60 blocks later");
    }
    for pool in &pools {
        assert_eq!(
            next_height(pool).await,
            7,
            "nothing below the finality depth is scanned"
        );
        assert_eq!(
            scalar_i64(pool, "SELECT max(height) FROM finalized_blocks").await,
            6
        );
        assert_eq!(
            scalar_i64(pool, "SELECT count(*) FROM finalized_blocks").await,
            6,
            "blocks 1..=6: from the key's activation"
        );
        assert_eq!(
            outputs(pool).await,
            first,
            "every processor sees the same outputs"
        );
    }

    // Kill one processor, mine on, restart it: it resumes from its cursor.
    cluster.procs[0].as_mut().unwrap().kill9();
    monerod.mine(&status.monero_address, 2).await; // blocks 10, 11
    monerod.mine(&elsewhere(), 3).await; // 12..=14: final up to 11
    let dir = cluster.dir.path().to_path_buf();
    cluster.procs[0] = Some(spawn_processor(
        &name(0),
        &dir,
        cluster.ports[0],
        &cluster.dbs[0].url,
        &env(0),
    ));
    for pool in &pools {
        eventually(
            "blocks 0..=11 finalized",
            Duration::from_secs(60),
            || async { (next_height(pool).await == 12).then_some(()) },
        )
        .await;
    }
    let after = outputs(&pools[0]).await;
    assert_eq!(after.len(), 7, "{after:?}");
    assert_eq!(after[..5], first[..]);
    for pool in &pools {
        assert_eq!(
            scalar_i64(pool, "SELECT count(*) FROM finalized_blocks").await,
            11,
            "no block skipped or repeated"
        );
        assert_eq!(outputs(pool).await, after);
    }

    // monerod goes away under the scanners and comes back: nothing lost.
    monerod.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    monerod.restart().await;
    monerod.mine(&status.monero_address, 1).await; // block 15
    monerod.mine(&elsewhere(), 3).await; // 16..=18: final up to 15
    for pool in &pools {
        eventually(
            "scanning resumes after monerod restarts",
            Duration::from_secs(60),
            || async { (next_height(pool).await == 16).then_some(()) },
        )
        .await;
        assert_eq!(outputs(pool).await.len(), 8);
        assert_eq!(
            scalar_i64(pool, "SELECT count(*) FROM finalized_blocks").await,
            15
        );
    }

    // A reorganisation deeper than the finality depth: block 15 (final)
    // is replaced. Scanning halts, says why, and health says so.
    monerod.pop_blocks(5).await; // tip 13
    monerod.mine(&elsewhere(), 7).await; // new 14..=20
    for pool in &pools {
        let halted: String = eventually("scanning halts", Duration::from_secs(60), || async {
            sqlx::query_scalar::<_, Option<String>>("SELECT halted FROM scan_cursor")
                .fetch_one(pool)
                .await
                .unwrap()
        })
        .await;
        assert!(halted.contains("finalized block 15 changed"), "{halted}");
        assert_eq!(
            scalar_i64(pool, "SELECT count(*) FROM finalized_blocks").await,
            15,
            "nothing stored past the reorg"
        );
    }
    let out = std::process::Command::new(grpcurl())
        .args(["-plaintext", "-d", r#"{"service":"scanner"}"#])
        .arg(format!("127.0.0.1:{}", cluster.ports[1]))
        .arg("grpc.health.v1.Health/Check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NOT_SERVING"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(grpcurl())
        .args(["-plaintext", "-emit-defaults"])
        .arg(format!("127.0.0.1:{}", cluster.ports[1]))
        .arg("processor.v1.ProcessorAdmin/GetScanStatus")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"nextHeight\": \"16\"") && text.contains("reorganisation"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_client_reports_a_down_daemon_and_reads_fees() {
    // Nobody listens here: a clear error naming the daemon, no panic.
    let port = free_port();
    let down = processor::monero::Daemon::new(format!("http://127.0.0.1:{port}"));
    let err = down.tip().await.expect_err("nothing listens");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );

    let chain = tempfile::tempdir().unwrap();
    let monerod = Monerod::start(chain.path()).await;
    let daemon = processor::monero::Daemon::new(monerod.url.clone());
    let rate = daemon
        .fee_rate(monero_wallet::interface::FeePriority::Normal)
        .await
        .expect("a fee rate");
    assert!(rate.per_weight() > 0 && rate.per_weight() <= processor::monero::MAX_FEE_PER_WEIGHT);
    monerod.mine(&elsewhere(), 3).await;
    assert_eq!(daemon.tip().await.unwrap(), 3);
    assert_eq!(
        processor::scanner::fetch(&daemon, 0..=3)
            .await
            .unwrap()
            .len(),
        4
    );
}

/// The fast `get_blocks.bin` path (full transactions, hashed here) gives
/// exactly what monero-daemon-rpc's validated path gives, on blocks with
/// RingCT payments (where this monerod sends no prunable hashes and the
/// library falls back to JSON per block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_block_fetch_matches_the_librarys() {
    use monero_wallet::interface::ProvidesScannableBlocks as _;
    let chain = tempfile::tempdir().unwrap();
    let monerod = Monerod::start(chain.path()).await;
    let wallet = WalletRpc::start_with(chain.path(), Some(&monerod.url)).await;
    wallet.create_wallet("payer").await;
    let payer = wallet.address().await;
    monerod.mine(&payer, 80).await;
    wallet.refresh().await;
    for _ in 0..3 {
        wallet
            .transfer(&[(&elsewhere(), 1_000_000_000_u64)], Default::default())
            .await
            .unwrap();
    }
    monerod.mine(&elsewhere(), 2).await;
    let daemon = processor::monero::Daemon::new(monerod.url.clone());
    let tip = daemon.tip().await.unwrap();
    let rpc = daemon.rpc().await.unwrap();
    let fast = processor::monero::blocks_bin::fetch(&rpc, 1..=tip)
        .await
        .expect("the fast path reads this monerod");
    let library = rpc
        .contiguous_scannable_blocks(1..=usize::try_from(tip).unwrap())
        .await
        .unwrap();
    assert_eq!(fast.len(), library.len());
    let with_payments = fast.iter().filter(|b| !b.transactions.is_empty()).count();
    assert!(with_payments >= 1, "the payments were mined");
    for (a, b) in fast.iter().zip(&library) {
        assert_eq!(a.block.hash(), b.block.hash());
        assert_eq!(
            a.output_index_for_first_ringct_output,
            b.output_index_for_first_ringct_output,
            "block {}",
            a.block.number()
        );
        assert!(
            a.transactions == b.transactions,
            "block {}",
            a.block.number()
        );
    }
    // A range past the tip is an error, not a short answer.
    assert!(
        processor::monero::blocks_bin::fetch(&rpc, tip..=tip + 5)
            .await
            .is_err()
    );
}
