//! The `windows`, `plans` and `faults` tables, and the scheduler's view of
//! `burns` and `outputs`.

use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::amount::{Amount, AmountError};
use service::db::{to_i64, to_u64};

/// Where a plan is (`plans.status`, whose CHECK holds the same names). A
/// leader's own plan is `proposed` until the coordinator relays it back;
/// every relayed plan is then checked in relay order: `received` (->
/// `waiting`) -> `signing` | `refused`; `signing` -> `signed` ->
/// `published` -> `completed`. An open plan can also end `superseded`
/// (another plan's transaction spent its inputs), `expired` (its window
/// passed unsigned) or `abandoned` (its window passed while being signed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum PlanStatus {
    /// This processor's own plan, not yet relayed back.
    Proposed,
    /// Relayed, not yet checked.
    Received,
    /// Checked, waiting for what it depends on.
    Waiting,
    /// Refused by this processor's checks.
    Refused,
    /// Accepted; signing under way.
    Signing,
    /// Signed.
    Signed,
    /// Published to monerod.
    Published,
    /// Found final on chain.
    Completed,
    /// Closed by another plan's final transaction.
    Superseded,
    /// Its window passed before it was signed.
    Expired,
    /// Its window passed while it was being signed.
    Abandoned,
}

impl PlanStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::Received => "received",
            Self::Waiting => "waiting",
            Self::Refused => "refused",
            Self::Signing => "signing",
            Self::Signed => "signed",
            Self::Published => "published",
            Self::Completed => "completed",
            Self::Superseded => "superseded",
            Self::Expired => "expired",
            Self::Abandoned => "abandoned",
        }
    }

    /// From the stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Proposed,
            Self::Received,
            Self::Waiting,
            Self::Refused,
            Self::Signing,
            Self::Signed,
            Self::Published,
            Self::Completed,
            Self::Superseded,
            Self::Expired,
            Self::Abandoned,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// Where a burn is (`burns.status`, whose CHECK holds the same names): a
/// settlement block's burn is `received`, then `queued` (valid) or
/// `rejected` (reported back with the reason) when taken in; `planned` once
/// a plan accepted here pays it; `paid` when that plan is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum BurnStatus {
    /// Taken in, not yet validated.
    Received,
    /// Valid, waiting for a plan.
    Queued,
    /// Invalid (zero amount, an address that does not parse).
    Rejected,
    /// Paid by a plan being signed or published.
    Planned,
    /// Paid by a final plan.
    Paid,
}

impl BurnStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Queued => "queued",
            Self::Rejected => "rejected",
            Self::Planned => "planned",
            Self::Paid => "paid",
        }
    }
}

/// A key as the scheduler needs it (our index, n, t): the keys table is
/// keygen's, which reads it.
pub use crate::keygen::db::ActiveKey;

fn u16_of(v: i32) -> u16 {
    u16::try_from(v).unwrap_or(0)
}

/// A `burns` row as [`received_burns`] and [`queued_burns`] read it.
#[derive(sqlx::FromRow)]
struct BurnRecord {
    burn_id: String,
    monero_address: String,
    amount: i64,
}

/// Burns of a block not yet validated: (id, address, amount).
pub async fn received_burns(
    conn: &mut PgConnection,
    block: u64,
) -> Result<Vec<(String, String, u64)>, sqlx::Error> {
    let rows = sqlx::query_as::<_, BurnRecord>(
        "SELECT burn_id, monero_address, amount FROM burns
         WHERE block_number = $1 AND status = 'received' ORDER BY seq",
    )
    .bind(to_i64(block))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.burn_id, r.monero_address, to_u64(r.amount)))
        .collect())
}

/// Sets a burn's status (and the reason for a rejection).
pub async fn set_burn_status(
    conn: &mut PgConnection,
    burn_id: &str,
    status: BurnStatus,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE burns SET status = $2, reason = $3 WHERE burn_id = $1")
        .bind(burn_id)
        .bind(status)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// A `burns` row as [`burn`] reads it.
#[derive(sqlx::FromRow)]
struct BurnStatusRecord {
    monero_address: String,
    amount: i64,
    status: BurnStatus,
    session: Option<i64>,
}

/// A burn as a follower checks it.
#[derive(Debug, Clone)]
pub struct StoredBurn {
    /// Destination.
    pub address: String,
    /// Amount.
    pub amount: u64,
    /// `burns.status`.
    pub status: BurnStatus,
    /// The key that pays it (`None`: the first key).
    pub session: Option<u64>,
}

impl StoredBurn {
    /// Whether `payer` pays it.
    pub fn paid_by(&self, payer: Payer) -> bool {
        self.session
            .map_or(payer.first, |session| session == payer.session)
    }
}

/// A burn.
pub async fn burn(
    conn: &mut PgConnection,
    burn_id: &str,
) -> Result<Option<StoredBurn>, sqlx::Error> {
    let row = sqlx::query_as::<_, BurnStatusRecord>(
        "SELECT monero_address, amount, status, session FROM burns WHERE burn_id = $1",
    )
    .bind(burn_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| StoredBurn {
        address: r.monero_address,
        amount: to_u64(r.amount),
        status: r.status,
        session: r.session.map(to_u64),
    }))
}

