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

/// Real parts for batch tests: regtest monerod, three processors with a
/// confirmed t-of-3 key and accounts 1 and 2 registered, and a user wallet
/// holding matured coinbase outputs.
struct Setup {
    monerod: Monerod,
    cluster: Cluster,
    wallet: WalletRpc,
    one: String,
    two: String,
    _chain: tempfile::TempDir,
}

impl Setup {
    async fn start(tag: &str, t: u32, failpoints: impl Fn(usize) -> Option<&'static str>) -> Self {
        let chain = tempfile::tempdir().unwrap();
        let monerod = Monerod::start(chain.path()).await;
        let url: &'static str = Box::leak(monerod.url.clone().into_boxed_str());
        let env = move |i| {
            let mut env = vec![
                ("PROCESSOR_MONERO__DAEMON_URL", url),
                ("PROCESSOR_MONERO__CONFIRMATIONS", "3"),
                ("PROCESSOR_MONERO__POLL_INTERVAL", "200ms"),
            ];
            if let Some(f) = failpoints(i) {
                env.push(("FAILPOINTS", f));
            }
            env
        };
        let cluster = Cluster::start_with(tag, 3, env, "[signing]\nround_timeout = \"4s\"\n").await;
        let session = cluster.coordinator.start_keygen(t, &[]).await.unwrap();
        cluster.wait_status(session, "confirmed").await;
        assert!(cluster.coordinator.register_account(1).await.unwrap());
        assert!(cluster.coordinator.register_account(2).await.unwrap());
        let key = group_key(&cluster).await;
        let one = processor::accounts::deposit_address(&key, 1).unwrap();
        let two = processor::accounts::deposit_address(&key, 2).unwrap();
        let wallet = WalletRpc::start_with(chain.path(), Some(&monerod.url)).await;
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
        Self {
            monerod,
            cluster,
            wallet,
            one,
            two,
            _chain: chain,
        }
    }

    /// Pays `a1` to account 1 and `a2` to account 2 in one transaction and
    /// mines it into one block (not yet final).
    async fn deposit(&self, a1: u64, a2: u64) {
        let sent = self
            .wallet
            .call(
                "transfer",
                serde_json::json!({"destinations": [{"amount": a1, "address": self.one}, {"amount": a2, "address": self.two}]}),
            )
            .await;
        assert!(sent.get("error").is_none(), "{sent}");
        self.monerod.mine(&elsewhere(), 1).await;
    }

    async fn wait_included(&self, count: usize) -> Vec<(i64, String, Vec<u8>, Option<Vec<u8>>)> {
        let pool = self.cluster.coordinator.pool.clone();
        eventually(
            "batches signed and included",
            Duration::from_secs(120),
            || async {
                let b = coordinator_batches(&pool).await;
                (b.len() == count && b.iter().all(|b| b.1 == "included")).then_some(b)
            },
        )
        .await
    }
}

