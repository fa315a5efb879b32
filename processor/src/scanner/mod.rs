//! Follows `monerod`, finalizes blocks `confirmations` deep, and stores the
//! outputs paid to the active key (its main address: the processors' own;
//! each registered account's subaddress; the change subaddress). A block's
//! outputs and the cursor past it commit together, so a restart resumes
//! exactly where the last commit left off. If the hash of a block already
//! finalized changes, scanning halts and says so: nothing below the finality
//! depth is ever reported twice or falsely.

pub mod db;
pub mod prefilter;

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

pub use crate::accounts::{CHANGE_SUBADDRESS, FORWARD_SUBADDRESS};

/// Where and how to scan. What a processor reports is fixed by the key
/// (`KeyGenStart`), not here: `confirmations` may only repeat the key's value.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MoneroConfig {
    /// monerod's RPC URL, e.g. "http://127.0.0.1:18081".
    pub daemon_url: String,
    /// Optional: the finality depth this operator expects. The key fixes the
    /// depth every processor uses; if this is set and differs, scanning
    /// refuses to start and says which value the key fixes.
    #[serde(default)]
    pub confirmations: Option<u64>,
    /// How often to look for new blocks.
    #[serde(with = "humantime_serde", default = "default_poll")]
    pub poll_interval: Duration,
    /// Most blocks fetched and committed at once.
    #[serde(default = "default_batch")]
    pub scan_batch: u64,
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
        if self.confirmations == Some(0) {
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
pub enum StepError {
    /// monerod trouble: retried.
    #[error(transparent)]
    Daemon(#[from] crate::monero::DaemonError),
    /// Postgres trouble: retried.
    #[error("database: {0}")]
    Storage(#[from] sqlx::Error),
    /// This processor's config contradicts the key: retried (and reported
    /// in health) until the operator fixes it.
    #[error("{0}")]
    Config(String),
    /// Scanning stops for good (the reason is stored).
    #[error("{0}")]
    Halt(String),
    /// A fault on this side (a sealed key that does not open, a stored row
    /// that no longer decodes): nothing commits; retried with backoff and
    /// reported in health until it clears.
    #[error("local fault: {0}")]
    Local(String),
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
    /// What each finalized block is handed to, in its transaction
    /// (coordination windows, payout completion: the scheduler).
    pub blocks: Arc<dyn BlockHandler>,
    /// Notified after each commit of finalized blocks (a window may have
    /// opened), so what acts on them need not poll.
    pub finalized: Arc<tokio::sync::Notify>,
}

/// One finalized block's transactions, for matching plans against.
#[derive(Debug)]
pub struct BlockTransactions {
    /// Transaction hashes, in block order (miner transaction excluded).
    pub hashes: Vec<[u8; 32]>,
    /// The transactions.
    pub transactions:
        Vec<monero_wallet::transaction::Transaction<monero_wallet::transaction::Pruned>>,
}

/// What acts on each finalized block, in the scanner's transaction for it
/// (the scheduler: windows open, plans complete or end). A trait, so the
/// scanner depends on nothing that acts on what it finds: the processor
/// wires the scheduler in.
pub trait BlockHandler: std::fmt::Debug + Send + Sync {
    /// The window length this processor's config repeats, if any: checked
    /// against the key's (local settings may repeat the key, never change it).
    fn local_window_blocks(&self) -> Option<u64>;

    /// Handles finalized block `height` for `key`, whose windows are
    /// `window_blocks` long; `block` carries its transactions while a plan of
    /// the key is open.
    #[allow(clippy::too_many_arguments)]
    fn on_block<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        link_id: &'a str,
        window_blocks: u64,
        key: &'a keygen::db::ActiveKey,
        height: u64,
        hash: &'a [u8; 32],
        block: Option<&'a BlockTransactions>,
    ) -> futures::future::BoxFuture<'a, Result<(), HandleError>>;
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
    let mut prefetched = None;
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = step(&pool, &daemon, &config, &context, &mut prefetched) => r,
        };
        let wait = match result {
            Ok(0) => {
                delay = config.poll_interval;
                context
                    .health
                    .set_service_status(HEALTH_NAME, tonic_health::ServingStatus::Serving)
                    .await;
                config.poll_interval
            }
            Ok(_) => Duration::ZERO,
            Err(StepError::Config(reason)) => {
                error!("scanning refuses to start: {reason}");
                context
                    .health
                    .set_service_status(HEALTH_NAME, tonic_health::ServingStatus::NotServing)
                    .await;
                delay = (delay * 2).min(Duration::from_secs(30));
                delay
            }
            Err(StepError::Local(reason)) => {
                error!("scanning step failed on a local fault, retrying in {delay:?}: {reason}");
                context
                    .health
                    .set_service_status(HEALTH_NAME, tonic_health::ServingStatus::NotServing)
                    .await;
                let wait = delay;
                delay = (delay * 2).min(Duration::from_secs(30));
                wait
            }
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
    /// Its header's timestamp (what a time lock is compared with).
    pub timestamp: u64,
    /// Its transactions, when asked for (to match payouts against).
    pub transactions: Option<BlockTransactions>,
    /// The outputs found, timelocks not yet applied.
    pub outputs: Vec<monero_wallet::WalletOutput>,
}

/// Scans `blocks` on every core (each thread a clone of `scanner` over a
/// contiguous share of the blocks), keeping block order. An error names the
/// block that does not scan.
pub fn scan_all(
    scanner: &Scanner,
    filter: &prefilter::ViewTagFilter,
    blocks: Vec<monero_wallet::interface::ScannableBlock>,
    keep_transactions: bool,
) -> Result<Vec<ScannedBlock>, String> {
    let scan_one = |scanner: &mut Scanner, mut block: monero_wallet::interface::ScannableBlock| {
        let height = block.block.number() as u64;
        let hash = block.block.hash();
        let timestamp = block.block.header.timestamp;
        let transactions = keep_transactions.then(|| BlockTransactions {
            hashes: block.block.transactions.clone(),
            transactions: block.transactions.clone(),
        });
        // After the transactions are kept: the filter empties the extra of
        // those that cannot pay us, which the Scanner then skips.
        filter.strip(&mut block);
        let outputs = scanner
            .scan(block)
            .map_err(|e| format!("block {height} does not scan: {e:?}"))?
            .ignore_additional_timelock();
        Ok::<_, String>(ScannedBlock {
            height,
            hash,
            timestamp,
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

/// A key blocks are scanned for, with what the scheduler needs of it.
#[derive(Debug, Clone)]
pub struct ScanKey {
    /// The key as confirmed, with the parameters fixed with it.
    pub key: keygen::db::ConfirmedKey,
    /// What the scheduler needs (our index, n, t).
    pub active: keygen::db::ActiveKey,
    /// Its transition heights (see [`crate::lifecycle`]).
    pub heights: crate::lifecycle::Heights,
}

/// The keys this processor holds whose blocks from `height` on are
/// processed (active, forwarding or finishing), and the last block before
/// any key's stage changes by schedule: every block up to it is processed
/// for the same keys. Empty before the first key's activation.
pub async fn keys_at(
    pool: &PgPool,
    height: u64,
) -> Result<(Vec<ScanKey>, Option<u64>), sqlx::Error> {
    let chain = crate::lifecycle::db::chain(pool).await?;
    let confirmed = keygen::db::confirmed_keys(pool).await?;
    let until = chain
        .iter()
        .filter_map(|k| k.heights.next_boundary(height))
        .min()
        .map(|b| b.saturating_sub(1));
    let mut keys = Vec::new();
    for link in chain.iter().filter(|k| k.own) {
        if !link.heights.stage_at(height).live() {
            continue;
        }
        let Some(key) = confirmed.iter().find(|k| k.session == link.session) else {
            continue;
        };
        let Some(active) = keygen::db::participation(pool, key.session).await? else {
            continue;
        };
        keys.push(ScanKey {
            key: key.clone(),
            active,
            heights: link.heights,
        });
    }
    Ok((keys, until))
}

/// Where scanning resumes: the cursor, or the first key's activation height.
/// `None` while no key is confirmed.
pub async fn resume_at(pool: &PgPool) -> Result<Option<(u64, Option<String>)>, sqlx::Error> {
    if let Some(cursor) = db::cursor(pool).await? {
        return Ok(Some(cursor));
    }
    let first = keygen::db::confirmed_keys(pool)
        .await?
        .first()
        .map(|k| k.activation_height);
    Ok(first.map(|h| (h, None)))
}

/// Refuses to scan when this processor's config contradicts the key: local
/// settings may repeat the key's parameters, never change them.
fn check_local_config(
    config: &MoneroConfig,
    local_window_blocks: Option<u64>,
    key: &keygen::db::ConfirmedKey,
) -> Result<(), StepError> {
    let fixed = key.chain;
    let mut differ = Vec::new();
    if let Some(local) = config.confirmations
        && local != fixed.confirmations
    {
        differ.push(format!(
            "monero.confirmations is {local} here, the key fixes {}",
            fixed.confirmations
        ));
    }
    if let Some(local) = local_window_blocks
        && local != fixed.window_blocks
    {
        differ.push(format!(
            "scheduler.window_blocks is {local} here, the key fixes {}",
            fixed.window_blocks
        ));
    }
    if differ.is_empty() {
        return Ok(());
    }
    Err(StepError::Config(format!(
        "this processor's config disagrees with key session {}: {}; remove these settings (the key \
         decides them for every processor alike) or set them to the key's values, then restart",
        key.session,
        differ.join("; ")
    )))
}

/// The next range's blocks, being fetched while this one is scanned.
struct Prefetch {
    range: std::ops::RangeInclusive<u64>,
    task: tokio::task::JoinHandle<
        Result<Vec<monero_wallet::interface::ScannableBlock>, crate::monero::DaemonError>,
    >,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Scans the next batch of finalized blocks. Returns how many it stored.
/// While they are scanned, the batch after them (if already final) is
/// fetched into `prefetched`, for the next step to take if it asks for the
/// same first block; either way that step checks the first block against
/// the stored hash of the one before, as any fetch is checked.
async fn step(
    pool: &PgPool,
    daemon: &Arc<Daemon>,
    config: &MoneroConfig,
    context: &ScanContext,
    prefetched: &mut Option<Prefetch>,
) -> Result<u64, StepError> {
    let started = std::time::Instant::now();
    let Some((next, halted)) = resume_at(pool).await? else {
        return Ok(0);
    };
    if let Some(reason) = halted {
        return Err(StepError::Halt(reason));
    }
    let (keys, until) = keys_at(pool, next).await?;
    if keys.is_empty() {
        return Ok(0);
    }
    for key in &keys {
        check_local_config(config, context.blocks.local_window_blocks(), &key.key)?;
    }
    // Final for every key processed: the deepest depth any of them fixes.
    let confirmations = keys
        .iter()
        .map(|k| k.key.chain.confirmations)
        .max()
        .unwrap_or(u64::MAX);
    // The settlement chain's horizon: nothing it has yet to deliver can
    // change how a block at or below it is read.
    let Some(horizon) = crate::settlement::db::horizon(pool).await? else {
        return Ok(0);
    };
    let tip = daemon.tip().await?;
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!(crate::metrics::SCAN_TIP).set(tip as f64);
        metrics::gauge!(crate::metrics::SCAN_LAG).set(tip.saturating_sub(next) as f64);
    }
    let Some(finalized_tip) = tip.checked_sub(confirmations) else {
        return Ok(0);
    };
    let mut limit = finalized_tip.min(horizon);
    if let Some(until) = until {
        limit = limit.min(until);
    }
    let mut end = limit.min(next + config.scan_batch - 1);
    if end < next {
        debug!(
            next,
            finalized_tip,
            horizon,
            "waiting for a block that is both final and within the settlement horizon"
        );
        return Ok(0);
    }
    // Fetch the last finalized block again to notice a reorg below the depth.
    let from = next.saturating_sub(1);
    let mut blocks = match prefetched.take() {
        // Fetched while the previous batch was scanned: no further than is
        // final now (it was final then, and finality only grows).
        Some(mut p) if *p.range.start() == from && *p.range.end() <= end => {
            end = *p.range.end();
            (&mut p.task)
                .await
                .map_err(|e| StepError::Local(format!("the block prefetch failed: {e}")))??
        }
        _ => fetch(daemon, from..=end).await?,
    };
    if end < limit {
        let range = end..=limit.min(end + config.scan_batch);
        let (daemon, r) = (daemon.clone(), range.clone());
        *prefetched = Some(Prefetch {
            range,
            task: tokio::spawn(async move { fetch(&daemon, r).await }),
        });
    }
    if next > 0 {
        let stored = db::block_hash(pool, next - 1).await?;
        let seen = blocks.first().map(|b| b.block.hash());
        if let (Some(stored), Some(seen)) = (stored, seen)
            && stored.as_slice() != seen.as_slice()
        {
            let reason = format!(
                "the hash of finalized block {} changed from {} to {}: a reorganisation deeper \
                 than the key's confirmations ({}); an operator must investigate before scanning resumes",
                next - 1,
                hex::encode(&stored),
                hex::encode(seen),
                confirmations
            );
            db::halt(pool, &reason, next).await?;
            return Err(StepError::Halt(reason));
        }
        blocks.remove(0);
    }
    let stored = ingest(pool, context, &keys, next, blocks).await?;
    set_stage_gauges(pool, next + stored).await?;
    debug!(
        from = next,
        to = end,
        tip,
        horizon,
        "finalized blocks stored"
    );
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

/// Sets each own key's stage gauge for block `height` (the next to scan).
async fn set_stage_gauges(pool: &PgPool, height: u64) -> Result<(), sqlx::Error> {
    for key in crate::lifecycle::db::chain(pool)
        .await?
        .into_iter()
        .filter(|k| k.own)
    {
        let now = key.heights.stage_at(height);
        for stage in crate::lifecycle::Stage::ALL {
            metrics::gauge!(
                crate::metrics::KEY_STAGE,
                "session" => key.session.to_string(),
                "stage" => stage.as_str()
            )
            .set(if stage == now { 1.0 } else { 0.0 });
        }
    }
    Ok(())
}

/// Scans `blocks` (consecutive, the first numbered `next`) for every key
/// in `keys` (those processed at `next`, the same for every block given)
/// and stores what they hold with the cursor past them, in one transaction.
/// Everything stored is a function of the blocks, the keys and the accounts
/// registered by the settlement chain: never of when this runs.
pub async fn ingest(
    pool: &PgPool,
    context: &ScanContext,
    keys: &[ScanKey],
    next: u64,
    blocks: Vec<monero_wallet::interface::ScannableBlock>,
) -> Result<u64, StepError> {
    let Some(last) = blocks.last() else {
        return Ok(0);
    };
    let end = last.block.number() as u64;
    for (i, block) in blocks.iter().enumerate() {
        let expected = next + i as u64;
        if block.block.number() as u64 != expected {
            return Err(StepError::Halt(format!(
                "monerod answered block {} where block {expected} was asked for",
                block.block.number()
            )));
        }
    }
    // An account counts from the block its registration names; an output
    // to it before then is not credited (as if it had not been scanned).
    let accounts: std::collections::BTreeMap<u32, u64> = crate::accounts::db::active_by(pool, end)
        .await?
        .into_iter()
        .collect();
    let mut owned = Some(blocks);
    let mut per_key = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let session = key.key.session;
        // Blocks' transactions are kept for matching only while a plan is open.
        let watch_plans = db::open_plans_exist(pool, session).await?;
        let pair = view_pair(&key.key.group_key).ok_or_else(|| {
            StepError::Halt(format!("the key of session {session} is not a valid point"))
        })?;
        let mut scanner = Scanner::new(pair);
        for &account in accounts.keys() {
            if let Some(index) = SubaddressIndex::new(account, 0) {
                scanner.register_subaddress(index);
            }
        }
        for (account, minor) in [CHANGE_SUBADDRESS, FORWARD_SUBADDRESS] {
            if let Some(index) = SubaddressIndex::new(account, minor) {
                scanner.register_subaddress(index);
            }
        }
        let filter =
            prefilter::ViewTagFilter::new(crate::keystore::dkg::view_key(&key.key.group_key));
        // The last key takes the blocks; the others scan copies.
        let blocks = if i + 1 == keys.len() {
            owned.take().unwrap_or_default()
        } else {
            owned.clone().unwrap_or_default()
        };
        // Scanning is CPU work: off the async workers, on every core.
        let scanned =
            tokio::task::spawn_blocking(move || scan_all(&scanner, &filter, blocks, watch_plans))
                .await
                .map_err(|e| StepError::Halt(format!("the scanning task failed: {e}")))?
                .map_err(StepError::Halt)?;
        per_key.push(scanned);
    }
    let mut tx = pool.begin().await?;
    db::lock_chain_order(&mut tx).await?;
    let mut stored = 0;
    let mut retired = std::collections::HashSet::new();
    let mut iters: Vec<_> = per_key.into_iter().map(Vec::into_iter).collect();
    for offset in 0..=(end - next) {
        let height = next + offset;
        let mut found = Vec::with_capacity(keys.len());
        for (key, scanned) in keys.iter().zip(iters.iter_mut()) {
            let block = scanned.next().ok_or_else(|| {
                StepError::Local(format!("block {height} was not scanned for every key"))
            })?;
            found.push((key, block));
        }
        let span = info_span!("block", height);
        let newly_retired = store_block(&mut tx, context, &accounts, &retired, found)
            .instrument(span)
            .await?;
        retired.extend(newly_retired);
        stored += 1;
    }
    tx.commit().await?;
    context.outbox.wake();
    context.finalized.notify_one();
    Ok(stored)
}

/// How an output found in a block is taken in.
fn classify(
    o: &monero_wallet::WalletOutput,
    height: u64,
    timestamp: u64,
    session: u64,
) -> db::NewOutput {
    let (account, minor) = o
        .subaddress()
        .map_or((0, 0), |s| (s.account(), s.address()));
    let (unlock_height, unlock_time) = match o.additional_timelock() {
        Timelock::None => (None, None),
        Timelock::Block(b) => (Some(b as u64), None),
        Timelock::Time(t) => (None, Some(t)),
    };
    // A lock already passed at the block that carries the output is no lock.
    let locked =
        unlock_height.is_some_and(|h| h > height) || unlock_time.is_some_and(|t| t > timestamp);
    let change = (account, minor) == CHANGE_SUBADDRESS;
    let forwarded = (account, minor) == FORWARD_SUBADDRESS;
    let status = match (locked, change || forwarded) {
        (true, _) => db::OutputStatus::Locked,
        // Change and forwards are the group's own: spendable without a batch.
        (false, true) => db::OutputStatus::Included,
        (false, false) => db::OutputStatus::Received,
    };
    let reason = if forwarded && !locked {
        Some(
            "forwarded by an earlier key of the group: the group's own funds, not a deposit \
             (deposits are credited once, when they reach a key's address)"
                .to_owned(),
        )
    } else {
        locked.then(|| match (unlock_height, unlock_time) {
        (Some(h), _) => format!("timelocked until block {h}: reported in the batch of block {h}"),
        (_, Some(t)) => format!(
            "timelocked until Unix time {t}: reported in the batch of the first finalized block \
             whose timestamp reaches it"
        ),
        _ => String::new(),
        })
    };
    db::NewOutput {
        tx_hash: o.transaction(),
        index_in_tx: o.index_in_transaction(),
        output_key: o.key().compress().to_bytes(),
        session,
        block_height: height,
        account,
        subaddress_minor: minor,
        amount: o.commitment().amount,
        unlock_height,
        unlock_time,
        wallet_output: o.serialize(),
        status,
        reason,
    }
}

/// Stores one block as scanned for each key: its outputs (a one-time key
/// seen before is a duplicate, never credited; a timelocked output waits;
/// nothing for a key no longer scanned for deposits), per key the batch of
/// what the block reports (its unlocked deposits, and earlier deposits
/// whose lock this block passes) and the scheduler's per-block work, the
/// retirement of a finishing key left with nothing, and the cursor.
/// Returns the sessions retired at this block.
async fn store_block(
    tx: &mut sqlx::PgConnection,
    context: &ScanContext,
    accounts: &std::collections::BTreeMap<u32, u64>,
    retired: &std::collections::HashSet<u64>,
    found: Vec<(&ScanKey, ScannedBlock)>,
) -> Result<Vec<u64>, StepError> {
    let Some((height, hash, timestamp)) =
        found.first().map(|(_, b)| (b.height, b.hash, b.timestamp))
    else {
        return Err(StepError::Local("a block scanned for no key".into()));
    };
    let found: Vec<_> = found
        .into_iter()
        .filter(|(k, _)| !retired.contains(&k.key.session))
        .collect();
    let mut outputs = Vec::new();
    let mut keys_in_block = std::collections::HashMap::new();
    for (key, block) in &found {
        let session = key.key.session;
        if !key.heights.stage_at(height).scans_deposits() {
            // Finishing: what reaches its address now is not seen (its
            // transactions are still matched against its plans).
            continue;
        }
        for o in &block.outputs {
            let mut new = classify(o, height, timestamp, session);
            if new.account >= 1 && accounts.get(&new.account).is_none_or(|&from| height < from) {
                debug!(
                    height,
                    account = new.account,
                    "output to an account not yet active at this block: not credited"
                );
                continue;
            }
            // Monero's burning bug: two outputs can carry one one-time key, and
            // only one of them can ever be spent. The first in chain order is
            // credited; any other is recorded, never reported or spent.
            let first = match keys_in_block.get(&new.output_key) {
                Some(first) => Some(first),
                None => db::output_key_owner(&mut *tx, &new.output_key)
                    .await?
                    .map(|f| {
                        keys_in_block.insert(new.output_key, f);
                        &keys_in_block[&new.output_key]
                    }),
            };
            if let Some((first_tx, first_index, first_height)) = first {
                warn!(
                    height,
                    tx = %hex::encode(new.tx_hash),
                    "output key received before: recorded as a duplicate, not credited"
                );
                metrics::counter!(crate::metrics::SCAN_DUPLICATE_OUTPUTS).increment(1);
                new.reason = Some(format!(
                    "its one-time key {} was received before in transaction {} output {first_index} \
                     (block {first_height}): only one of the two can ever be spent (the burning bug), so \
                     this one is not credited",
                    hex::encode(new.output_key),
                    hex::encode(first_tx),
                ));
                new.status = db::OutputStatus::Duplicate;
            } else {
                keys_in_block.insert(new.output_key, (new.tx_hash, new.index_in_tx, height));
            }
            info!(height, session, account = new.account, amount = new.amount, status = new.status.as_str(), tx = %hex::encode(new.tx_hash), "output found");
            outputs.push(new);
        }
    }
    let found_count = outputs.len() as u64;
    db::insert_block(&mut *tx, height, &hash, &outputs).await?;
    let mut newly_retired = Vec::new();
    for (key, block) in &found {
        let session = key.key.session;
        // Change that unlocks here is the group's own at once; deposits that
        // unlock here are reported in this block's batch, before the block's
        // own.
        let mut deposits = db::unlock(&mut *tx, session, height, timestamp).await?;
        deposits.extend(
            outputs
                .iter()
                .filter(|o| o.session == session && o.status == db::OutputStatus::Received)
                .map(|o| crate::batch::Deposit {
                    tx_hash: o.tx_hash,
                    index_in_tx: o.index_in_tx,
                    account: o.account,
                    amount: o.amount,
                }),
        );
        if !deposits.is_empty() {
            propose_batch(tx, context, session, height, &hash, &deposits).await?;
        }
        context
            .blocks
            .on_block(
                &mut *tx,
                &context.link_id,
                key.key.chain.window_blocks,
                &key.active,
                height,
                &hash,
                block.transactions.as_ref(),
            )
            .await
            .map_err(|e| match e {
                HandleError::Storage(e) => StepError::Storage(e),
                HandleError::Rejected(why) => StepError::Halt(format!("block {height}: {why}")),
                HandleError::Local(why) => StepError::Local(format!("block {height}: {why}")),
            })?;
        if key.heights.stage_at(height) == crate::lifecycle::Stage::Finishing
            && crate::lifecycle::db::holds_nothing(&mut *tx, session).await?
        {
            crate::lifecycle::db::retire(&mut *tx, session, height).await?;
            info!(
                session,
                height, "key retired: it holds nothing and has no plan in flight"
            );
            newly_retired.push(session);
        }
    }
    db::set_cursor(&mut *tx, height + 1).await?;
    metrics::counter!(crate::metrics::SCAN_OUTPUTS).increment(found_count);
    Ok(newly_retired)
}

/// Stores the batch of a key's deposits reported at `height` and its first
/// preprocess.
async fn propose_batch(
    tx: &mut sqlx::PgConnection,
    context: &ScanContext,
    session: u64,
    height: u64,
    hash: &[u8; 32],
    deposits: &[crate::batch::Deposit],
) -> Result<(), StepError> {
    // Fault injection for the batch-inclusion race test: a scanner
    // that reaches its batch late (`return(ms)`), after the others
    // signed it and the settlement chain included it.
    if let Some(ms) = crate::failpoint::eval("scanner-slow-batch", |arg| {
        arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(1_000)
    }) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let id = crate::batch::batch_id(session, height);
    db::assign_batch(&mut *tx, id, deposits).await?;
    let failed = |e| match e {
        HandleError::Storage(e) => StepError::Storage(e),
        HandleError::Rejected(why) => StepError::Halt(format!("batch for block {height}: {why}")),
        HandleError::Local(why) => StepError::Local(format!("batch for block {height}: {why}")),
    };
    let first = crate::batch::create(&mut *tx, &context.link_id, session, height, hash, deposits)
        .await
        .map_err(failed)?;
    if let Some(first) = first {
        crate::signer::begin(&mut *tx, &context.keystore, &context.link_id, &first)
            .await
            .map_err(failed)?;
    }
    info!(
        batch = id,
        session,
        height,
        deposits = deposits.len(),
        "batch proposed"
    );
    metrics::counter!(crate::metrics::BATCHES_CREATED).increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(confirmations: u64, window_blocks: u64) -> keygen::db::ConfirmedKey {
        keygen::db::ConfirmedKey {
            session: 3,
            group_key: [0; 32],
            chain: keygen::db::ChainParams {
                confirmations,
                window_blocks,
            },
            activation_height: 100,
        }
    }

    fn monero(confirmations: Option<u64>) -> MoneroConfig {
        MoneroConfig {
            daemon_url: "http://127.0.0.1:1".into(),
            confirmations,
            poll_interval: Duration::from_secs(1),
            scan_batch: 10,
        }
    }

    #[test]
    fn local_config_may_repeat_the_keys_parameters_never_change_them() {
        assert!(check_local_config(&monero(None), None, &key(10, 5)).is_ok());
        assert!(check_local_config(&monero(Some(10)), None, &key(10, 5)).is_ok());
        let Err(StepError::Config(why)) = check_local_config(&monero(Some(4)), None, &key(10, 5))
        else {
            panic!("a differing depth must refuse scanning");
        };
        assert!(
            why.contains("monero.confirmations is 4 here, the key fixes 10")
                && why.contains("session 3"),
            "{why}"
        );
        let Err(StepError::Config(why)) = check_local_config(&monero(None), Some(4), &key(10, 5))
        else {
            panic!("a differing window must refuse scanning");
        };
        assert!(
            why.contains("scheduler.window_blocks is 4 here, the key fixes 5"),
            "{why}"
        );
    }
}