/// The key whose burns a plan pays: burns name their key; a burn naming
/// none is the first key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payer {
    /// The key's session.
    pub session: u64,
    /// Whether it is the first key of the chain.
    pub first: bool,
}

/// A queued burn.
#[derive(Debug, Clone)]
pub struct QueuedBurn {
    /// Id.
    pub burn_id: String,
    /// Destination.
    pub address: String,
    /// Amount.
    pub amount: u64,
}

/// Burns queued for `payer`, in arrival order.
pub async fn queued_burns(pool: &PgPool, payer: Payer) -> Result<Vec<QueuedBurn>, sqlx::Error> {
    let rows = sqlx::query_as::<_, BurnRecord>(
        "SELECT burn_id, monero_address, amount FROM burns
         WHERE status = 'queued' AND (session = $1 OR (session IS NULL AND $2))
         ORDER BY seq",
    )
    .bind(to_i64(payer.session))
    .bind(payer.first)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| QueuedBurn {
            burn_id: r.burn_id,
            address: r.monero_address,
            amount: to_u64(r.amount),
        })
        .collect())
}

/// The amounts of the burns queued for `payer` (a follower judging whether
/// a consolidation is needed).
pub async fn queued_burn_amounts(
    conn: &mut PgConnection,
    payer: Payer,
) -> Result<Vec<u64>, sqlx::Error> {
    let amounts: Vec<i64> = sqlx::query_scalar(
        "SELECT amount FROM burns
         WHERE status = 'queued' AND (session = $1 OR (session IS NULL AND $2))
         ORDER BY seq",
    )
    .bind(to_i64(payer.session))
    .bind(payer.first)
    .fetch_all(conn)
    .await?;
    Ok(amounts.into_iter().map(to_u64).collect())
}

/// Records a window; false if it was recorded before.
pub async fn insert_window(
    conn: &mut PgConnection,
    window: u64,
    session: u64,
    height: u64,
    hash: &[u8; 32],
    leader: u16,
    outcome: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO windows (\"window\", session, start_height, start_hash, leader, outcome, handled_at)
         VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 = 'open' THEN NULL ELSE now() END)
         ON CONFLICT DO NOTHING",
    )
    .bind(to_i64(window))
    .bind(to_i64(session))
    .bind(to_i64(height))
    .bind(hash.as_slice())
    .bind(i32::from(leader))
    .bind(outcome)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A `windows` row as [`window`] reads it.
#[derive(sqlx::FromRow)]
struct WindowStartRecord {
    leader: i32,
    start_height: i64,
}

/// A key's window's leader and first block.
pub async fn window(
    conn: &mut PgConnection,
    session: u64,
    window: u64,
) -> Result<Option<(u16, u64)>, sqlx::Error> {
    let row = sqlx::query_as::<_, WindowStartRecord>(
        "SELECT leader, start_height FROM windows WHERE session = $1 AND \"window\" = $2",
    )
    .bind(to_i64(session))
    .bind(to_i64(window))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (u16_of(r.leader), to_u64(r.start_height))))
}

/// Windows this processor leads and has yet to plan for, oldest first.
pub async fn open_windows(pool: &PgPool, session: u64) -> Result<Vec<u64>, sqlx::Error> {
    let rows: Vec<i64> = sqlx::query_scalar(
        "SELECT \"window\" FROM windows WHERE session = $1 AND outcome = 'open' ORDER BY \"window\"",
    )
    .bind(to_i64(session))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(to_u64).collect())
}

/// Locks a key's window if it is still open.
pub async fn lock_open_window(
    conn: &mut PgConnection,
    session: u64,
    window: u64,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(
        "SELECT 1 FROM windows WHERE session = $1 AND \"window\" = $2 AND outcome = 'open'
         FOR NO KEY UPDATE",
    )
    .bind(to_i64(session))
    .bind(to_i64(window))
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

/// Records what a key's window led to.
pub async fn close_window(
    conn: impl PgExecutor<'_>,
    session: u64,
    window: u64,
    outcome: &str,
    plan_id: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE windows SET outcome = $2, plan_id = $3, handled_at = now()
         WHERE \"window\" = $1 AND outcome = 'open' AND session = $4",
    )
    .bind(to_i64(window))
    .bind(outcome)
    .bind(plan_id)
    .bind(to_i64(session))
    .execute(conn)
    .await?;
    Ok(())
}