fn instructions(encoded: &[u8]) -> Vec<(u32, u64)> {
    let batch = proto::processor_v1::Batch::decode(encoded).unwrap();
    let mut got: Vec<(u32, u64)> = batch
        .instructions
        .iter()
        .map(|i| (i.account, i.amount))
        .collect();
    got.sort_unstable();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_become_one_signed_batch_per_block() {
    let setup = Setup::start("batch", 2, |_| None).await;
    let cluster = &setup.cluster;
    let (a1, a2) = (1_500_000_000_000_u64, 700_000_000_000_u64);
    // The deposit's block plus two: below the finality depth, no batch.
    setup.deposit(a1, a2).await;
    setup.monerod.mine(&elsewhere(), 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        coordinator_batches(&cluster.coordinator.pool)
            .await
            .is_empty(),
        "a batch before finality"
    );

    // One more block makes the deposit final.
    setup.monerod.mine(&elsewhere(), 1).await;
    let batches = setup.wait_included(1).await;
    assert_eq!(
        instructions(&batches[0].2),
        vec![(1, a1), (2, a2)],
        "exact amounts and accounts"
    );
    // The coordinator verified it; verify again here with ed25519-dalek.
    let key: [u8; 32] = group_key(cluster).await;
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
    // An operator sees it with grpcurl.
    let out = std::process::Command::new(grpcurl())
        .args(["-plaintext", "-d", "{}"])
        .arg(format!("127.0.0.1:{}", cluster.ports[0]))
        .arg("processor.v1.ProcessorAdmin/ListBatches")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"status\": \"included\""), "{text}");
    assert!(
        text.contains(&format!("\"total\": \"{}\"", a1 + a2)),
        "{text}"
    );
    let out = std::process::Command::new(grpcurl())
        .args(["-plaintext", "-d", "{}"])
        .arg(format!("127.0.0.1:{}", cluster.ports[0]))
        .arg("processor.v1.ProcessorAdmin/ListOutputs")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("\"amount\": \"{a1}\"")) && text.contains("\"account\": 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_processor_offline_the_other_two_sign() {
    let mut setup = Setup::start("boff", 2, |_| None).await;
    setup.cluster.procs[2].as_mut().unwrap().kill9();
    setup.deposit(2_000_000_000_000, 300_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let batches = setup.wait_included(1).await;
    assert_eq!(
        instructions(&batches[0].2),
        vec![(1, 2_000_000_000_000), (2, 300_000_000_000)]
    );
    let signers: Vec<i32> =
        sqlx::query_scalar("SELECT unnest(signers) FROM sign_attempts WHERE status = 'done'")
            .fetch_all(&setup.cluster.coordinator.pool)
            .await
            .unwrap();
    assert!(
        !signers.contains(&3),
        "the offline processor was not a signer: {signers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_killed_after_its_preprocess_never_shares_that_attempt() {
    // 3-of-3: validator-2 must sign. It stops once chosen, before sharing.
    let mut setup = Setup::start("bkill", 3, |i| {
        (i == 1).then_some("signer-before-share=1*return")
    })
    .await;
    setup.deposit(900_000_000_000, 100_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let pool = setup.cluster.coordinator.pool.clone();
    eventually(
        "attempt 0's signers chosen",
        Duration::from_secs(60),
        || async {
            (scalar_i64(
                &pool,
                "SELECT count(*) FROM sign_attempts WHERE attempt = 0 AND status = 'sharing'",
            )
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    setup.cluster.procs[1].as_mut().unwrap().kill9();
    let dir = setup.cluster.dir.path().to_path_buf();
    let url: &'static str = Box::leak(setup.monerod.url.clone().into_boxed_str());
    setup.cluster.procs[1] = Some(spawn_processor(
        &name(1),
        &dir,
        setup.cluster.ports[1],
        &setup.cluster.dbs[1].url,
        &[
            ("PROCESSOR_MONERO__DAEMON_URL", url),
            ("PROCESSOR_MONERO__CONFIRMATIONS", "3"),
            ("PROCESSOR_MONERO__POLL_INTERVAL", "200ms"),
        ],
    ));
    let batches = setup.wait_included(1).await;
    assert_eq!(
        instructions(&batches[0].2),
        vec![(1, 900_000_000_000), (2, 100_000_000_000)]
    );
    // validator-2 (index 2) never shared for attempt 0; a later attempt signed.
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM sign_shares WHERE attempt = 0 AND idx = 2"
        )
        .await,
        0,
        "a share for an attempt begun before the restart"
    );
    assert!(
        scalar_i64(
            &pool,
            "SELECT max(attempt)::bigint FROM sign_attempts WHERE status = 'done'"
        )
        .await
            >= 1
    );
    // Every attempt of validator-2 had its own preprocess (fresh nonces).
    let p2 = setup.cluster.dbs[1].pool().await;
    assert_eq!(
        scalar_i64(
            &p2,
            "SELECT count(*) FROM send_log WHERE kind = 'sign_preprocess'"
        )
        .await,
        scalar_i64(&p2, "SELECT count(*) FROM sign_attempts").await
    );
    assert_eq!(
        scalar_i64(&p2, "SELECT count(*) FROM batches").await,
        1,
        "no batch twice"
    );
}

async fn group_key(cluster: &Cluster) -> [u8; 32] {
    let status = coordinator_mock::keygen::status(&cluster.coordinator.pool, Some(0))
        .await
        .unwrap()
        .pop()
        .unwrap();
    hex::decode(status.group_key).unwrap().try_into().unwrap()
}
