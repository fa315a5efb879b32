//! Follows `monerod`, finalizes blocks `confirmations` deep, and stores the
//! outputs paid to the active key (its main address: the processors' own;
//! each registered account's subaddress; the change subaddress). A block's
//! outputs and the cursor past it commit together, so a restart resumes
//! exactly where the last commit left off. If the hash of a block already
//! finalized changes, scanning halts and says so: nothing below the finality
//! depth is ever reported twice or falsely.

pub mod db;

use std::sync::Arc;
use std::time::Duration;

use monero_wallet::Scanner;
use monero_wallet::address::SubaddressIndex;
use monero_wallet::transaction::Timelock;
use serde::Deserialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::accounts::view_pair;
use crate::keygen;
use crate::keystore::Keystore;
use crate::link::{HandleError, Outbox};
use crate::monero::Daemon;

/// The subaddress change returns to: account 0, minor 1.
pub const CHANGE_SUBADDRESS: (u32, u32) = (0, 1);

/// Where and how to scan.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MoneroConfig {
    /// monerod's RPC URL, e.g. "http://127.0.0.1:18081".
    pub daemon_url: String,
    /// A block is final once this many blocks are on top of it.
    #[serde(default = "default_confirmations")]
    pub confirmations: u64,
    /// How often to look for new blocks.
    #[serde(with = "humantime_serde", default = "default_poll")]
    pub poll_interval: Duration,
    /// Most blocks fetched and committed at once.
    #[serde(default = "default_batch")]
    pub scan_batch: u64,
    /// The first block number to scan once a key is active.
    #[serde(default)]
    pub start_height: u64,
}

fn default_confirmations() -> u64 {
    10
}

fn default_poll() -> Duration {
    Duration::from_secs(1)
}

fn default_batch() -> u64 {
    100
}

impl MoneroConfig {
    /// Checks values; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.daemon_url.starts_with("http://") || self.daemon_url.starts_with("https://")) {
            return Err(format!(
                "monero.daemon_url must start with http:// or https://, got {:?}",
                self.daemon_url
            ));
        }
        if self.confirmations == 0 {
            return Err("monero.confirmations must be at least 1".into());
        }
        if self.scan_batch == 0 {
            return Err("monero.scan_batch must be at least 1".into());
        }
        if self.poll_interval.is_zero() {
            return Err("monero.poll_interval must be more than 0".into());
        }
        Ok(())
    }
}

/// Why one scanning step stopped.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Daemon(#[from] crate::monero::DaemonError),
    #[error("database: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("{0}")]
    Halt(String),
}

/// What the scanner needs besides the database and the daemon: the keystore
/// (a batch's first preprocess leaves with the block) and the link.
#[derive(Debug, Clone)]
pub struct ScanContext {
    /// The keystore.
    pub keystore: Keystore,
    /// The coordinator link's id.
    pub link_id: String,
    /// Wakes the link's pump after a commit that enqueued.
    pub outbox: Outbox,
    /// Reports the scanner's health as service [`HEALTH_NAME`].
    pub health: tonic_health::server::HealthReporter,
    /// Coordination windows and payout completion are handled per block.
    pub scheduler: crate::scheduler::SchedulerConfig,
}

/// The grpc.health.v1 service name that says whether scanning runs.
pub const HEALTH_NAME: &str = "scanner";