/// An output the scheduler may spend.
#[derive(Debug, Clone)]
pub struct Spendable {
    /// Its transaction.
    pub tx_hash: Vec<u8>,
    /// Its index there.
    pub index_in_tx: i64,
    /// Amount.
    pub amount: u64,
    /// Serialized `WalletOutput`.
    pub wallet_output: Vec<u8>,
}

/// Blocks an output must be buried under before Monero lets it be spent
/// (CRYPTONOTE_DEFAULT_TX_SPENDABLE_AGE).
pub const SPENDABLE_AGE: i64 = 10;

/// An `outputs` row as [`spendable_outputs`] reads it.
#[derive(sqlx::FromRow)]
struct SpendableRecord {
    tx_hash: Vec<u8>,
    index_in_tx: i64,
    amount: i64,
    wallet_output: Vec<u8>,
}

/// Included, unlocked, unreserved outputs of a key, at least
/// [`SPENDABLE_AGE`] blocks below `as_of` (a window's first block): the
/// leader and every follower judge a window's inputs by the same finalized
/// height, whenever they plan or check.
pub async fn spendable_outputs(
    conn: impl PgExecutor<'_>,
    session: u64,
    as_of: u64,
) -> Result<Vec<Spendable>, sqlx::Error> {
    let rows = sqlx::query_as::<_, SpendableRecord>(
        "SELECT tx_hash, index_in_tx, amount, wallet_output FROM outputs
         WHERE session = $1 AND status = 'included'
           -- A timelocked output becomes included only once a finalized
           -- block passed its lock (scanner::db::unlock).
           AND block_height + $2 <= $3 + 1
         ORDER BY block_height, tx_hash, index_in_tx",
    )
    .bind(to_i64(session))
    .bind(SPENDABLE_AGE)
    .bind(to_i64(as_of))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Spendable {
            tx_hash: r.tx_hash,
            index_in_tx: r.index_in_tx,
            amount: to_u64(r.amount),
            wallet_output: r.wallet_output,
        })
        .collect())
}

/// An `outputs` row as [`unspent_outputs`] reads it.
#[derive(sqlx::FromRow)]
struct UnspentRecord {
    tx_hash: Vec<u8>,
    index_in_tx: i64,
    wallet_output: Vec<u8>,
}

/// Outputs not yet spent: (tx hash, index, wallet output).
pub async fn unspent_outputs(
    conn: &mut PgConnection,
    session: u64,
) -> Result<Vec<(Vec<u8>, i64, Vec<u8>)>, sqlx::Error> {
    let rows = sqlx::query_as::<_, UnspentRecord>(
        "SELECT tx_hash, index_in_tx, wallet_output FROM outputs
         WHERE session = $1 AND status IN ('received', 'included', 'reserved')",
    )
    .bind(to_i64(session))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.tx_hash, r.index_in_tx, r.wallet_output))
        .collect())
}

