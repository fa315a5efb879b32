//! The `scan_cursor`, `finalized_blocks` and `outputs` tables.

use sqlx::{PgConnection, PgPool, Row};

use crate::link::db::{to_i64, to_u64};

/// The cursor: next block to scan, and why scanning halted (if it did).
pub async fn cursor(pool: &PgPool) -> Result<Option<(u64, Option<String>)>, sqlx::Error> {
    let row = sqlx::query("SELECT next_height, halted FROM scan_cursor")
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| (to_u64(r.get(0)), r.get(1))))
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

/// One output found, ready to store.
#[derive(Debug, Clone)]
pub struct NewOutput {
    /// Transaction hash.
    pub tx_hash: [u8; 32],
    /// Index within the transaction.
    pub index_in_tx: u64,
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
                                  amount, unlock_height, unlock_time, wallet_output, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                     -- change is the group's own: spendable without a batch
                     CASE WHEN $5 = 0 AND $6 = 1 THEN 'included' ELSE 'received' END)",
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
        .execute(&mut *conn)
        .await?;
    }
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

/// Registered deposit accounts.
pub async fn accounts(pool: &PgPool) -> Result<Vec<u32>, sqlx::Error> {
    let rows: Vec<i32> = sqlx::query_scalar("SELECT account FROM accounts ORDER BY account")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|a| u32::try_from(a).ok())
        .collect())
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
    /// Status.
    pub status: String,
}

/// Outputs in blocks from `from` on (admin API).
pub async fn list_outputs(
    pool: &PgPool,
    from: u64,
    limit: u32,
) -> Result<Vec<OutputView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT tx_hash, index_in_tx, block_height, account, amount, unlock_height, status FROM outputs
         WHERE block_height >= $1 ORDER BY block_height, tx_hash, index_in_tx LIMIT $2",
    )
    .bind(to_i64(from))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| OutputView {
            tx_hash: r.get(0),
            index_in_tx: to_u64(r.get(1)),
            block_height: to_u64(r.get(2)),
            account: u32::try_from(r.get::<i64, _>(3)).unwrap_or(0),
            amount: to_u64(r.get(4)),
            unlock_height: r.get::<Option<i64>, _>(5).map_or(0, to_u64),
            status: r.get(6),
        })
        .collect())
}

/// Number of finalized blocks stored.
pub async fn finalized_count(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM finalized_blocks")
        .fetch_one(pool)
        .await?;
    Ok(to_u64(n))
}
