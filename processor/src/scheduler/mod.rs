//! Payouts: burns from the settlement chain become Monero transactions.
//!
//! Every `window_blocks` finalized blocks a coordination window opens; it is
//! recorded in the scanner's transaction for its first block, so no window
//! is skipped or handled twice, across restarts too. The window's leader
//! (derived from the group key and the block hash) plans one transaction
//! paying the queued burns it can cover and proposes it through the
//! coordinator; each follower checks it against its own state (see
//! [`plan`]) and either signs (FROST-CLSAG) or refuses with a fault naming
//! the leader. Signers publish the completed transaction until it is seen;
//! a plan completes when a finalized block holds it, whoever published it.
//!
//! Liveness (README "Payout liveness"): no participant's message can hold
//! the scheduler. A proposal for a window beyond the settlement horizon it
//! was relayed under plus [`PROPOSAL_PATIENCE_BLOCKS`] is refused; any plan
//! not final [`PLAN_LIFETIME_BLOCKS`] finalized blocks after its window's
//! start ends (expired, or abandoned if it was being signed here), at the
//! same block on every processor; an abandoned plan's burns are paid again
//! only by a plan spending one of its inputs. Both bounds are constants:
//! every processor applies the same ones, whatever its configuration.

pub mod db;
pub mod plan;
pub mod rings;

use std::sync::Arc;
use std::time::{Duration, Instant};

use monero_wallet::WalletOutput;
use monero_wallet::interface::{FeePriority, FeeRate};
use monero_wallet::send::{Eventuality, SendError, SignableTransaction};
use monero_wallet::transaction::{NotPruned, Pruned, Transaction};
use prost::Message as _;
use proto::processor_v1::{
    BurnRejected, Fault, PlanCompleted, PlanProposal, ProcessorMessage, SignId, SignKind,
    processor_message::Kind,
};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use crate::accounts::view_pair;
use crate::amount::Amount;
use crate::keystore::Keystore;
use crate::link::{self, HandleError, OutMessage, Outbox};
use crate::monero::{Daemon, KeyImage};
use crate::scanner::db::OutputStatus;
use db::{BurnStatus, PlanStatus};

/// How far past the settlement horizon a proposal was relayed under (the
/// highest Monero height the coordinator had announced before it, the same
/// on every processor's ordered link) its window may start. An honest
/// leader scans no block above the horizon it has taken in, and the
/// coordinator relays its proposal after that horizon, so an honest
/// proposal is never beyond it; anything further is refused and its leader
/// named. The slack only absorbs a coordinator that relays horizons late.
pub const PROPOSAL_PATIENCE_BLOCKS: u64 = 10;

/// A plan not final once a finalized block this many blocks past its
/// window's start exists ends there, on every processor at that same block:
/// a waiting proposal expires; one this processor accepted (signing, signed
/// or published) is abandoned, its reservations released. Two hours of
/// mainnet blocks: signing, the pool and a few blocks' delay fit well
/// inside; a later payout is stopped for at most this long.
pub const PLAN_LIFETIME_BLOCKS: u64 = 60;

/// How payouts are scheduled.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Optional: the coordination window length this operator expects. The
    /// key fixes it for every processor alike; if this is set and differs,
    /// scanning refuses to start and says which value the key fixes.
    #[serde(default)]
    pub window_blocks: Option<u64>,
    /// How often a signed transaction is published again until it is seen
    /// in a finalized block.
    #[serde(with = "humantime_serde", default = "default_republish")]
    pub republish_interval: Duration,
    /// How far (in percent) a leader's fee rate may be above or below this
    /// processor's own estimate before its plan is refused.
    #[serde(default = "default_fee_tolerance")]
    pub fee_tolerance_percent: u64,
}

fn default_republish() -> Duration {
    Duration::from_secs(10)
}
fn default_fee_tolerance() -> u64 {
    100
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            window_blocks: None,
            republish_interval: default_republish(),
            fee_tolerance_percent: default_fee_tolerance(),
        }
    }
}

impl SchedulerConfig {
    /// Checks values; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.window_blocks == Some(0) {
            return Err("scheduler.window_blocks must be at least 1".into());
        }
        if self.republish_interval.is_zero() {
            return Err("scheduler.republish_interval must be more than 0".into());
        }
        Ok(())
    }
}

fn out(uid: String, kind: &'static str, message: Kind) -> OutMessage {
    OutMessage {
        uid,
        kind,
        payload: ProcessorMessage {
            kind: Some(message),
        }
        .encode_to_vec(),
    }
}

/// The sign id of a plan's attempt.
pub fn sign_id(session: u64, plan_id: &[u8], attempt: u32) -> SignId {
    SignId {
        session,
        kind: SignKind::Plan.into(),
        id: plan_id.to_vec(),
        attempt,
    }
}

/// Validates the burns of a settlement block as they are taken in: a valid
/// burn is queued, an invalid one is rejected and reported, never dropped.
pub async fn take_in_burns(
    conn: &mut PgConnection,
    link_id: &str,
    block_number: u64,
) -> Result<(), sqlx::Error> {
    for (burn_id, address, amount) in db::received_burns(conn, block_number).await? {
        let verdict = if amount == 0 {
            Err("zero amount".to_owned())
        } else {
            plan::parse_address(&address).map(|_| ())
        };
        match verdict {
            Ok(()) => db::set_burn_status(conn, &burn_id, BurnStatus::Queued, None).await?,
            Err(reason) => {
                warn!(burn = %burn_id, "burn rejected: {reason}");
                db::set_burn_status(conn, &burn_id, BurnStatus::Rejected, Some(&reason)).await?;
                link::enqueue(
                    conn,
                    link_id,
                    &[out(
                        format!("burn-rejected/{burn_id}"),
                        "burn_rejected",
                        Kind::BurnRejected(BurnRejected {
                            burn_id: burn_id.clone(),
                            reason,
                        }),
                    )],
                )
                .await?;
            }
        }
    }
    Ok(())
}

pub use crate::scanner::BlockTransactions;

/// The scheduler is what the scanner hands each finalized block to.
impl crate::scanner::BlockHandler for SchedulerConfig {
    fn local_window_blocks(&self) -> Option<u64> {
        self.window_blocks
    }

    fn on_block<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        link_id: &'a str,
        window_blocks: u64,
        key: &'a db::ActiveKey,
        height: u64,
        hash: &'a [u8; 32],
        block: Option<&'a BlockTransactions>,
    ) -> futures::future::BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(on_block(
            conn,
            link_id,
            window_blocks,
            key,
            height,
            hash,
            block,
        ))
    }
}

/// The window handler and the eventuality check, run in the scanner's
/// transaction for each finalized block of `key`, whose windows are
/// `window_blocks` long (fixed with the key).
pub async fn on_block(
    conn: &mut PgConnection,
    link_id: &str,
    window_blocks: u64,
    key: &db::ActiveKey,
    height: u64,
    hash: &[u8; 32],
    block: Option<&BlockTransactions>,
) -> Result<(), HandleError> {
    let window_blocks = window_blocks.max(1);
    if height.is_multiple_of(window_blocks) {
        let window = height / window_blocks;
        let leader = plan::leader(&key.group_key, hash, key.n);
        let outcome = if leader == key.own_index {
            "open"
        } else {
            "not-leader"
        };
        if db::insert_window(conn, window, key.session, height, hash, leader, outcome).await?
            && leader == key.own_index
        {
            info!(
                window,
                height, "coordination window opened; this processor leads it"
            );
        }
    }
    if let Some(block) = block {
        match_plans(conn, link_id, key, height, block).await?;
    }
    // After matching: a plan final in this very block completes rather
    // than ends.
    if let Some(last_window) = height
        .checked_sub(PLAN_LIFETIME_BLOCKS)
        .map(|h| h / window_blocks)
    {
        for (plan_id, how) in db::expire_plans(conn, key.session, last_window, height).await? {
            match how {
                db::Expiry::Expired => info!(
                    plan = %hex::encode(&plan_id),
                    height,
                    "proposal expired: its window started {PLAN_LIFETIME_BLOCKS} blocks ago"
                ),
                db::Expiry::Abandoned => warn!(
                    plan = %hex::encode(&plan_id),
                    height,
                    "payout abandoned: no finalized block holds its transaction \
                     {PLAN_LIFETIME_BLOCKS} blocks after its window; its burns are queued again, \
                     to be paid only by a plan spending one of its inputs"
                ),
            }
        }
    }
    Ok(())
}