/// Marks an output spent by a plan.
pub async fn mark_spent(
    conn: &mut PgConnection,
    tx_hash: &[u8],
    index: i64,
    plan_id: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outputs SET status = 'spent', plan_id = $3 WHERE tx_hash = $1 AND index_in_tx = $2",
    )
    .bind(tx_hash)
    .bind(index)
    .bind(plan_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reserves outputs and burns for a plan; false (change nothing, roll back)
/// if any is no longer available.
pub async fn reserve(
    conn: &mut PgConnection,
    plan_id: &[u8],
    outputs: &[(Vec<u8>, i64)],
    burn_ids: &[String],
) -> Result<bool, sqlx::Error> {
    let hashes: Vec<&[u8]> = outputs.iter().map(|o| o.0.as_slice()).collect();
    let indices: Vec<i64> = outputs.iter().map(|o| o.1).collect();
    let reserved = sqlx::query(
        "UPDATE outputs o SET status = 'reserved', plan_id = $1
         FROM UNNEST($2::bytea[], $3::bigint[]) AS u(tx_hash, idx)
         WHERE o.tx_hash = u.tx_hash AND o.index_in_tx = u.idx AND o.status = 'included'",
    )
    .bind(plan_id)
    .bind(&hashes)
    .bind(&indices)
    .execute(&mut *conn)
    .await?;
    if reserved.rows_affected() != outputs.len() as u64 {
        return Ok(false);
    }
    let planned = sqlx::query(
        "UPDATE burns SET status = 'planned', plan_id = $1 WHERE burn_id = ANY($2) AND status = 'queued'",
    )
    .bind(plan_id)
    .bind(burn_ids)
    .execute(conn)
    .await?;
    Ok(planned.rows_affected() == burn_ids.len() as u64)
}

/// Stores a plan (a proposal received twice is stored once).
#[allow(clippy::too_many_arguments)]
pub async fn insert_plan(
    conn: &mut PgConnection,
    plan_id: &[u8],
    session: u64,
    window: u64,
    leader: u16,
    signable: &[u8],
    burn_ids: &[String],
    status: PlanStatus,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO plans (plan_id, session, \"window\", leader, signable, burn_ids, status, traceparent,
                            relay_order, relay_horizon)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                 CASE WHEN $7 = 'received' THEN nextval('plan_relay_order') END,
                 CASE WHEN $7 = 'received' THEN (SELECT max(monero_horizon) FROM settlement_blocks) END)
         ON CONFLICT DO NOTHING",
    )
    .bind(plan_id)
    .bind(to_i64(session))
    .bind(to_i64(window))
    .bind(i32::from(leader))
    .bind(signable)
    .bind(burn_ids)
    .bind(status)
    .bind(crate::telemetry::current_traceparent())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The trace context a plan was proposed or received in ("" if none).
pub async fn traceparent(pool: &PgPool, plan_id: &[u8]) -> Result<String, sqlx::Error> {
    Ok(
        sqlx::query_scalar("SELECT traceparent FROM plans WHERE plan_id = $1")
            .bind(plan_id)
            .fetch_optional(pool)
            .await?
            .unwrap_or_default(),
    )
}

/// A plan we proposed came back through the coordinator: `proposed` ->
/// `received`, to be checked in relay order. False if it is not ours.
pub async fn mark_relayed(conn: &mut PgConnection, plan_id: &[u8]) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE plans SET status = 'received', relay_order = nextval('plan_relay_order'),
                relay_horizon = (SELECT max(monero_horizon) FROM settlement_blocks), updated_at = now()
         WHERE plan_id = $1 AND status = 'proposed'",
    )
    .bind(plan_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A stored plan.
#[derive(Debug, Clone)]
pub struct StoredPlan {
    /// Id.
    pub plan_id: Vec<u8>,
    /// Key session.
    pub session: u64,
    /// Window.
    pub window: u64,
    /// Leader index.
    pub leader: u16,
    /// Serialized `SignableTransaction`.
    pub signable: Vec<u8>,
    /// Burns paid.
    pub burn_ids: Vec<String>,
    /// Status.
    pub status: PlanStatus,
    /// Why it waits or was refused.
    pub reason: Option<String>,
    /// The highest settlement horizon taken in when it was relayed here
    /// (`None`: stored before this was recorded, or none yet).
    pub relay_horizon: Option<u64>,
}

/// A `plans` row as [`lock_plan`] reads it.
#[derive(sqlx::FromRow)]
struct PlanRecord {
    plan_id: Vec<u8>,
    session: i64,
    window: i64,
    leader: i32,
    signable: Vec<u8>,
    burn_ids: Vec<String>,
    status: PlanStatus,
    reason: Option<String>,
    relay_horizon: Option<i64>,
}

/// Loads and locks a plan.
pub async fn lock_plan(
    conn: &mut PgConnection,
    plan_id: &[u8],
) -> Result<Option<StoredPlan>, sqlx::Error> {
    let row = sqlx::query_as::<_, PlanRecord>(
        "SELECT plan_id, session, \"window\", leader, signable, burn_ids, status, reason, relay_horizon
         FROM plans WHERE plan_id = $1 FOR NO KEY UPDATE",
    )
    .bind(plan_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| StoredPlan {
        plan_id: r.plan_id,
        session: to_u64(r.session),
        window: to_u64(r.window),
        leader: u16_of(r.leader),
        signable: r.signable,
        burn_ids: r.burn_ids,
        status: r.status,
        reason: r.reason,
        relay_horizon: r.relay_horizon.map(to_u64),
    }))
}