/// Scans until `shutdown`; retries daemon and database trouble with capped
/// backoff; stops for good (with the reason stored) on a finalized reorg.
pub async fn run(
    pool: PgPool,
    daemon: Arc<Daemon>,
    config: MoneroConfig,
    context: ScanContext,
    shutdown: CancellationToken,
) {
    let mut delay = config.poll_interval;
    context
        .health
        .set_service_status(HEALTH_NAME, tonic_health::ServingStatus::Serving)
        .await;
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = step(&pool, &daemon, &config, &context) => r,
        };
        let wait = match result {
            Ok(0) => {
                delay = config.poll_interval;
                config.poll_interval
            }
            Ok(_) => Duration::ZERO,
            Err(StepError::Halt(reason)) => {
                error!("scanning halted: {reason}");
                context
                    .health
                    .set_service_status(HEALTH_NAME, tonic_health::ServingStatus::NotServing)
                    .await;
                return;
            }
            Err(e) => {
                if matches!(e, StepError::Storage(_)) {
                    crate::metrics::db_error("scan");
                }
                warn!("scanning step failed, retrying in {delay:?}: {e}");
                let wait = delay;
                delay = (delay * 2).min(Duration::from_secs(30));
                wait
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Blocks asked for per request. monerod's `get_blocks.bin` answers with up
/// to 1000 blocks from the requested start; monerod before 0.18.4.3 ignores
/// a smaller `max_block_count`, so a smaller chunk would make it serialize
/// (and us discard) up to 1000 blocks per request.
pub const FETCH_CHUNK: u64 = 1000;

/// Fetches the blocks of `range` in order, `FETCH_CHUNK` blocks per request,
/// all requests in flight at once.
pub async fn fetch(
    daemon: &Daemon,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Vec<monero_wallet::interface::ScannableBlock>, crate::monero::DaemonError> {
    let (start, end) = (*range.start(), *range.end());
    let chunks = (start..=end)
        .step_by(usize::try_from(FETCH_CHUNK).unwrap_or(1000))
        .map(|from| {
            let to = (from + FETCH_CHUNK - 1).min(end);
            daemon.blocks(from..=to)
        });
    let fetched = futures::future::try_join_all(chunks).await?;
    Ok(fetched.into_iter().flatten().collect())
}

/// One block, scanned.
#[derive(Debug)]
pub struct ScannedBlock {
    /// Its number.
    pub height: u64,
    /// Its hash.
    pub hash: [u8; 32],
    /// Its transactions, when asked for (to match payouts against).
    pub transactions: Option<crate::scheduler::BlockTransactions>,
    /// The outputs found, timelocks not yet applied.
    pub outputs: Vec<monero_wallet::WalletOutput>,
}

/// Scans `blocks` on every core (each thread a clone of `scanner` over a
/// contiguous share of the blocks), keeping block order. An error names the
/// block that does not scan.
pub fn scan_all(
    scanner: &Scanner,
    blocks: Vec<monero_wallet::interface::ScannableBlock>,
    keep_transactions: bool,
) -> Result<Vec<ScannedBlock>, String> {
    let scan_one = |scanner: &mut Scanner, block: monero_wallet::interface::ScannableBlock| {
        let height = block.block.number() as u64;
        let hash = block.block.hash();
        let transactions = keep_transactions.then(|| crate::scheduler::BlockTransactions {
            hashes: block.block.transactions.clone(),
            transactions: block.transactions.clone(),
        });
        let outputs = scanner
            .scan(block)
            .map_err(|e| format!("block {height} does not scan: {e:?}"))?
            .ignore_additional_timelock();
        Ok::<_, String>(ScannedBlock {
            height,
            hash,
            transactions,
            outputs,
        })
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(blocks.len().div_ceil(32))
        .max(1);
    if threads == 1 {
        let mut scanner = scanner.clone();
        return blocks
            .into_iter()
            .map(|b| scan_one(&mut scanner, b))
            .collect();
    }
    let per_thread = blocks.len().div_ceil(threads);
    let mut shares: Vec<Vec<monero_wallet::interface::ScannableBlock>> = Vec::new();
    let mut rest = blocks.into_iter();
    loop {
        let share: Vec<_> = rest.by_ref().take(per_thread).collect();
        if share.is_empty() {
            break;
        }
        shares.push(share);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let mut scanner = scanner.clone();
                scope.spawn(move || {
                    share
                        .into_iter()
                        .map(|b| scan_one(&mut scanner, b))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut scanned = Vec::new();
        for handle in handles {
            scanned.extend(
                handle
                    .join()
                    .map_err(|_| "a scanning thread panicked".to_owned())??,
            );
        }
        Ok(scanned)
    })
}

/// Scans the next batch of finalized blocks. Returns how many it stored.
async fn step(
    pool: &PgPool,
    daemon: &Daemon,
    config: &MoneroConfig,
    context: &ScanContext,
) -> Result<u64, StepError> {
    let started = std::time::Instant::now();
    let Some((session, group_key)) = keygen::db::active(pool).await? else {
        return Ok(0);
    };
    let Some(key) = crate::scheduler::db::active_key(pool)
        .await?
        .filter(|k| k.session == session)
    else {
        return Ok(0);
    };
    // Blocks' transactions are kept for matching only while a plan is open.
    let watch_plans: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM plans WHERE session = $1 AND status NOT IN ('completed', 'superseded'))",
    )
    .bind(crate::link::db::to_i64(session))
    .fetch_one(pool)
    .await?;
    let (next, halted) = db::cursor(pool)
        .await?
        .unwrap_or((config.start_height, None));
    if let Some(reason) = halted {
        return Err(StepError::Halt(reason));
    }
    let tip = daemon.tip().await?;
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!(crate::metrics::SCAN_TIP).set(tip as f64);
        metrics::gauge!(crate::metrics::SCAN_LAG).set(tip.saturating_sub(next) as f64);
    }
    let Some(finalized_tip) = tip.checked_sub(config.confirmations) else {
        return Ok(0);
    };
    if finalized_tip < next {
        return Ok(0);
    }
    // Fetch the last finalized block again to notice a reorg below the depth.
    let from = next.saturating_sub(1);
    let end = finalized_tip.min(next + config.scan_batch - 1);
    let blocks = fetch(daemon, from..=end).await?;
    if next > 0 {
        let stored = db::block_hash(pool, next - 1).await?;
        let seen = blocks.first().map(|b| b.block.hash());
        if let (Some(stored), Some(seen)) = (stored, seen)
            && stored.as_slice() != seen.as_slice()
        {
            let reason = format!(
                "the hash of finalized block {} changed from {} to {}: a reorganisation deeper \
                 than monero.confirmations ({}); an operator must investigate before scanning resumes",
                next - 1,
                hex::encode(&stored),
                hex::encode(seen),
                config.confirmations
            );
            db::halt(pool, &reason, next).await?;
            return Err(StepError::Halt(reason));
        }
    }
    let pair = view_pair(&group_key).ok_or_else(|| {
        StepError::Halt(format!("the key of session {session} is not a valid point"))
    })?;
    let mut scanner = Scanner::new(pair);
    for account in db::accounts(pool).await? {
        if let Some(index) = SubaddressIndex::new(account, 0) {
            scanner.register_subaddress(index);
        }
    }
    if let Some(index) = SubaddressIndex::new(CHANGE_SUBADDRESS.0, CHANGE_SUBADDRESS.1) {
        scanner.register_subaddress(index);
    }
    // Scanning is CPU work: off the async workers, on every core.
    let to_scan: Vec<_> = blocks.into_iter().skip(usize::from(next > 0)).collect();
    let scanned = tokio::task::spawn_blocking(move || scan_all(&scanner, to_scan, watch_plans))
        .await
        .map_err(|e| StepError::Halt(format!("the scanning task failed: {e}")))?
        .map_err(StepError::Halt)?;
    let mut tx = pool.begin().await?;
    let mut stored = 0;
    for block in scanned {
        let span = info_span!("block", height = block.height, session);
        async {
            let (height, hash, transactions, found) =
                (block.height, block.hash, block.transactions, block.outputs);
            let outputs: Vec<db::NewOutput> = found
                .iter()
                .map(|o| {
                    let (account, minor) = o
                        .subaddress()
                        .map_or((0, 0), |s| (s.account(), s.address()));
                    let (unlock_height, unlock_time) = match o.additional_timelock() {
                        Timelock::None => (None, None),
                        Timelock::Block(b) => (Some(b as u64), None),
                        Timelock::Time(t) => (None, Some(t)),
                    };
                    db::NewOutput {
                        tx_hash: o.transaction(),
                        index_in_tx: o.index_in_transaction(),
                        session,
                        block_height: height,
                        account,
                        subaddress_minor: minor,
                        amount: o.commitment().amount,
                        unlock_height,
                        unlock_time,
                        wallet_output: o.serialize(),
                    }
                })
                .collect();
            let found_count = outputs.len() as u64;
            for o in &outputs {
                info!(height, account = o.account, amount = o.amount, tx = %hex::encode(o.tx_hash), "output found");
            }
            db::insert_block(&mut tx, height, &hash, &outputs).await?;
            let deposits: Vec<db::NewOutput> = outputs.into_iter().filter(|o| o.account >= 1).collect();
            if !deposits.is_empty() {
                let id = crate::batch::create(
                    &mut tx,
                    &context.keystore,
                    &context.link_id,
                    session,
                    height,
                    &hash,
                    &deposits,
                )
                .await
                .map_err(|e| match e {
                    HandleError::Storage(e) => StepError::Storage(e),
                    HandleError::Rejected(why) => {
                        StepError::Halt(format!("batch for block {height}: {why}"))
                    }
                })?;
                info!(
                    batch = id,
                    height,
                    deposits = deposits.len(),
                    "batch proposed"
                );
                metrics::counter!(crate::metrics::BATCHES_CREATED).increment(1);
            }
            crate::scheduler::on_block(
                &mut tx,
                &context.link_id,
                &context.scheduler,
                &key,
                height,
                &hash,
                transactions.as_ref(),
            )
            .await
            .map_err(|e| match e {
                HandleError::Storage(e) => StepError::Storage(e),
                HandleError::Rejected(why) => StepError::Halt(format!("block {height}: {why}")),
            })?;
            db::set_cursor(&mut tx, height + 1).await?;
            metrics::counter!(crate::metrics::SCAN_OUTPUTS).increment(found_count);
            Ok::<(), StepError>(())
        }
        .instrument(span)
        .await?;
        stored += 1;
    }
    tx.commit().await?;
    context.outbox.wake();
    debug!(from = next, to = end, tip, "finalized blocks stored");
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::counter!(crate::metrics::SCAN_BLOCKS).increment(stored);
        metrics::gauge!(crate::metrics::SCAN_FINALIZED)
            .set((next + stored).saturating_sub(1) as f64);
        metrics::gauge!(crate::metrics::SCAN_LAG).set(tip.saturating_sub(next + stored) as f64);
        metrics::histogram!(crate::metrics::SCAN_STEP_SECONDS)
            .record(started.elapsed().as_secs_f64());
    }
    Ok(stored)
}