/// Completes the open plans whose transaction this finalized block holds.
async fn match_plans(
    conn: &mut PgConnection,
    link_id: &str,
    key: &db::ActiveKey,
    height: u64,
    block: &BlockTransactions,
) -> Result<(), HandleError> {
    let mut open = Vec::new();
    for (signable, plan_id) in db::open_plans(conn, key.session).await? {
        let (Ok(parsed), Ok(inputs)) = (
            SignableTransaction::read(&mut signable.as_slice()),
            plan::inputs_of(&signable),
        ) else {
            continue;
        };
        open.push((plan_id, Eventuality::from(parsed), inputs));
    }
    for (tx_hash, tx) in block.hashes.iter().zip(&block.transactions) {
        // Conflicting plans for the same burns and inputs all match the
        // eventuality; the rings tell which one was signed.
        let found = open
            .iter()
            .position(|(_, e, inputs)| e.matches(tx) && plan::rings_match(tx, inputs));
        if let Some(at) = found {
            let (plan_id, _, inputs) = open.remove(at);
            complete(conn, link_id, key, &plan_id, tx_hash, tx, height, &inputs).await?;
            supersede(conn, &plan_id, &inputs, &mut open).await?;
        }
    }
    Ok(())
}

/// Plans that conflict with a completed one (a shared burn or input) can
/// never be valid: they are closed and what they reserved is released.
async fn supersede(
    conn: &mut PgConnection,
    completed: &[u8],
    completed_inputs: &[monero_wallet::OutputWithDecoys],
    open: &mut Vec<(Vec<u8>, Eventuality, Vec<monero_wallet::OutputWithDecoys>)>,
) -> Result<(), HandleError> {
    let burns = db::plan_burns(conn, completed).await?;
    let mut kept = Vec::new();
    for (plan_id, eventuality, inputs) in open.drain(..) {
        let shares_input = inputs.iter().any(|i| {
            completed_inputs
                .iter()
                .any(|c| c.key() == i.key() && c.key_offset() == i.key_offset())
        });
        let shares_burn = db::plan_burns(conn, &plan_id)
            .await?
            .iter()
            .any(|b| burns.contains(b));
        if shares_input || shares_burn {
            if db::release(conn, &plan_id).await? {
                warn!(
                    plan = %hex::encode(&plan_id),
                    by = %hex::encode(completed),
                    "plan superseded by a conflicting payout that is final; its reservations are released"
                );
            }
        } else {
            kept.push((plan_id, eventuality, inputs));
        }
    }
    *open = kept;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn complete(
    conn: &mut PgConnection,
    link_id: &str,
    key: &db::ActiveKey,
    plan_id: &[u8],
    tx_hash: &[u8; 32],
    tx: &Transaction<Pruned>,
    height: u64,
    inputs: &[monero_wallet::OutputWithDecoys],
) -> Result<(), HandleError> {
    let fee = match tx {
        Transaction::V2 {
            proofs: Some(proofs),
            ..
        } => proofs.base.fee,
        Transaction::V1 { .. } | Transaction::V2 { proofs: None, .. } => 0,
    };
    // Mark our outputs this transaction spent, whether or not we signed it.
    for (tx_ref, index, wallet_output) in db::unspent_outputs(conn, key.session).await? {
        let Ok(ours) = WalletOutput::read(&mut wallet_output.as_slice()) else {
            continue;
        };
        if inputs.iter().any(|i| plan::same_output(i, &ours)) {
            db::mark_spent(conn, &tx_ref, index, plan_id).await?;
        }
    }
    db::complete_plan(conn, plan_id, tx_hash, fee, height).await?;
    link::enqueue(
        conn,
        link_id,
        &[out(
            format!("plan-completed/{}", hex::encode(plan_id)),
            "plan_completed",
            Kind::PlanCompleted(PlanCompleted {
                plan_id: plan_id.to_vec(),
                tx_hash: tx_hash.to_vec(),
            }),
        )],
    )
    .await?;
    let kind = plan::PlanKind::of(&db::plan_burns(conn, plan_id).await?);
    info!(plan = %hex::encode(plan_id), tx = %hex::encode(tx_hash), fee, height, %kind, "plan final");
    metrics::counter!(crate::metrics::PAYOUTS_COMPLETED).increment(1);
    Ok(())
}

/// What the scheduler task needs.
#[derive(Debug, Clone)]
pub struct SchedulerContext {
    /// The keystore (signing begins with a preprocess).
    pub keystore: Keystore,
    /// The coordinator link.
    pub link_id: String,
    /// Wakes the link after commits that enqueue.
    pub outbox: Outbox,
    /// Settings.
    pub config: SchedulerConfig,
}

/// Why one scheduler pass stopped.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Daemon(#[from] crate::monero::DaemonError),
    #[error("database: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("{0}")]
    Handle(String),
}

impl From<link::EnqueueError> for PassError {
    fn from(e: link::EnqueueError) -> Self {
        match e {
            link::EnqueueError::Storage(e) => Self::Storage(e),
            // Logged and retried each pass, like any refused step.
            too_large @ link::EnqueueError::TooLarge(_) => Self::Handle(too_large.to_string()),
        }
    }
}

impl From<HandleError> for PassError {
    fn from(e: HandleError) -> Self {
        match e {
            HandleError::Storage(e) => Self::Storage(e),
            HandleError::Rejected(why) | HandleError::Local(why) => Self::Handle(why),
        }
    }
}