/// Sets a plan's status.
pub async fn set_plan_status(
    conn: &mut PgConnection,
    plan_id: &[u8],
    status: PlanStatus,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE plans SET status = $2, reason = $3, updated_at = now() WHERE plan_id = $1")
        .bind(plan_id)
        .bind(status)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores the completed transaction of a plan this processor signed.
pub async fn set_signed(
    conn: &mut PgConnection,
    plan_id: &[u8],
    tx: &[u8],
    tx_hash: &[u8; 32],
    fee: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE plans SET status = 'signed', tx = $2, tx_hash = $3, fee = $4, updated_at = now()
         WHERE plan_id = $1 AND status = 'signing'",
    )
    .bind(plan_id)
    .bind(tx)
    .bind(tx_hash.as_slice())
    .bind(to_i64(fee))
    .execute(conn)
    .await?;
    Ok(())
}

/// A `plans` row as [`signed_transactions`] reads it.
#[derive(sqlx::FromRow)]
struct SignedTxRecord {
    plan_id: Vec<u8>,
    tx: Vec<u8>,
}

/// Plans with a signed transaction to publish: (plan id, transaction).
pub async fn signed_transactions(
    pool: &PgPool,
    session: u64,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, sqlx::Error> {
    let rows = sqlx::query_as::<_, SignedTxRecord>(
        "SELECT plan_id, tx FROM plans WHERE session = $1 AND status IN ('signed', 'published') AND tx IS NOT NULL",
    )
    .bind(to_i64(session))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.plan_id, r.tx)).collect())
}

/// `signed` -> `published`. `None` if it already was; else the seconds
/// since the plan's window opened here (an operator's figure: wall clock,
/// read by nothing that decides), `None` inside if the window is unknown.
pub async fn mark_published(
    pool: &PgPool,
    plan_id: &[u8],
) -> Result<Option<Option<f64>>, sqlx::Error> {
    let row: Option<(Option<f64>,)> = sqlx::query_as(
        "UPDATE plans p SET status = 'published', updated_at = now(), published_at = now()
         WHERE plan_id = $1 AND status = 'signed'
         RETURNING (SELECT EXTRACT(EPOCH FROM now() - w.opened_at)::float8
                    FROM windows w WHERE w.\"window\" = p.\"window\" AND w.session = p.session)",
    )
    .bind(plan_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(seconds,)| seconds))
}

/// A `plans` row as [`open_plans`] reads it.
#[derive(sqlx::FromRow)]
struct OpenPlanRecord {
    signable: Vec<u8>,
    plan_id: Vec<u8>,
}

/// Plans not completed: (signable, plan id), for matching on chain, in
/// relay order (the coordinator's, the same on every processor). Plans
/// with the same transaction all match it and the first completes, so the
/// order must not be local: two relayed proposals handled in one inbound
/// batch share `created_at`, and the row updated last comes last in a scan.
pub async fn open_plans(
    conn: &mut PgConnection,
    session: u64,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, sqlx::Error> {
    let rows = sqlx::query_as::<_, OpenPlanRecord>(
        "SELECT signable, plan_id FROM plans WHERE session = $1
         AND status NOT IN ('completed', 'superseded')
         ORDER BY relay_order NULLS LAST, plan_id",
    )
    .bind(to_i64(session))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.signable, r.plan_id)).collect())
}

/// Whether any plan of a key is being signed or published.
pub async fn active_plan_exists(pool: &PgPool, session: u64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM plans WHERE session = $1
                        AND status IN ('proposed', 'signing', 'signed', 'published'))",
    )
    .bind(to_i64(session))
    .fetch_one(pool)
    .await
}

/// Whether a plan other than `plan_id` is being signed or published.
pub async fn other_active_plan(
    conn: &mut PgConnection,
    session: u64,
    plan_id: &[u8],
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM plans WHERE session = $1 AND plan_id <> $2
                        AND status IN ('signing', 'signed', 'published'))",
    )
    .bind(to_i64(session))
    .bind(plan_id)
    .fetch_one(conn)
    .await
}

/// Proposals from other leaders to check (received or waiting).
pub async fn plans_to_check(pool: &PgPool, session: u64) -> Result<Vec<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT plan_id FROM plans WHERE session = $1 AND status IN ('received', 'waiting')
         ORDER BY relay_order NULLS FIRST, created_at",
    )
    .bind(to_i64(session))
    .fetch_all(pool)
    .await
}

/// The burns a plan pays.
pub async fn plan_burns(
    conn: &mut PgConnection,
    plan_id: &[u8],
) -> Result<Vec<String>, sqlx::Error> {
    let burns: Option<Vec<String>> =
        sqlx::query_scalar("SELECT burn_ids FROM plans WHERE plan_id = $1")
            .bind(plan_id)
            .fetch_optional(conn)
            .await?;
    Ok(burns.unwrap_or_default())
}

