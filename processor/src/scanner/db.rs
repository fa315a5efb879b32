//! The `scan_cursor`, `finalized_blocks` and `outputs` tables.

use sqlx::{PgConnection, PgPool, Row};

use service::db::{to_i64, to_u64};

/// The `scan_cursor` row as [`cursor`] reads it.
#[derive(sqlx::FromRow)]
struct CursorRecord {
    next_height: i64,
    halted: Option<String>,
}

/// The cursor: next block to scan, and why scanning halted (if it did).
pub async fn cursor(pool: &PgPool) -> Result<Option<(u64, Option<String>)>, sqlx::Error> {
    let row = sqlx::query_as::<_, CursorRecord>("SELECT next_height, halted FROM scan_cursor")
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| (to_u64(r.next_height), r.halted)))
}

/// The hash stored for a finalized block.
pub async fn block_hash(pool: &PgPool, height: u64) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT hash FROM finalized_blocks WHERE height = $1")
        .bind(to_i64(height))
        .fetch_optional(pool)
        .await
}

/// Records that scanning halted, and why.
pub async fn halt(pool: &PgPool, reason: &str, next_height: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO scan_cursor (next_height, halted) VALUES ($1, $2)
         ON CONFLICT (singleton) DO UPDATE SET halted = EXCLUDED.halted",
    )
    .bind(to_i64(next_height))
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// The advisory lock that puts taking in a Monero block and taking in a
/// settlement block in one order.
pub const CHAIN_ORDER_LOCK_KEY: i64 = 0x4D4E_5250_4348_4149;

/// Takes the chain-order lock for the rest of the caller's transaction.
///
/// A batch is made by the scanner's transaction and marked included by the
/// settlement block's; under READ COMMITTED each of the two, run at once,
/// can miss the other's uncommitted row (the scanner sees no settlement
/// block including its batch, the settlement block finds no batch and no
/// cursor past its block), and the batch would stay proposed forever with
/// its deposits never credited (chaos seed 204). Both transactions take this
/// lock before anything else, so the second one to take it sees all the
/// first one wrote.
pub async fn lock_chain_order(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHAIN_ORDER_LOCK_KEY)
        .execute(conn)
        .await?;
    Ok(())
}

/// Where the cursor stands, in the caller's transaction (`None`: nothing
/// scanned yet).
pub async fn next_height(conn: &mut PgConnection) -> Result<Option<u64>, sqlx::Error> {
    let next: Option<i64> = sqlx::query_scalar("SELECT next_height FROM scan_cursor")
        .fetch_optional(conn)
        .await?;
    Ok(next.map(to_u64))
}

/// Whether a plan of `session` is still open (its transaction is looked for
/// in every block).
pub async fn open_plans_exist(pool: &PgPool, session: u64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM plans WHERE session = $1 AND status NOT IN ('completed', 'superseded'))",
    )
    .bind(to_i64(session))
    .fetch_one(pool)
    .await
}

/// An output's status (column `outputs.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum OutputStatus {
    /// An additional timelock not yet passed: not reported yet.
    Locked,
    /// Reported in a batch not yet included.
    Received,
    /// Its batch is included (or it is change): spendable.
    Included,
    /// Reserved by a plan.
    Reserved,
    /// Spent by a final plan.
    Spent,
    /// Its one-time key was received before: never credited.
    Duplicate,
}

impl OutputStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Locked => "locked",
            Self::Received => "received",
            Self::Included => "included",
            Self::Reserved => "reserved",
            Self::Spent => "spent",
            Self::Duplicate => "duplicate",
        }
    }

    /// From the column value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "locked" => Self::Locked,
            "received" => Self::Received,
            "included" => Self::Included,
            "reserved" => Self::Reserved,
            "spent" => Self::Spent,
            "duplicate" => Self::Duplicate,
            _ => return None,
        })
    }
}

