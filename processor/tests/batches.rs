//! Deposits to batches on real parts: a user's monero-wallet-rpc pays two
//! accounts' subaddresses on a regtest monerod; once the block is final the
//! processors build one Batch, sign it with FROST through the coordinator,
//! and the coordinator verifies it with ed25519-dalek and includes it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::monero::*;
use common::*;
use prost::Message as _;
use sqlx::PgPool;

async fn coordinator_batches(pool: &PgPool) -> Vec<(i64, String, Vec<u8>, Option<Vec<u8>>)> {
    sqlx::query_as("SELECT id, status, encoded, signature FROM batches ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_become_one_signed_batch_per_block() {
    let chain_dir = tempfile::tempdir().unwrap();
    let monerod = Monerod::start(chain_dir.path()).await;
    let url: &'static str = Box::leak(monerod.url.clone().into_boxed_str());
    let env = move |_| {
        vec![
            ("PROCESSOR_MONERO__DAEMON_URL", url),
            ("PROCESSOR_MONERO__CONFIRMATIONS", "3"),
            ("PROCESSOR_MONERO__POLL_INTERVAL", "200ms"),
        ]
    };
    let cluster = Cluster::start_with("batch", 3, env, "[signing]\nround_timeout = \"5s\"\n").await;
    let session = cluster.coordinator.start_keygen(2, &[]).await.unwrap();
    cluster.wait_status(session, "confirmed").await;
    assert!(cluster.coordinator.register_account(1).await.unwrap());
    assert!(cluster.coordinator.register_account(2).await.unwrap());
    let one = processor::accounts::deposit_address(&group_key(&cluster).await, 1).unwrap();
    let two = processor::accounts::deposit_address(&group_key(&cluster).await, 2).unwrap();

    // The user: a wallet with matured coinbase outputs and enough outputs on
    // chain for its ring.
    let wallet = WalletRpc::start_with(chain_dir.path(), Some(&monerod.url)).await;
    let created = wallet
        .call(
            "create_wallet",
            serde_json::json!({"filename": "user", "language": "English"}),
        )
        .await;
    assert!(created.get("error").is_none(), "{created}");
    let user = wallet
        .call("get_address", serde_json::json!({"account_index": 0}))
        .await["result"]["address"]
        .as_str()
        .unwrap()
        .to_owned();
    monerod.mine(&user, 130).await;
    wallet.call("refresh", serde_json::json!({})).await;
    let (a1, a2) = (1_500_000_000_000_u64, 700_000_000_000_u64);
    let sent = wallet
        .call(
            "transfer",
            serde_json::json!({"destinations": [{"amount": a1, "address": one}, {"amount": a2, "address": two}]}),
        )
        .await;
    assert!(sent.get("error").is_none(), "{sent}");

    // Mine the deposit, then fewer blocks than the finality depth: no batch.
    monerod.mine(&elsewhere(), 1).await;
    monerod.mine(&elsewhere(), 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        coordinator_batches(&cluster.coordinator.pool)
            .await
            .is_empty(),
        "a batch before finality"
    );

    // One more block makes the deposit final.
    monerod.mine(&elsewhere(), 1).await;
    let pool = cluster.coordinator.pool.clone();
    let batches = eventually(
        "the batch is signed and included",
        Duration::from_secs(90),
        || async {
            let b = coordinator_batches(&pool).await;
            (b.len() == 1 && b[0].1 == "included").then_some(b)
        },
    )
    .await;
    let batch = proto::processor_v1::Batch::decode(batches[0].2.as_slice()).unwrap();
    let mut got: Vec<(u32, u64)> = batch
        .instructions
        .iter()
        .map(|i| (i.account, i.amount))
        .collect();
    got.sort_unstable();
    assert_eq!(got, vec![(1, a1), (2, a2)], "exact amounts and accounts");
    assert_eq!(batch.session, 0);
    // The coordinator verified it; verify again here with ed25519-dalek.
    let key: [u8; 32] = group_key(&cluster).await;
    let signature: [u8; 64] = batches[0].3.clone().unwrap().try_into().unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify_strict(
            &processor::batch::message(&batches[0].2),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .expect("the batch signature verifies");

    // The next settlement block includes it on every processor.
    cluster.coordinator.emit_settlement_block().await.unwrap();
    for db in &cluster.dbs {
        let p = db.pool().await;
        eventually(
            "the processor learns the batch is included",
            Duration::from_secs(20),
            || async {
                (scalar_i64(&p, "SELECT count(*) FROM batches WHERE status = 'included'").await
                    == 1)
                    .then_some(())
            },
        )
        .await;
        assert_eq!(
            scalar_i64(&p, "SELECT count(*) FROM batches").await,
            1,
            "one batch per notable block"
        );
    }
    drop(wallet);
}

async fn group_key(cluster: &Cluster) -> [u8; 32] {
    let status = coordinator_mock::keygen::status(&cluster.coordinator.pool, Some(0))
        .await
        .unwrap()
        .pop()
        .unwrap();
    hex::decode(status.group_key).unwrap().try_into().unwrap()
}