/// Closes a plan this processor accepted (signing, signed, published or
/// abandoned) that a conflicting final payout made impossible, returning
/// its unspent reserved outputs and unpaid burns to the pool and the queue.
/// False, and nothing changed, for any other plan: one already decided here
/// (refused, expired) keeps its decision, and one not yet checked is left
/// to the check (which finds it overtaken), so that its outcome does not
/// depend on whether this processor checked it before or after scanning
/// the block that completed the other.
pub async fn release(conn: &mut PgConnection, plan_id: &[u8]) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE plans SET status = 'superseded', reason = 'a conflicting payout is final', updated_at = now()
         WHERE plan_id = $1 AND status IN ('signing', 'signed', 'published', 'abandoned')",
    )
    .bind(plan_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    release_reservations(conn, plan_id).await?;
    Ok(true)
}

/// Returns a plan's reserved (unspent) outputs to the spendable pool and its
/// planned (unpaid) burns to the queue.
pub async fn release_reservations(
    conn: &mut PgConnection,
    plan_id: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outputs SET status = 'included', plan_id = NULL WHERE plan_id = $1 AND status = 'reserved'",
    )
    .bind(plan_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE burns SET status = 'queued', plan_id = NULL WHERE plan_id = $1 AND status = 'planned'",
    )
    .bind(plan_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A plan's transaction is final: record it, mark its burns paid.
pub async fn complete_plan(
    conn: &mut PgConnection,
    plan_id: &[u8],
    tx_hash: &[u8; 32],
    fee: u64,
    height: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE plans SET status = 'completed', tx_hash = $2, fee = $3, completed_height = $4, updated_at = now()
         WHERE plan_id = $1",
    )
    .bind(plan_id)
    .bind(tx_hash.as_slice())
    .bind(to_i64(fee))
    .bind(to_i64(height))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE burns SET status = 'paid', plan_id = $1
         WHERE burn_id = ANY((SELECT burn_ids FROM plans WHERE plan_id = $1)::text[])",
    )
    .bind(plan_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a fault observed in another participant.
pub async fn insert_fault(
    conn: &mut PgConnection,
    session: u64,
    accused: u16,
    kind: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO faults (session, accused, kind, detail) VALUES ($1, $2, $3, $4)")
        .bind(to_i64(session))
        .bind(i32::from(accused))
        .bind(kind)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(())
}

/// The scan cursor's next height (0 before the first block).
pub async fn next_height(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let next: Option<i64> = sqlx::query_scalar("SELECT next_height FROM scan_cursor")
        .fetch_optional(conn)
        .await?;
    Ok(next.map_or(0, to_u64))
}

/// A burn for the admin API: (id, address, amount, status, plan id, reason).
pub type BurnRow = (String, String, u64, String, Option<Vec<u8>>, Option<String>);
/// A window for the admin API: (window, start, leader, outcome, plan id).
pub type WindowRow = (u64, u64, u16, String, Option<Vec<u8>>);

/// Admin view of the schedule.
#[derive(Debug, Clone, Default)]
pub struct ScheduleView {
    /// Burns.
    pub burns: Vec<BurnRow>,
    /// Plans.
    pub plans: Vec<PlanView>,
    /// Windows.
    pub windows: Vec<WindowRow>,
    /// Spendable balance.
    pub spendable: Amount,
    /// Reserved balance.
    pub reserved: Amount,
}

/// One plan for the admin API.
#[derive(Debug, Clone)]
pub struct PlanView {
    /// Id.
    pub plan_id: Vec<u8>,
    /// Window.
    pub window: u64,
    /// Leader.
    pub leader: u16,
    /// Status.
    pub status: PlanStatus,
    /// Burns.
    pub burn_ids: Vec<String>,
    /// Inputs count.
    pub inputs: u32,
    /// Tx hash.
    pub tx_hash: Option<Vec<u8>>,
    /// Fee.
    pub fee: u64,
    /// Reason.
    pub reason: Option<String>,
    /// Completion height.
    pub completed_height: u64,
}

/// A `burns` row as [`schedule`] reads it.
#[derive(sqlx::FromRow)]
struct BurnViewRecord {
    burn_id: String,
    monero_address: String,
    amount: i64,
    status: String,
    plan_id: Option<Vec<u8>>,
    reason: Option<String>,
}

/// A `plans` row, with its input count, as [`schedule`] reads it.
#[derive(sqlx::FromRow)]
struct PlanViewRecord {
    plan_id: Vec<u8>,
    window: i64,
    leader: i32,
    status: PlanStatus,
    burn_ids: Vec<String>,
    inputs: i64,
    tx_hash: Option<Vec<u8>>,
    fee: i64,
    reason: Option<String>,
    completed_height: i64,
}

/// A `windows` row as [`schedule`] reads it.
#[derive(sqlx::FromRow)]
struct WindowViewRecord {
    window: i64,
    start_height: i64,
    leader: i32,
    outcome: String,
    plan_id: Option<Vec<u8>>,
}

/// The schedule, newest first.
pub async fn schedule(pool: &PgPool, limit: u32) -> Result<ScheduleView, ScheduleError> {
    let limit = i64::from(limit);
    let burns = sqlx::query_as::<_, BurnViewRecord>(
        "SELECT burn_id, monero_address, amount, status, plan_id, reason FROM burns ORDER BY seq DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        (
            r.burn_id,
            r.monero_address,
            to_u64(r.amount),
            r.status,
            r.plan_id,
            r.reason,
        )
    })
    .collect();
    let plans = sqlx::query_as::<_, PlanViewRecord>(
        "SELECT p.plan_id, p.\"window\", p.leader, p.status, p.burn_ids,
                (SELECT count(*) FROM outputs o WHERE o.plan_id = p.plan_id) AS inputs, p.tx_hash,
                COALESCE(p.fee, 0) AS fee, p.reason, COALESCE(p.completed_height, 0) AS completed_height
         FROM plans p ORDER BY p.created_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| PlanView {
        plan_id: r.plan_id,
        window: to_u64(r.window),
        leader: u16_of(r.leader),
        status: r.status,
        burn_ids: r.burn_ids,
        inputs: u32::try_from(r.inputs).unwrap_or(0),
        tx_hash: r.tx_hash,
        fee: to_u64(r.fee),
        reason: r.reason,
        completed_height: to_u64(r.completed_height),
    })
    .collect();
    let windows = sqlx::query_as::<_, WindowViewRecord>(
        "SELECT \"window\", start_height, leader, outcome, plan_id FROM windows
         ORDER BY start_height DESC, session DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        (
            to_u64(r.window),
            to_u64(r.start_height),
            u16_of(r.leader),
            r.outcome,
            r.plan_id,
        )
    })
    .collect();
    Ok(ScheduleView {
        burns,
        plans,
        windows,
        spendable: balance(pool, "included", "the spendable balance").await?,
        reserved: balance(pool, "reserved", "the reserved balance").await?,
    })
}