/// One output found, ready to store.
#[derive(Debug, Clone)]
pub struct NewOutput {
    /// Transaction hash.
    pub tx_hash: [u8; 32],
    /// Index within the transaction.
    pub index_in_tx: u64,
    /// The one-time output key.
    pub output_key: [u8; 32],
    /// How it is taken in.
    pub status: OutputStatus,
    /// Why it is not credited, or how it unlocks.
    pub reason: Option<String>,
    /// Key session.
    pub session: u64,
    /// Block number.
    pub block_height: u64,
    /// Subaddress account (0: own).
    pub account: u32,
    /// Subaddress minor index.
    pub subaddress_minor: u32,
    /// Amount.
    pub amount: u64,
    /// Block-height lock.
    pub unlock_height: Option<u64>,
    /// Time lock.
    pub unlock_time: Option<u64>,
    /// Serialized WalletOutput.
    pub wallet_output: Vec<u8>,
}

/// Stores a finalized block with its outputs; the caller moves the cursor in
/// the same transaction.
pub async fn insert_block(
    conn: &mut PgConnection,
    height: u64,
    hash: &[u8; 32],
    outputs: &[NewOutput],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO finalized_blocks (height, hash, outputs) VALUES ($1, $2, $3)")
        .bind(to_i64(height))
        .bind(hash.as_slice())
        .bind(i32::try_from(outputs.len()).unwrap_or(i32::MAX))
        .execute(&mut *conn)
        .await?;
    for o in outputs {
        sqlx::query(
            "INSERT INTO outputs (tx_hash, index_in_tx, session, block_height, account, subaddress_minor,
                                  amount, unlock_height, unlock_time, wallet_output, status, output_key, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(o.tx_hash.as_slice())
        .bind(to_i64(o.index_in_tx))
        .bind(to_i64(o.session))
        .bind(to_i64(o.block_height))
        .bind(i64::from(o.account))
        .bind(i64::from(o.subaddress_minor))
        .bind(to_i64(o.amount))
        .bind(o.unlock_height.map(to_i64))
        .bind(o.unlock_time.map(to_i64))
        .bind(&o.wallet_output)
        .bind(o.status.as_str())
        .bind(o.output_key.as_slice())
        .bind(o.reason.as_deref())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The credited output that holds `output_key`, if any: (tx hash, index,
/// block).
pub async fn output_key_owner(
    conn: &mut PgConnection,
    output_key: &[u8; 32],
) -> Result<Option<([u8; 32], u64, u64)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT tx_hash, index_in_tx, block_height FROM outputs
         WHERE output_key = $1 AND status <> 'duplicate'",
    )
    .bind(output_key.as_slice())
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let tx: Vec<u8> = row.try_get("tx_hash")?;
    Ok(Some((
        tx.try_into().unwrap_or([0; 32]),
        to_u64(row.try_get("index_in_tx")?),
        to_u64(row.try_get("block_height")?),
    )))
}

/// Outputs of `session` whose lock block `height` (with `timestamp`)
/// passes: change becomes spendable at once; the deposits are returned, in
/// chain order, for this block's batch.
pub async fn unlock(
    conn: &mut PgConnection,
    session: u64,
    height: u64,
    timestamp: u64,
) -> Result<Vec<crate::batch::Deposit>, sqlx::Error> {
    let passed = "session = $1 AND status = 'locked'
         AND (unlock_height <= $2 OR unlock_time <= $3)";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE outputs SET status = 'included' WHERE {passed} AND account = 0 AND subaddress_minor IN (1, 2)"
    )))
    .bind(to_i64(session))
    .bind(to_i64(height))
    .bind(to_i64(timestamp))
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT tx_hash, index_in_tx, account, amount FROM outputs WHERE {passed}
         ORDER BY block_height, tx_hash, index_in_tx"
    )))
    .bind(to_i64(session))
    .bind(to_i64(height))
    .bind(to_i64(timestamp))
    .fetch_all(conn)
    .await?;
    let mut deposits = Vec::with_capacity(rows.len());
    for r in rows {
        let tx: Vec<u8> = r.try_get("tx_hash")?;
        deposits.push(crate::batch::Deposit {
            tx_hash: tx.try_into().unwrap_or([0; 32]),
            index_in_tx: to_u64(r.try_get("index_in_tx")?),
            account: u32::try_from(r.try_get::<i64, _>("account")?).unwrap_or(0),
            amount: to_u64(r.try_get("amount")?),
        });
    }
    Ok(deposits)
}

