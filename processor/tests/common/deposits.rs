//! Real parts for deposit, batch and payout tests: a regtest monerod,
//! three processors with a confirmed t-of-3 key and accounts 1 and 2
//! registered, and a user wallet holding matured coinbase outputs.

use std::time::Duration;

use prost::Message as _;
use sqlx::PgPool;

use super::cluster::*;
use super::monero::*;
use super::*;

pub async fn coordinator_batches(pool: &PgPool) -> Vec<(i64, String, Vec<u8>, Option<Vec<u8>>)> {
    sqlx::query_as("SELECT id, status, encoded, signature FROM batches ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Real parts for batch tests: regtest monerod, three processors with a
/// confirmed t-of-3 key and accounts 1 and 2 registered, and a user wallet
/// holding matured coinbase outputs.
pub struct Setup {
    pub monerod: Monerod,
    pub cluster: Cluster,
    pub wallet: WalletRpc,
    pub one: String,
    pub two: String,
    /// The processors' environment (for restarts).
    pub env: Vec<(&'static str, &'static str)>,
    _chain: tempfile::TempDir,
}

impl Setup {
    pub async fn start(
        tag: &str,
        t: u32,
        failpoints: impl Fn(usize) -> Option<&'static str>,
    ) -> Self {
        Self::start_with(tag, t, &[], failpoints).await
    }

    /// As `start`, with more processor environment (e.g. scheduler settings).
    pub async fn start_with(
        tag: &str,
        t: u32,
        extra: &[(&'static str, &'static str)],
        failpoints: impl Fn(usize) -> Option<&'static str>,
    ) -> Self {
        Self::start_among(tag, 3, &[], t, extra, failpoints).await
    }

    /// `n` processors, the first key generated among `participants` (empty:
    /// all of them).
    pub async fn start_among(
        tag: &str,
        n: usize,
        participants: &[&str],
        t: u32,
        extra: &[(&'static str, &'static str)],
        failpoints: impl Fn(usize) -> Option<&'static str>,
    ) -> Self {
        let chain = tempfile::tempdir().unwrap();
        let monerod = Monerod::start(chain.path()).await;
        let url: &'static str = Box::leak(monerod.url.clone().into_boxed_str());
        let mut base = vec![
            ("PROCESSOR_MONERO__DAEMON_URL", url),
            ("PROCESSOR_MONERO__POLL_INTERVAL", "200ms"),
        ];
        base.extend_from_slice(extra);
        let base_env = base.clone();
        let env = move |i| {
            let mut env = base_env.clone();
            if let Some(f) = failpoints(i) {
                env.push(("FAILPOINTS", f));
            }
            env
        };
        let cluster = Cluster::start_with(
            tag,
            n,
            env,
            &format!("[signing]\nround_timeout = \"4s\"\n{}", chain_config(url)),
        )
        .await;
        let participants: Vec<String> = participants.iter().map(|p| (*p).to_owned()).collect();
        let session = cluster
            .coordinator
            .start_keygen(t, &participants)
            .await
            .unwrap();
        cluster.wait_status(session, "confirmed").await;
        assert!(cluster.coordinator.register_account(1).await.unwrap().0);
        assert!(cluster.coordinator.register_account(2).await.unwrap().0);
        let key = group_key(&cluster).await;
        let one = processor::accounts::deposit_address(&key, 1).unwrap();
        let two = processor::accounts::deposit_address(&key, 2).unwrap();
        let wallet = WalletRpc::start_with(chain.path(), Some(&monerod.url)).await;
        wallet.create_wallet("user").await;
        let user = wallet.address().await;
        monerod.mine(&user, 130).await;
        wallet.refresh().await;
        Self {
            monerod,
            cluster,
            wallet,
            one,
            two,
            env: base,
            _chain: chain,
        }
    }

    /// Pays `a1` to account 1 and `a2` to account 2 in one transaction and
    /// mines it into one block (not yet final).
    pub async fn deposit(&self, a1: u64, a2: u64) {
        self.wallet
            .transfer(&[(&self.one, a1), (&self.two, a2)], Default::default())
            .await
            .unwrap();
        self.monerod.mine(&elsewhere(), 1).await;
    }

    pub async fn wait_included(
        &self,
        count: usize,
    ) -> Vec<(i64, String, Vec<u8>, Option<Vec<u8>>)> {
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
    /// Restarts processor `i` (killed before) with the setup's environment.
    pub fn respawn(&mut self, i: usize) {
        let dir = self.cluster.dir.path().to_path_buf();
        self.cluster.procs[i] = Some(spawn_processor(
            &name(i),
            &dir,
            self.cluster.ports[i],
            &self.cluster.dbs[i].url,
            &self.env,
        ));
    }
}

/// The coordinator's settings for a cluster that scans `monerod_url`: keys
/// fix 3 confirmations and 4-block windows; settlement blocks (carrying the
/// Monero horizon) every 300 ms.
pub fn chain_config(monerod_url: &str) -> String {
    format!(
        "[keygen]\nconfirmations = 3\nwindow_blocks = 4\n\
         [settlement]\nblock_interval = \"300ms\"\nmonero_daemon_url = \"{monerod_url}\"\n"
    )
}

pub fn instructions(encoded: &[u8]) -> Vec<(u32, u64)> {
    let batch = proto::processor_v1::Batch::decode(encoded).unwrap();
    let mut got: Vec<(u32, u64)> = batch
        .instructions
        .iter()
        .map(|i| (i.account, i.amount))
        .collect();
    got.sort_unstable();
    got
}

pub async fn group_key(cluster: &Cluster) -> [u8; 32] {
    let status = coordinator_mock::keygen::status(&cluster.coordinator.pool, Some(0))
        .await
        .unwrap()
        .pop()
        .unwrap();
    hex::decode(status.group_key).unwrap().try_into().unwrap()
}