/// The sum of the outputs in `status`. Postgres sums `BIGINT` exactly (as
/// `NUMERIC`); a total above 64 bits is an [`AmountError`], not a wrapped
/// or clamped number.
async fn balance(pool: &PgPool, status: &str, what: &str) -> Result<Amount, ScheduleError> {
    let total: String =
        sqlx::query_scalar("SELECT COALESCE(sum(amount), 0)::text FROM outputs WHERE status = $1")
            .bind(status)
            .fetch_one(pool)
            .await?;
    total
        .parse::<u64>()
        .map(Amount::from_piconero)
        .map_err(|_| {
            ScheduleError::Amount(AmountError::Overflow {
                what: format!("{what} ({total} piconero)"),
            })
        })
}

/// Why the schedule cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// Postgres.
    #[error(transparent)]
    Storage(#[from] sqlx::Error),
    /// A balance does not fit 64 bits.
    #[error(transparent)]
    Amount(#[from] AmountError),
}

/// The window length the key of `session` fixes (`None`: a key without
/// chain parameters, which scans nothing and so has no windows).
pub async fn key_window_blocks(
    conn: &mut PgConnection,
    session: u64,
) -> Result<Option<u64>, sqlx::Error> {
    let blocks: Option<Option<i64>> =
        sqlx::query_scalar("SELECT window_blocks FROM keys WHERE session = $1")
            .bind(to_i64(session))
            .fetch_optional(conn)
            .await?;
    Ok(blocks.flatten().map(to_u64))
}

/// What a plan turned into when its lifetime ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Never accepted here (it waited, or was the leader's own, unrelayed):
    /// it reserved nothing.
    Expired,
    /// Accepted here (signing, signed or published) and not final: its
    /// reservations are released, and its burns may be paid again only by
    /// a plan spending one of its inputs.
    Abandoned,
}

/// A `plans` row as [`expire_plans`] returns it.
#[derive(sqlx::FromRow)]
struct ExpiredPlanRecord {
    plan_id: Vec<u8>,
    status: PlanStatus,
}