/// Plans for windows this processor leads, checks proposals from other
/// leaders, and publishes signed transactions, until `shutdown`. A pass
/// runs when `wake` is notified (a window opened, a relayed proposal or a
/// signature committed), and at least every half second regardless.
pub async fn run(
    pool: PgPool,
    daemon: Arc<Daemon>,
    context: SchedulerContext,
    wake: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut published: std::collections::HashMap<Vec<u8>, Instant> = Default::default();
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = pass(&pool, &daemon, &context, &mut published) => r,
        };
        if let Err(e) = result {
            if matches!(e, PassError::Storage(_)) {
                crate::metrics::db_error("scheduler");
            }
            warn!("scheduler pass failed, retrying: {e}");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn pass(
    pool: &PgPool,
    daemon: &Daemon,
    context: &SchedulerContext,
    published: &mut std::collections::HashMap<Vec<u8>, Instant>,
) -> Result<(), PassError> {
    // Every key this processor holds that is not retired: while one forwards
    // to the next, both have windows, proposals and transactions.
    let chain = crate::lifecycle::db::chain(pool).await?;
    for link in chain
        .iter()
        .filter(|k| k.own && k.heights.retired.is_none())
    {
        let Some(key) = crate::keygen::db::participation(pool, link.session).await? else {
            continue;
        };
        let span = info_span!("scheduler.key", session = key.session);
        pass_key(pool, daemon, context, &chain, &key, published)
            .instrument(span)
            .await?;
    }
    Ok(())
}

/// One pass for one key.
async fn pass_key(
    pool: &PgPool,
    daemon: &Daemon,
    context: &SchedulerContext,
    chain: &[crate::lifecycle::ChainKey],
    key: &db::ActiveKey,
    published: &mut std::collections::HashMap<Vec<u8>, Instant>,
) -> Result<(), PassError> {
    let open_windows = db::open_windows(pool, key.session).await?;
    let to_check = db::plans_to_check(pool, key.session).await?;
    if !open_windows.is_empty() || !to_check.is_empty() {
        let fee_rate = daemon.fee_rate(FeePriority::Normal).await?;
        // Check others' proposals first: planning while one is unchecked
        // would make a conflicting plan. In relay order, and none past one
        // whose window this processor has yet to finalize: every processor
        // then checks each proposal with the same ones taken before it.
        for plan_id in to_check {
            let span =
                info_span!("plan.check", plan = %hex::encode(&plan_id), session = key.session);
            crate::telemetry::set_remote_parent(&span, &db::traceparent(pool, &plan_id).await?);
            let blocked = check(pool, daemon, context, chain, key, &plan_id, fee_rate)
                .instrument(span)
                .await?;
            if blocked {
                break;
            }
        }
        for window in open_windows {
            lead(pool, daemon, context, chain, key, window, fee_rate).await?;
        }
    }
    for (plan_id, tx) in db::signed_transactions(pool, key.session).await? {
        let due = published
            .get(&plan_id)
            .is_none_or(|at| at.elapsed() >= context.config.republish_interval);
        if !due {
            continue;
        }
        let Ok(parsed) = Transaction::<NotPruned>::read(&mut tx.as_slice()) else {
            continue;
        };
        if crate::failpoint::eval("scheduler-withhold-first-payout", |_| ()).is_some()
            && db::first_signed_plan(pool, key.session).await?.as_deref()
                == Some(plan_id.as_slice())
        {
            // Fault injection for the liveness test: the first payout this
            // processor signs never reaches a daemon, as if every signer
            // withheld it.
            continue;
        }
        let span = info_span!("plan.publish", plan = %hex::encode(&plan_id), tx = %hex::encode(parsed.hash()));
        crate::telemetry::set_remote_parent(&span, &db::traceparent(pool, &plan_id).await?);
        match daemon.publish(&parsed).instrument(span).await {
            Ok(()) => {
                metrics::counter!(crate::metrics::PAYOUTS_PUBLISHED).increment(1);
                if let Some(since_open) = db::mark_published(pool, &plan_id).await? {
                    if let Some(seconds) = since_open {
                        metrics::histogram!(crate::metrics::PAYOUT_PUBLISH_SECONDS).record(seconds);
                    }
                    info!(
                        plan = %hex::encode(&plan_id),
                        tx = %hex::encode(parsed.hash()),
                        seconds_since_window_opened = since_open,
                        "payout published"
                    );
                }
            }
            // The daemon refuses a transaction it already has or that is
            // already mined; the scanner completes the plan either way.
            Err(e) => warn!(plan = %hex::encode(&plan_id), "publishing: {e}"),
        }
        published.insert(plan_id, Instant::now());
    }
    Ok(())
}

/// Plans the transaction of a window this processor leads. Its span is the
/// root of the payout's trace.
#[tracing::instrument(name = "plan.lead", skip_all, fields(session = key.session, window = window))]
async fn lead(
    pool: &PgPool,
    daemon: &Daemon,
    context: &SchedulerContext,
    chain: &[crate::lifecycle::ChainKey],
    key: &db::ActiveKey,
    window: u64,
    fee_rate: FeeRate,
) -> Result<(), PassError> {
    let pair = view_pair(&key.group_key)
        .ok_or_else(|| PassError::Handle("the group key is not a point".into()))?;
    if db::active_plan_exists(pool, key.session).await?
        || db::checkable_proposal_waits(pool, key.session).await?
    {
        // One signing procedure per key at a time. A proposal still waiting
        // for its own window does not count: it is checked before this
        // window's plan anyway (relay order), and it cannot wait for long
        // (PROPOSAL_PATIENCE_BLOCKS), so no participant can keep every
        // leader busy by proposing ahead.
        db::close_window(pool, key.session, window, "busy", None).await?;
        info!(
            window,
            "window led while a payout is in flight: nothing planned"
        );
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    let Some((_, start_height)) = db::window(&mut conn, key.session, window).await? else {
        return Ok(());
    };
    // Inputs as of the window's first block, as every follower judges them.
    let mut spendable = db::spendable_outputs(pool, key.session, start_height).await?;
    // Largest first: fewest inputs.
    spendable.sort_by_key(|o| std::cmp::Reverse(o.amount));
    // A key that has handed over still pays the burns it was given, then
    // forwards what it holds.
    let forwards = stage_of(chain, key.session, start_height).forwards();
    let burns = db::queued_burns(pool, payer(chain, key.session)).await?;
    let queued_ids: Vec<String> = burns.iter().map(|b| b.burn_id.clone()).collect();
    let successors = successor_inputs(&mut conn, daemon, key, &queued_ids, &spendable).await?;
    let mut payments = Vec::new();
    let mut chosen_burns = Vec::new();
    // What one transaction can reach (the largest MAX_INPUTS outputs), and
    // what all of them can.
    let reach = plan::Reach::new(spendable.iter().map(|o| o.amount), fee_rate)
        .map_err(PassError::Handle)?;
    let mut consolidate = false;
    let mut committed = Amount::ZERO;
    for burn in burns {
        if chosen_burns.len() + 1 >= plan::MAX_OUTPUTS {
            break;
        }
        if successors.blocked.contains(&burn.burn_id) {
            continue;
        }
        let Ok(address) = plan::parse_address(&burn.address) else {
            continue;
        };
        // Keep a margin for the fee; what does not fit waits for more funds
        // (a sum above 64 bits certainly does not fit).
        let Some(with_burn) = committed.checked_add(Amount::from_piconero(burn.amount)) else {
            continue;
        };
        match reach.covers(with_burn) {
            plan::Cover::OneTransaction => {
                committed = with_burn;
                payments.push((address, burn.amount));
                chosen_burns.push(burn.burn_id);
            }
            plan::Cover::AfterConsolidation => {
                // The balance covers it, no MAX_INPUTS outputs do: merge
                // outputs first. Later burns wait their turn behind it (the
                // ones before it are paid now), so a stream of small burns
                // cannot starve a large one.
                consolidate = true;
                break;
            }
            plan::Cover::No => {}
        }
    }
    if let Some(extra) = crate::failpoint::eval("scheduler-extra-payment", |arg| arg) {
        // Fault injection for the refusal test: a dishonest leader adds a
        // payment to an address of its choosing.
        if let Some(address) = extra.and_then(|a| plan::parse_address(&a).ok()) {
            warn!(
                window,
                "fault injection: adding a payment no burn asked for"
            );
            payments.push((address, 1_000_000));
        }
    }
    if chosen_burns.is_empty() {
        if forwards && !consolidate {
            drop(conn);
            return forward_window(
                pool,
                daemon,
                context,
                chain,
                key,
                window,
                start_height,
                spendable,
                fee_rate,
            )
            .await;
        }
        if consolidate {
            drop(conn);
            return consolidate_window(
                pool,
                daemon,
                context,
                key,
                window,
                start_height,
                spendable,
                fee_rate,
            )
            .await;
        }
        db::close_window(pool, key.session, window, "idle", None).await?;
        return Ok(());
    }
    // An abandoned plan's burns are paid again only by a plan spending one
    // of its inputs: those inputs come first.
    let required: Vec<Vec<u8>> = successors
        .required
        .iter()
        .filter(|(burns, _)| burns.iter().any(|b| chosen_burns.contains(b)))
        .map(|(_, tx_hash_index)| tx_hash_index.clone())
        .collect();
    let mut ordered: Vec<db::Spendable> = Vec::with_capacity(spendable.len());
    for id in &required {
        if let Some(at) = spendable.iter().position(|o| &output_ref(o) == id) {
            ordered.push(spendable.remove(at));
        }
    }
    let must_use = ordered.len();
    ordered.append(&mut spendable);
    let spendable = ordered;
    // Decoys as of the window's first block: finalized, so every follower's
    // daemon holds it and judges the rings by the same chain.
    let as_of = usize::try_from(start_height).unwrap_or(usize::MAX);
    let rpc = daemon.rpc().await?;
    let mut inputs = Vec::new();
    let mut used = 0;
    let signable = loop {
        let have = Amount::sum(
            "the inputs chosen",
            spendable[..used].iter().map(|o| o.amount),
        )
        .map_err(|e| PassError::Handle(e.to_string()))?;
        let short = used == 0
            || used < must_use
            || committed
                .checked_add(plan::fee_margin(fee_rate, used))
                .is_none_or(|need| have < need);
        if !short {
            // The rings of every input chosen so far, fetched at once: each
            // is a function of its output and `as_of` alone, so the order
            // they arrive in changes nothing.
            if inputs.len() < used {
                let more = futures::future::try_join_all(
                    spendable[inputs.len()..used]
                        .iter()
                        .map(|o| with_decoys(&rpc, as_of, o)),
                )
                .await?;
                inputs.extend(more);
            }
            match plan::build(
                &key.group_key,
                &pair,
                inputs.clone(),
                payments.clone(),
                fee_rate,
            ) {
                Ok(signable) => break signable,
                Err(SendError::NotEnoughFunds { .. }) => {}
                Err(e) => {
                    db::close_window(pool, key.session, window, "idle", None).await?;
                    warn!(window, "no transaction for this window: {e}");
                    return Ok(());
                }
            }
        }
        // Short of funds: add the next largest output, up to the cap.
        if spendable.get(used).is_none() || used >= plan::MAX_INPUTS {
            db::close_window(pool, key.session, window, "idle", None).await?;
            warn!(
                window,
                "the spendable outputs do not cover the burns chosen"
            );
            return Ok(());
        }
        used += 1;
    };
    let signable = if crate::failpoint::eval("scheduler-bad-decoy", |_| ()).is_some() {
        // Fault injection for the ring test: a dishonest leader proposes a
        // ring monerod would refuse (two decoys swapped).
        warn!(window, "fault injection: tampering with a decoy");
        tamper_decoy(&key.group_key, &pair, inputs, payments, signable.fee_rate())
            .unwrap_or(signable)
    } else {
        signable
    };
    drop(conn);
    propose(pool, context, key, window, &signable, &chosen_burns, used).await
}

/// Stores a plan this processor leads and proposes it through the
/// coordinator, closing its window, in one transaction.
async fn propose(
    pool: &PgPool,
    context: &SchedulerContext,
    key: &db::ActiveKey,
    window: u64,
    signable: &SignableTransaction,
    burn_ids: &[String],
    inputs: usize,
) -> Result<(), PassError> {
    let bytes = signable.serialize();
    let plan_id = plan::plan_id(&bytes);
    let mut tx = pool.begin().await?;
    if !db::lock_open_window(&mut tx, key.session, window).await? {
        return Ok(());
    }
    // Not reserved or signed yet: the leader checks its own plan like every
    // follower, when the coordinator relays it back, in the coordinator's
    // order. Two leaders' conflicting plans are so taken in the same order
    // everywhere, and one of them gets its t signers.
    db::insert_plan(
        &mut tx,
        &plan_id,
        key.session,
        window,
        key.own_index,
        &bytes,
        burn_ids,
        PlanStatus::Proposed,
    )
    .await?;
    db::close_window(&mut *tx, key.session, window, "planned", Some(&plan_id)).await?;
    link::enqueue(
        &mut tx,
        &context.link_id,
        &[out(
            format!("plan-proposal/{}", hex::encode(plan_id)),
            "plan_proposal",
            Kind::PlanProposal(PlanProposal {
                window,
                leader_index: u32::from(key.own_index),
                plan_id: plan_id.to_vec(),
                signable_transaction: bytes,
                burn_ids: burn_ids.to_vec(),
                session: Some(key.session),
            }),
        )],
    )
    .await?;
    tx.commit().await?;
    context.outbox.wake();
    info!(
        window,
        plan = %hex::encode(plan_id),
        kind = %plan::PlanKind::of(burn_ids),
        burns = burn_ids.len(),
        inputs,
        "plan proposed"
    );
    Ok(())
}

/// Plans a consolidation for a window this processor leads: the
/// [`plan::MAX_INPUTS`] largest spendable outputs (as of the window's first
/// block, largest first, ties in block order) merged into the group's change
/// subaddress. It pays no burn; the burn that needed it is paid by a later
/// window's plan once the merged outputs are final and spendable.
#[allow(clippy::too_many_arguments)]
async fn consolidate_window(
    pool: &PgPool,
    daemon: &Daemon,
    context: &SchedulerContext,
    key: &db::ActiveKey,
    window: u64,
    start_height: u64,
    spendable: Vec<db::Spendable>,
    fee_rate: FeeRate,
) -> Result<(), PassError> {
    let pair = view_pair(&key.group_key)
        .ok_or_else(|| PassError::Handle("the group key is not a point".into()))?;
    let inputs = largest_with_decoys(daemon, start_height, &spendable).await?;
    let used = inputs.len();
    let Some(signable) = built_or_idle(
        pool,
        key,
        window,
        plan::build_consolidation(&key.group_key, &pair, inputs, fee_rate),
        "consolidation",
    )
    .await?
    else {
        return Ok(());
    };
    info!(
        window,
        inputs = used,
        spendable = spendable.len(),
        "a queued burn exceeds what one transaction's inputs reach: consolidating"
    );
    propose(pool, context, key, window, &signable, &[], used).await
}

/// The [`plan::MAX_INPUTS`] largest of `spendable` (sorted largest first)
/// with their rings, chosen as of the window's first block, all fetched at
/// once: what a consolidation or a forward spends.
async fn largest_with_decoys(
    daemon: &Daemon,
    start_height: u64,
    spendable: &[db::Spendable],
) -> Result<Vec<monero_wallet::OutputWithDecoys>, PassError> {
    let as_of = usize::try_from(start_height).unwrap_or(usize::MAX);
    let rpc = daemon.rpc().await?;
    futures::future::try_join_all(
        spendable
            .iter()
            .take(plan::MAX_INPUTS)
            .map(|o| with_decoys(&rpc, as_of, o)),
    )
    .await
}

/// The transaction a leader built, or `None` with its window closed idle
/// (and why logged) if it could not be built.
async fn built_or_idle(
    pool: &PgPool,
    key: &db::ActiveKey,
    window: u64,
    built: Result<SignableTransaction, SendError>,
    what: &str,
) -> Result<Option<SignableTransaction>, PassError> {
    match built {
        Ok(signable) => Ok(Some(signable)),
        Err(e) => {
            db::close_window(pool, key.session, window, "idle", None).await?;
            warn!(window, "no {what} for this window: {e}");
            Ok(None)
        }
    }
}

/// Whose burns key `session`'s plans pay.
fn payer(chain: &[crate::lifecycle::ChainKey], session: u64) -> db::Payer {
    db::Payer {
        session,
        first: chain.first().is_none_or(|k| k.session == session),
    }
}

/// A key's stage at `height` (a key not in the chain is taken as active:
/// it has no successor this processor knows of).
fn stage_of(
    chain: &[crate::lifecycle::ChainKey],
    session: u64,
    height: u64,
) -> crate::lifecycle::Stage {
    chain
        .iter()
        .find(|k| k.session == session)
        .map_or(crate::lifecycle::Stage::Active, |k| {
            k.heights.stage_at(height)
        })
}

/// The view pair of the key a key that has handed over forwards to, as of
/// the window starting at `start_height`.
fn forward_target(
    chain: &[crate::lifecycle::ChainKey],
    session: u64,
    start_height: u64,
) -> Result<(u64, monero_wallet::ViewPair), String> {
    let target = crate::lifecycle::forward_target(chain, start_height)
        .filter(|t| t.session != session)
        .ok_or_else(|| {
            format!("key {session} forwards, but no newer key is active at block {start_height}")
        })?;
    let pair = view_pair(&target.group_key)
        .ok_or_else(|| format!("the group key of session {} is not a point", target.session))?;
    Ok((target.session, pair))
}

/// Plans a forward for a window of a key that has handed over: its
/// [`plan::MAX_INPUTS`] largest spendable outputs (as of the window's first
/// block) moved to the newest key's forwarding subaddress. Pays no burn.
#[allow(clippy::too_many_arguments)]
async fn forward_window(
    pool: &PgPool,
    daemon: &Daemon,
    context: &SchedulerContext,
    chain: &[crate::lifecycle::ChainKey],
    key: &db::ActiveKey,
    window: u64,
    start_height: u64,
    spendable: Vec<db::Spendable>,
    fee_rate: FeeRate,
) -> Result<(), PassError> {
    if spendable.is_empty() {
        db::close_window(pool, key.session, window, "idle", None).await?;
        return Ok(());
    }
    let (target, mut target_pair) =
        forward_target(chain, key.session, start_height).map_err(PassError::Handle)?;
    if let Some(stranger) = crate::failpoint::eval("scheduler-forward-elsewhere", |_| {
        // Fault injection for the rotation test: a dishonest leader of the
        // old key forwards to a key of its own instead of the newest one.
        view_pair(
            &curve25519_dalek::EdwardsPoint::mul_base_clamped([7; 32])
                .compress()
                .to_bytes(),
        )
    })
    .flatten()
    {
        warn!(
            window,
            "fault injection: forwarding to a key that is not the group's"
        );
        target_pair = stranger;
    }
    let inputs = largest_with_decoys(daemon, start_height, &spendable).await?;
    let used = inputs.len();
    let Some(signable) = built_or_idle(
        pool,
        key,
        window,
        plan::build_forward(&key.group_key, &target_pair, inputs, fee_rate),
        "forward",
    )
    .await?
    else {
        return Ok(());
    };
    info!(
        window,
        inputs = used,
        spendable = spendable.len(),
        to_session = target,
        "key has handed over: forwarding its outputs"
    );
    propose(pool, context, key, window, &signable, &[], used).await
}

/// A stored spendable output with its ring's decoys, chosen
/// deterministically as of block `as_of` (what followers check).
async fn with_decoys(
    rpc: &monero_daemon_rpc::MoneroDaemon<monero_simple_request_rpc::SimpleRequestTransport>,
    as_of: usize,
    output: &db::Spendable,
) -> Result<monero_wallet::OutputWithDecoys, PassError> {
    let output = WalletOutput::read(&mut output.wallet_output.as_slice())
        .map_err(|e| PassError::Handle(format!("stored output: {e}")))?;
    monero_wallet::OutputWithDecoys::fingerprintable_deterministic_new(
        &mut rand_core::OsRng,
        rpc,
        plan::RING_LEN,
        as_of,
        output,
    )
    .await
    .map_err(|e| PassError::Handle(format!("selecting decoys: {e:?}")))
}

/// An output's identity in `outputs`: its transaction hash and index.
fn output_ref(o: &db::Spendable) -> Vec<u8> {
    let mut id = o.tx_hash.clone();
    id.extend_from_slice(&o.index_in_tx.to_le_bytes());
    id
}

/// The failpoint `scheduler-bad-decoy`: the same plan with two decoys of
/// the first input swapped, so they no longer sit at their global indexes.
fn tamper_decoy(
    group_key: &[u8; 32],
    pair: &monero_wallet::ViewPair,
    mut inputs: Vec<monero_wallet::OutputWithDecoys>,
    payments: Vec<(monero_wallet::address::MoneroAddress, u64)>,
    fee_rate: FeeRate,
) -> Option<SignableTransaction> {
    let first = inputs.first()?;
    let decoys = first.decoys();
    let signer = usize::from(decoys.signer_index());
    let (a, b) = if signer < 2 { (2, 3) } else { (0, 1) };
    let mut ring = decoys.ring().to_vec();
    ring.swap(a, b);
    let tampered = monero_wallet::ringct::clsag::Decoys::new(
        decoys.offsets().to_vec(),
        decoys.signer_index(),
        ring,
    )?;
    let whole = first.serialize();
    let output_len = whole.len().checked_sub(decoys.serialize().len())?;
    let mut bytes = whole.get(..output_len)?.to_vec();
    bytes.extend(tampered.serialize());
    inputs[0] = monero_wallet::OutputWithDecoys::read(&mut bytes.as_slice()).ok()?;
    plan::build(group_key, pair, inputs, payments, fee_rate).ok()
}

/// What an abandoned plan asks of a plan paying its burns again.
#[derive(Debug, Default)]
struct Successors {
    /// (the abandoned plan's burns, the input to spend: [`output_ref`]).
    required: Vec<(Vec<String>, Vec<u8>)>,
    /// Burns no plan may pay now: the abandoned plan that named them may
    /// still be mined (a key image of it is in the pool or a block), or
    /// none of its inputs is spendable now.
    blocked: std::collections::HashSet<String>,
}

/// For each abandoned plan naming a queued burn: one of its inputs a
/// successor must spend, or its burns blocked for now.
async fn successor_inputs(
    conn: &mut PgConnection,
    daemon: &Daemon,
    key: &db::ActiveKey,
    queued: &[String],
    spendable: &[db::Spendable],
) -> Result<Successors, PassError> {
    let mut successors = Successors::default();
    for (plan_id, signable, signed) in db::abandoned_plans_naming(conn, key.session, queued).await?
    {
        let burns = db::plan_burns(conn, &plan_id).await?;
        let their = plan::inputs_of(&signable).unwrap_or_default();
        match abandoned_status(conn, daemon, key, &their, signed.as_deref()).await? {
            Abandoned::Void => continue,
            Abandoned::MayBeMined(why) => {
                info!(plan = %hex::encode(&plan_id), "its burns wait: {why}");
                successors.blocked.extend(burns);
                continue;
            }
            Abandoned::Binding => {}
        }
        let mut found = None;
        for input in &their {
            let Some(own) =
                db::own_output(conn, key.session, &input.key().compress().to_bytes()).await?
            else {
                continue;
            };
            let mut id = own.tx_hash.clone();
            id.extend_from_slice(&own.index_in_tx.to_le_bytes());
            if spendable.iter().any(|o| output_ref(o) == id) {
                found = Some(id);
                break;
            }
        }
        match found {
            Some(id) => successors.required.push((burns, id)),
            None => successors.blocked.extend(burns),
        }
    }
    Ok(successors)
}

/// Where an abandoned plan stands for a successor.
enum Abandoned {
    /// One of its inputs is spent by a final payout: it can never be mined.
    Void,
    /// Its transaction may still be mined: a key image of it is in the
    /// daemon's pool or in a block not yet final.
    MayBeMined(String),
    /// A successor must spend one of its inputs.
    Binding,
}

async fn abandoned_status(
    conn: &mut PgConnection,
    daemon: &Daemon,
    key: &db::ActiveKey,
    inputs: &[monero_wallet::OutputWithDecoys],
    signed: Option<&[u8]>,
) -> Result<Abandoned, PassError> {
    for input in inputs {
        if let Some(own) =
            db::own_output(conn, key.session, &input.key().compress().to_bytes()).await?
            && own.status == OutputStatus::Spent
        {
            return Ok(Abandoned::Void);
        }
    }
    // Its key images are known only to a signer that completed it; without
    // them, the successor's shared input alone keeps the two exclusive.
    let Some(tx) = signed.and_then(|t| Transaction::<NotPruned>::read(&mut &*t).ok()) else {
        return Ok(Abandoned::Binding);
    };
    let images: Vec<[u8; 32]> = tx
        .prefix()
        .inputs
        .iter()
        .filter_map(|i| match i {
            monero_wallet::transaction::Input::ToKey { key_image, .. } => {
                Some(key_image.to_bytes())
            }
            monero_wallet::transaction::Input::Gen(_) => None,
        })
        .collect();
    for (image, status) in images.iter().zip(daemon.key_images(&images).await?) {
        match status {
            KeyImage::Unspent => {}
            KeyImage::SpentInPool => {
                return Ok(Abandoned::MayBeMined(format!(
                    "key image {} is in the daemon's pool",
                    hex::encode(image)
                )));
            }
            KeyImage::SpentInBlock => {
                return Ok(Abandoned::MayBeMined(format!(
                    "key image {} is in a block not yet final",
                    hex::encode(image)
                )));
            }
        }
    }
    Ok(Abandoned::Binding)
}

/// Checks a proposal from another leader, then signs or refuses it. True if
/// it waits for its window: no later proposal is checked before it.
async fn check(
    pool: &PgPool,
    daemon: &Daemon,
    context: &SchedulerContext,
    chain: &[crate::lifecycle::ChainKey],
    key: &db::ActiveKey,
    plan_id: &[u8],
    own_fee_rate: FeeRate,
) -> Result<bool, PassError> {
    let mut tx = pool.begin().await?;
    let Some(proposal) = db::lock_plan(&mut tx, plan_id).await? else {
        return Ok(false);
    };
    if !matches!(proposal.status, PlanStatus::Received | PlanStatus::Waiting) {
        return Ok(false);
    }
    let verdict = verify(
        &mut tx,
        daemon,
        context,
        chain,
        key,
        &proposal,
        own_fee_rate,
    )
    .await?;
    let waits_for_window = matches!(verdict, Verdict::WaitWindow(_));
    match verdict {
        Verdict::Accept { reserved } => {
            if !db::reserve(&mut tx, plan_id, &reserved, &proposal.burn_ids).await? {
                tx.rollback().await?;
                return Ok(false);
            }
            db::set_plan_status(&mut tx, plan_id, PlanStatus::Signing, None).await?;
            crate::signer::begin(
                &mut tx,
                &context.keystore,
                &context.link_id,
                &sign_id(key.session, plan_id, 0),
            )
            .await?;
            info!(
                plan = %hex::encode(plan_id),
                window = proposal.window,
                kind = %plan::PlanKind::of(&proposal.burn_ids),
                "plan checked: signing"
            );
        }
        Verdict::WaitWindow(reason) | Verdict::Wait(reason) => {
            if proposal.status != PlanStatus::Waiting
                || proposal.reason.as_deref() != Some(reason.as_str())
            {
                info!(plan = %hex::encode(plan_id), "plan waits: {reason}");
            }
            db::set_plan_status(&mut tx, plan_id, PlanStatus::Waiting, Some(&reason)).await?;
        }
        Verdict::Stale(reason) => {
            info!(plan = %hex::encode(plan_id), leader = proposal.leader, "plan overtaken by an earlier one: {reason}");
            db::set_plan_status(&mut tx, plan_id, PlanStatus::Superseded, Some(&reason)).await?;
        }
        Verdict::Expire(reason) => {
            info!(plan = %hex::encode(plan_id), leader = proposal.leader, "proposal expired: {reason}");
            db::set_plan_status(&mut tx, plan_id, PlanStatus::Expired, Some(&reason)).await?;
        }
        Verdict::Decline(reason) => {
            warn!(plan = %hex::encode(plan_id), leader = proposal.leader, "plan declined: {reason}");
            db::set_plan_status(&mut tx, plan_id, PlanStatus::Refused, Some(&reason)).await?;
        }
        Verdict::Refuse(reason) => {
            warn!(plan = %hex::encode(plan_id), leader = proposal.leader, "plan refused: {reason}");
            db::set_plan_status(&mut tx, plan_id, PlanStatus::Refused, Some(&reason)).await?;
            db::insert_fault(
                &mut tx,
                key.session,
                proposal.leader,
                "plan-refused",
                &reason,
            )
            .await?;
            link::enqueue(
                &mut tx,
                &context.link_id,
                &[out(
                    format!("fault/plan-refused/{}", hex::encode(plan_id)),
                    "fault",
                    Kind::Fault(Fault {
                        session: key.session,
                        accused: u32::from(proposal.leader),
                        kind: "plan-refused".into(),
                        detail: format!("plan {}: {reason}", hex::encode(plan_id)),
                        subject: plan_id.to_vec(),
                    }),
                )],
            )
            .await?;
        }
    }
    tx.commit().await?;
    context.outbox.wake();
    Ok(waits_for_window)
}

enum Verdict {
    Accept {
        reserved: Vec<(Vec<u8>, i64)>,
    },
    /// Its window is not finalized here yet: later proposals wait too.
    WaitWindow(String),
    Wait(String),
    /// Invalid: refused, and its leader named in a fault.
    Refuse(String),
    /// Not signed, and no fault: an honest leader may propose it (it did
    /// not know of a plan this processor abandoned).
    Decline(String),
    /// Overtaken by a plan taken before it (its burns or inputs are taken):
    /// not a fault of its leader, who planned before seeing the other.
    Stale(String),
    /// Its lifetime ended before it could be signed here.
    Expire(String),
}

#[allow(clippy::too_many_arguments)]
async fn verify(
    conn: &mut PgConnection,
    daemon: &Daemon,
    context: &SchedulerContext,
    chain: &[crate::lifecycle::ChainKey],
    key: &db::ActiveKey,
    proposal: &db::StoredPlan,
    own_fee_rate: FeeRate,
) -> Result<Verdict, PassError> {
    if proposal.session != key.session {
        return Ok(Verdict::Refuse(format!(
            "plan for key {} while key {} is active",
            proposal.session, key.session
        )));
    }
    // A window beyond the horizon it was relayed under plus the patience:
    // no honest leader has finalized it (the same verdict everywhere: the
    // horizon is the one the ordered link delivered before the proposal).
    let Some(window_blocks) = db::key_window_blocks(conn, key.session).await? else {
        return Ok(Verdict::Wait("the key fixes no window length".into()));
    };
    let horizon = match proposal.relay_horizon {
        Some(h) => h,
        None => crate::settlement::db::horizon(&mut *conn)
            .await?
            .unwrap_or(0),
    };
    let limit = horizon.saturating_add(PROPOSAL_PATIENCE_BLOCKS);
    let Some(start) = proposal
        .window
        .checked_mul(window_blocks)
        .filter(|&s| s <= limit)
    else {
        return Ok(Verdict::Refuse(format!(
            "window {} starts beyond block {limit} (the settlement horizon {horizon} it was \
             relayed under plus {PROPOSAL_PATIENCE_BLOCKS}): no leader has finalized it",
            proposal.window
        )));
    };
    let next = db::next_height(conn).await?;
    if next > start.saturating_add(PLAN_LIFETIME_BLOCKS) {
        return Ok(Verdict::Expire(format!(
            "its window started at block {start}, more than {PLAN_LIFETIME_BLOCKS} finalized \
             blocks ago"
        )));
    }
    let Some((expected_leader, start_height)) =
        db::window(conn, key.session, proposal.window).await?
    else {
        return Ok(Verdict::WaitWindow(format!(
            "window {} (from block {start}) is not finalized here yet",
            proposal.window
        )));
    };
    if expected_leader != proposal.leader {
        return Ok(Verdict::Refuse(format!(
            "participant {} proposed for window {}, whose leader is {expected_leader}",
            proposal.leader, proposal.window
        )));
    }
    if plan::plan_id(&proposal.signable) != proposal.plan_id.as_slice() {
        return Ok(Verdict::Refuse(
            "the plan id does not match its transaction".into(),
        ));
    }
    let stage = stage_of(chain, key.session, start_height);
    let payer = payer(chain, key.session);
    if db::other_active_plan(conn, key.session, &proposal.plan_id).await? {
        return Ok(Verdict::Wait(
            "another payout of this key is in flight".into(),
        ));
    }
    let leader_tx = match SignableTransaction::read(&mut proposal.signable.as_slice()) {
        Ok(t) => t,
        Err(e) => {
            return Ok(Verdict::Refuse(format!(
                "the transaction does not parse: {e}"
            )));
        }
    };
    let inputs = match plan::inputs_of(&proposal.signable) {
        Ok(i) => i,
        Err(e) => return Ok(Verdict::Refuse(e)),
    };
    // A plan taken before this one may already pay these burns (and hold
    // its inputs): this one is overtaken, not faulty.
    for burn_id in &proposal.burn_ids {
        if let Some(burn) = db::burn(conn, burn_id).await?
            && matches!(burn.status, BurnStatus::Planned | BurnStatus::Paid)
        {
            // Not its status in the reason: whether the earlier plan is
            // still being signed or already final when this one is checked
            // is timing, and every processor must record the same verdict.
            return Ok(Verdict::Stale(format!(
                "burn {burn_id} is taken by a plan relayed before this one"
            )));
        }
    }
    // Inputs: each must be one of our outputs, spendable as of the window's
    // first block (as the leader judged it). Every output an honest leader
    // can use is known here once the window is: it is older than the
    // window, and its inclusion came on the link before the proposal.
    let mut reserved = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let output_key = input.key().compress().to_bytes();
        if inputs[..i].iter().any(|e| e.key() == input.key()) {
            return Ok(Verdict::Refuse(format!("input {i} is spent twice")));
        }
        let Some(own) = db::own_output(conn, key.session, &output_key).await? else {
            return Ok(Verdict::Refuse(format!(
                "input {i} is not a spendable output of the group"
            )));
        };
        let ours = WalletOutput::read(&mut own.wallet_output.as_slice())
            .map_err(|e| PassError::Handle(format!("stored output: {e}")))?;
        if !plan::same_output(input, &ours) {
            return Ok(Verdict::Refuse(format!(
                "input {i} names the group's output {} but not its key offset or commitment",
                hex::encode(output_key)
            )));
        }
        match own.status {
            OutputStatus::Included => {}
            OutputStatus::Reserved | OutputStatus::Spent => {
                // As for burns: the same reason whether the earlier plan is
                // being signed or final.
                return Ok(Verdict::Stale(format!(
                    "input {i} is taken by a plan relayed before this one"
                )));
            }
            other => {
                return Ok(Verdict::Refuse(format!(
                    "input {i} is {}, not spendable",
                    other.as_str()
                )));
            }
        }
        if i64::try_from(own.block_height)
            .ok()
            .and_then(|h| h.checked_add(db::SPENDABLE_AGE))
            .and_then(|h| u64::try_from(h).ok())
            .is_none_or(|h| h > start_height + 1)
        {
            return Ok(Verdict::Refuse(format!(
                "input {i} (block {}) is not {} blocks deep at the window's first block {start_height}",
                own.block_height,
                db::SPENDABLE_AGE
            )));
        }
        reserved.push((own.tx_hash, own.index_in_tx));
    }
    // Payments: exactly the named burns, each queued and unpaid.
    let mut payments = Vec::new();
    for burn_id in &proposal.burn_ids {
        match db::burn(conn, burn_id).await? {
            Some(burn) if !burn.paid_by(payer) => {
                return Ok(Verdict::Refuse(format!(
                    "burn {burn_id} is paid by key {}, not by key {}",
                    burn.session
                        .map_or_else(|| "the first".to_owned(), |s| s.to_string()),
                    key.session
                )));
            }
            Some(burn) if burn.status == BurnStatus::Queued => {
                let Ok(address) = plan::parse_address(&burn.address) else {
                    return Ok(Verdict::Refuse(format!(
                        "burn {burn_id} has an invalid address"
                    )));
                };
                payments.push((address, burn.amount));
            }
            Some(burn) => {
                return Ok(Verdict::Refuse(format!(
                    "burn {burn_id} is {}, not queued",
                    burn.status.as_str()
                )));
            }
            None => return Ok(Verdict::Refuse(format!("burn {burn_id} is unknown"))),
        }
    }
    if let Err(e) = Amount::sum(
        "the named burns",
        payments.iter().map(|(_, amount)| *amount),
    ) {
        return Ok(Verdict::Refuse(e.to_string()));
    }
    // Burns of a plan abandoned here: paid again only by a plan that spends
    // one of its inputs, so at most one of the two can ever be mined.
    for (abandoned, signable, signed) in
        db::abandoned_plans_naming(conn, key.session, &proposal.burn_ids).await?
    {
        let their = plan::inputs_of(&signable).unwrap_or_default();
        match abandoned_status(conn, daemon, key, &their, signed.as_deref()).await? {
            Abandoned::Void => continue,
            Abandoned::MayBeMined(why) => {
                return Ok(Verdict::Wait(format!(
                    "abandoned plan {} may still be mined: {why}",
                    hex::encode(&abandoned)
                )));
            }
            Abandoned::Binding => {}
        }
        let conflicts = inputs.iter().any(|i| {
            their
                .iter()
                .any(|t| t.key() == i.key() && t.key_offset() == i.key_offset())
        });
        if !conflicts {
            return Ok(Verdict::Decline(format!(
                "it pays burns of abandoned plan {} again without spending any of its inputs: \
                 both could be mined",
                hex::encode(&abandoned)
            )));
        }
    }
    // Fee: within the tolerance of our own estimate.
    let theirs = u128::from(leader_tx.fee_rate().per_weight());
    let ours = u128::from(own_fee_rate.per_weight());
    let tolerance = u128::from(context.config.fee_tolerance_percent);
    // Products of u64 values in u128: only an absurd tolerance saturates.
    let scale = 100u128.saturating_add(tolerance);
    if theirs * 100 > ours.saturating_mul(scale) || theirs.saturating_mul(scale) < ours * 100 {
        return Ok(Verdict::Refuse(format!(
            "fee rate {theirs} per weight is outside {tolerance}% of this processor's estimate {ours}"
        )));
    }
    let pair = view_pair(&key.group_key)
        .ok_or_else(|| PassError::Handle("the group key is not a point".into()))?;
    let kind = plan::PlanKind::of(&proposal.burn_ids);
    // A key that has handed over forwards (a plan naming no burn); it may
    // also still pay the burns it was given, or consolidate for one of them.
    if stage.forwards() && proposal.burn_ids.is_empty() {
        if inputs.is_empty() || inputs.len() > plan::MAX_INPUTS {
            return Ok(Verdict::Refuse(format!(
                "a forward spends {} inputs; one spends 1 to {}",
                inputs.len(),
                plan::MAX_INPUTS
            )));
        }
        let target_pair = match forward_target(chain, key.session, start_height) {
            Ok((_, pair)) => pair,
            Err(why) => return Ok(Verdict::Wait(why)),
        };
        let expected = match plan::build_forward(
            &key.group_key,
            &target_pair,
            inputs.clone(),
            leader_tx.fee_rate(),
        ) {
            Ok(t) => t,
            Err(e) => {
                return Ok(Verdict::Refuse(format!(
                    "these inputs cannot be forwarded: {e}"
                )));
            }
        };
        if expected == leader_tx {
            if let Err(reason) = rings::check(daemon, &inputs, start_height).await? {
                return Ok(Verdict::Refuse(format!(
                    "a ring monerod would refuse: {reason}"
                )));
            }
            return Ok(Verdict::Accept { reserved });
        }
        // Not the forward: only a warranted consolidation remains.
        if inputs.len() != plan::MAX_INPUTS {
            return Ok(Verdict::Refuse(format!(
                "the transaction differs from the forward of its inputs to the newest key's \
                 forwarding subaddress (a payment out, altered amounts, or a foreign address), \
                 and a consolidation spends exactly {} inputs, not {}",
                plan::MAX_INPUTS,
                inputs.len()
            )));
        }
    }
    let expected = match kind {
        plan::PlanKind::Payout => plan::build(
            &key.group_key,
            &pair,
            inputs.clone(),
            payments,
            leader_tx.fee_rate(),
        )
        .map_err(|e| format!("the named burns cannot be paid from these inputs: {e}")),
        plan::PlanKind::Consolidation => {
            if let Some(refused) =
                consolidation_warranted(conn, payer, &inputs, start_height, leader_tx.fee_rate())
                    .await?
            {
                return Ok(refused);
            }
            plan::build_consolidation(&key.group_key, &pair, inputs.clone(), leader_tx.fee_rate())
                .map_err(|e| format!("these inputs cannot be consolidated: {e}"))
        }
    };
    let expected = match expected {
        Ok(t) => t,
        Err(reason) => return Ok(Verdict::Refuse(reason)),
    };
    if expected != leader_tx {
        return Ok(Verdict::Refuse(
            match kind {
                plan::PlanKind::Payout => {
                    "the transaction differs from the one the named burns, inputs and change make \
                 (an extra or altered payment, or a foreign change address)"
                }
                plan::PlanKind::Consolidation if stage.forwards() => {
                    "the transaction is neither the forward of its inputs to the newest key's \
                 forwarding subaddress nor their consolidation into the group's change subaddress \
                 (a payment out, altered amounts, or a foreign address)"
                }
                plan::PlanKind::Consolidation => {
                    "the transaction differs from the consolidation of its inputs into the group's \
                 change subaddress (a payment out, altered amounts, or a foreign address)"
                }
            }
            .into(),
        ));
    }
    // Rings, against this processor's own daemon, as of the window's first
    // block (the leader chose its decoys as of it).
    if let Err(reason) = rings::check(daemon, &inputs, start_height).await? {
        return Ok(Verdict::Refuse(format!(
            "a ring monerod would refuse: {reason}"
        )));
    }
    Ok(Verdict::Accept { reserved })
}

/// A consolidation pays no burn, so nothing but the chain limits how often a
/// leader could propose one and burn the group's money on fees: a follower
/// signs one only when it is the one an honest leader makes. It spends
/// exactly [`plan::MAX_INPUTS`] inputs (an honest leader takes that many, the
/// largest; fewer would fit one payout) — or else it is refused, naming the
/// leader. And a queued burn must need it, as this processor sees its own
/// outputs as of the window's first block: covered by the balance, not by
/// any [`plan::MAX_INPUTS`] outputs. If none does it is declined without a
/// fault: an honest leader may have planned before an inclusion this
/// processor has taken in (a larger output) made it unnecessary.
/// `None`: warranted.
async fn consolidation_warranted(
    conn: &mut PgConnection,
    payer: db::Payer,
    inputs: &[monero_wallet::OutputWithDecoys],
    start_height: u64,
    fee_rate: FeeRate,
) -> Result<Option<Verdict>, PassError> {
    if inputs.len() != plan::MAX_INPUTS {
        return Ok(Some(Verdict::Refuse(format!(
            "a consolidation spends {} inputs; one spends exactly {}",
            inputs.len(),
            plan::MAX_INPUTS
        ))));
    }
    let spendable = db::spendable_outputs(&mut *conn, payer.session, start_height).await?;
    let reach = plan::Reach::new(spendable.iter().map(|o| o.amount), fee_rate)
        .map_err(PassError::Handle)?;
    let needs_it = db::queued_burn_amounts(conn, payer)
        .await?
        .into_iter()
        .any(|a| reach.covers(Amount::from_piconero(a)) == plan::Cover::AfterConsolidation);
    if !needs_it {
        return Ok(Some(Verdict::Decline(format!(
            "no queued burn needs a consolidation: each is covered by the {} largest of the \
             {} outputs spendable as of block {start_height}, or by none of them",
            plan::MAX_INPUTS,
            spendable.len()
        ))));
    }
    Ok(None)
}

/// A leader's proposal, relayed by the coordinator: stored as received and
/// checked by the scheduler task (which may need the daemon).
pub async fn receive(conn: &mut PgConnection, m: PlanProposal) -> Result<(), HandleError> {
    if m.plan_id.len() != 32 {
        return Err(HandleError::Rejected("a plan id is 32 bytes".into()));
    }
    for burn_id in &m.burn_ids {
        crate::settlement::check_text(
            "a proposed plan's burn id",
            burn_id,
            crate::settlement::MAX_BURN_ID_BYTES,
        )?;
    }
    let session = m.session.ok_or_else(|| {
        HandleError::Rejected("a plan proposal without the session of its key".into())
    })?;
    let key = crate::keygen::db::participation(&mut *conn, session)
        .await?
        .ok_or_else(|| {
            HandleError::Rejected(format!(
                "a plan proposal for key {session}, of which this processor holds no confirmed share"
            ))
        })?;
    let leader = u16::try_from(m.leader_index)
        .ok()
        .filter(|&l| (1..=key.n).contains(&l))
        .ok_or_else(|| {
            HandleError::Rejected(format!("leader index {} is out of range", m.leader_index))
        })?;
    if db::mark_relayed(conn, &m.plan_id).await? {
        info!(plan = %hex::encode(&m.plan_id), window = m.window, "own plan relayed back: checking it");
        return Ok(());
    }
    if db::insert_plan(
        conn,
        &m.plan_id,
        key.session,
        m.window,
        leader,
        &m.signable_transaction,
        &m.burn_ids,
        PlanStatus::Received,
    )
    .await?
    {
        info!(plan = %hex::encode(&m.plan_id), window = m.window, leader, "plan proposal received");
    }
    Ok(())
}