/// The outputs a batch reports: they wait (received) for its inclusion.
pub async fn assign_batch(
    conn: &mut PgConnection,
    batch_id: u64,
    deposits: &[crate::batch::Deposit],
) -> Result<(), sqlx::Error> {
    let hashes: Vec<&[u8]> = deposits.iter().map(|d| d.tx_hash.as_slice()).collect();
    let indexes: Vec<i64> = deposits.iter().map(|d| to_i64(d.index_in_tx)).collect();
    sqlx::query(
        "UPDATE outputs o SET batch_id = $1, status = 'received', reason = NULL
         FROM UNNEST($2::bytea[], $3::bigint[]) AS u(tx_hash, idx)
         WHERE o.tx_hash = u.tx_hash AND o.index_in_tx = u.idx AND o.status IN ('locked', 'received')",
    )
    .bind(to_i64(batch_id))
    .bind(&hashes)
    .bind(&indexes)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves the cursor.
pub async fn set_cursor(conn: &mut PgConnection, next_height: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO scan_cursor (next_height) VALUES ($1)
         ON CONFLICT (singleton) DO UPDATE SET next_height = EXCLUDED.next_height",
    )
    .bind(to_i64(next_height))
    .execute(conn)
    .await?;
    Ok(())
}

/// An output for the admin API.
#[derive(Debug, Clone)]
pub struct OutputView {
    /// Tx hash.
    pub tx_hash: Vec<u8>,
    /// Index in tx.
    pub index_in_tx: u64,
    /// Block.
    pub block_height: u64,
    /// Account.
    pub account: u32,
    /// Amount.
    pub amount: u64,
    /// Unlock block (0: none).
    pub unlock_height: u64,
    /// Unlock time (0: none).
    pub unlock_time: u64,
    /// Status.
    pub status: String,
    /// Subaddress minor index.
    pub subaddress_minor: u32,
    /// One-time key.
    pub output_key: Vec<u8>,
    /// Why not credited / how it unlocks.
    pub reason: Option<String>,
    /// The batch reporting it.
    pub batch_id: Option<u64>,
}

/// Outputs in blocks from `from` on (admin API).
pub async fn list_outputs(
    pool: &PgPool,
    from: u64,
    limit: u32,
) -> Result<Vec<OutputView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT tx_hash, index_in_tx, block_height, account, subaddress_minor, amount, unlock_height,
                unlock_time, status, output_key, reason, batch_id FROM outputs
         WHERE block_height >= $1 ORDER BY block_height, tx_hash, index_in_tx LIMIT $2",
    )
    .bind(to_i64(from))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(OutputView {
            tx_hash: r.try_get("tx_hash")?,
            index_in_tx: to_u64(r.try_get("index_in_tx")?),
            block_height: to_u64(r.try_get("block_height")?),
            account: u32::try_from(r.try_get::<i64, _>("account")?).unwrap_or(0),
            subaddress_minor: u32::try_from(r.try_get::<i64, _>("subaddress_minor")?).unwrap_or(0),
            amount: to_u64(r.try_get("amount")?),
            unlock_height: r
                .try_get::<Option<i64>, _>("unlock_height")?
                .map_or(0, to_u64),
            unlock_time: r
                .try_get::<Option<i64>, _>("unlock_time")?
                .map_or(0, to_u64),
            status: r.try_get("status")?,
            output_key: r
                .try_get::<Option<Vec<u8>>, _>("output_key")?
                .unwrap_or_default(),
            reason: r.try_get("reason")?,
            batch_id: r.try_get::<Option<i64>, _>("batch_id")?.map(to_u64),
        });
    }
    Ok(out)
}

/// Number of finalized blocks stored.
pub async fn finalized_count(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM finalized_blocks")
        .fetch_one(pool)
        .await?;
    Ok(to_u64(n))
}

/// The outputs of included batches move from received to included (only
/// those: a reserved or spent output never moves back).
pub async fn include_outputs_of(
    conn: &mut PgConnection,
    batch_ids: &[u64],
) -> Result<(), sqlx::Error> {
    if batch_ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = batch_ids.iter().map(|&i| to_i64(i)).collect();
    sqlx::query(
        "UPDATE outputs SET status = 'included' WHERE batch_id = ANY($1) AND status = 'received'",
    )
    .bind(&ids)
    .execute(conn)
    .await?;
    Ok(())
}