/// Ends the plans of `session` for windows up to `last_window` that are
/// neither final nor closed: in the scanner's transaction for the finalized
/// block whose height ends their lifetime, so every processor ends them at
/// the same block. Returns each plan ended and how.
pub async fn expire_plans(
    conn: &mut PgConnection,
    session: u64,
    last_window: u64,
    height: u64,
) -> Result<Vec<(Vec<u8>, Expiry)>, sqlx::Error> {
    let rows = sqlx::query_as::<_, ExpiredPlanRecord>(
        "UPDATE plans SET
           status = CASE WHEN status IN ('signing', 'signed', 'published') THEN 'abandoned' ELSE 'expired' END,
           reason = 'no finalized block up to ' || $3::text || ' holds its transaction',
           updated_at = now()
         WHERE session = $1 AND \"window\" <= $2
           AND status IN ('proposed', 'received', 'waiting', 'signing', 'signed', 'published')
         RETURNING plan_id, status",
    )
    .bind(to_i64(session))
    .bind(to_i64(last_window))
    .bind(to_i64(height))
    .fetch_all(&mut *conn)
    .await?;
    let mut ended = Vec::with_capacity(rows.len());
    for ExpiredPlanRecord { plan_id, status } in rows {
        let how = if status == PlanStatus::Abandoned {
            release_reservations(conn, &plan_id).await?;
            Expiry::Abandoned
        } else {
            Expiry::Expired
        };
        ended.push((plan_id, how));
    }
    Ok(ended)
}

/// Whether a proposal is waiting here for something other than its window
/// (which this processor has finalized): a leader plans nothing meanwhile.
pub async fn checkable_proposal_waits(pool: &PgPool, session: u64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM plans p
                        JOIN windows w ON w.\"window\" = p.\"window\" AND w.session = p.session
                        WHERE p.session = $1 AND p.status IN ('received', 'waiting'))",
    )
    .bind(to_i64(session))
    .fetch_one(pool)
    .await
}

/// One of our outputs, found by its one-time key.
#[derive(Debug, Clone)]
pub struct OwnOutput {
    /// Its transaction.
    pub tx_hash: Vec<u8>,
    /// Its index there.
    pub index_in_tx: i64,
    /// `outputs.status`.
    pub status: crate::scanner::db::OutputStatus,
    /// The block holding it.
    pub block_height: u64,
    /// monero-wallet's `WalletOutput`.
    pub wallet_output: Vec<u8>,
}

/// An `outputs` row as [`own_output`] reads it.
#[derive(sqlx::FromRow)]
struct OwnOutputRecord {
    tx_hash: Vec<u8>,
    index_in_tx: i64,
    status: crate::scanner::db::OutputStatus,
    block_height: i64,
    wallet_output: Vec<u8>,
}

/// The credited output of `session` with this one-time key, if any.
pub async fn own_output(
    conn: &mut PgConnection,
    session: u64,
    output_key: &[u8; 32],
) -> Result<Option<OwnOutput>, sqlx::Error> {
    let row = sqlx::query_as::<_, OwnOutputRecord>(
        "SELECT tx_hash, index_in_tx, status, block_height, wallet_output FROM outputs
         WHERE session = $1 AND output_key = $2 AND status <> 'duplicate'",
    )
    .bind(to_i64(session))
    .bind(output_key.as_slice())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| OwnOutput {
        tx_hash: r.tx_hash,
        index_in_tx: r.index_in_tx,
        status: r.status,
        block_height: to_u64(r.block_height),
        wallet_output: r.wallet_output,
    }))
}

/// A `plans` row as [`abandoned_plans_naming`] reads it.
#[derive(sqlx::FromRow)]
struct AbandonedPlanRecord {
    plan_id: Vec<u8>,
    signable: Vec<u8>,
    tx: Option<Vec<u8>>,
}

/// Abandoned plans of `session` naming any of `burn_ids`: (plan id,
/// signable, the signed transaction if this processor completed it).
pub async fn abandoned_plans_naming(
    conn: &mut PgConnection,
    session: u64,
    burn_ids: &[String],
) -> Result<Vec<(Vec<u8>, Vec<u8>, Option<Vec<u8>>)>, sqlx::Error> {
    let rows = sqlx::query_as::<_, AbandonedPlanRecord>(
        "SELECT plan_id, signable, tx FROM plans
         WHERE session = $1 AND status = 'abandoned' AND burn_ids && $2::text[]
         ORDER BY created_at, plan_id",
    )
    .bind(to_i64(session))
    .bind(burn_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.plan_id, r.signable, r.tx))
        .collect())
}

/// The first plan this processor signed (for the `scheduler-withhold-first-payout` failpoint).
pub async fn first_signed_plan(
    pool: &PgPool,
    session: u64,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT plan_id FROM plans WHERE session = $1 AND tx IS NOT NULL ORDER BY created_at, plan_id LIMIT 1",
    )
    .bind(to_i64(session))
    .fetch_optional(pool)
    .await
}
