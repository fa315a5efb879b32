//! The settlement chain's tables: `settlement_blocks`, `settlement_acks`,
//! and `accounts` (registered in a settlement block). Every query of them
//! lives here.

use sqlx::{PgConnection, PgPool};

/// Advisory lock serializing settlement block production.
const SETTLEMENT_NUMBERING_LOCK: i64 = 0x5345_5454_4C45_0001;

/// Takes the numbering lock for this transaction and returns the next
/// block's number and the last block's horizon (`None`: no block yet). An
/// advisory lock, not a table lock: a table lock blocks the foreign-key
/// checks of handlers recording acknowledgements, which hold link rows the
/// producer locks next.
pub async fn next_block(conn: &mut PgConnection) -> Result<(i64, Option<i64>), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SETTLEMENT_NUMBERING_LOCK)
        .execute(&mut *conn)
        .await?;
    let number: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(number) + 1, 0) FROM settlement_blocks")
            .fetch_one(&mut *conn)
            .await?;
    let previous: Option<i64> =
        sqlx::query_scalar("SELECT max(monero_horizon) FROM settlement_blocks")
            .fetch_one(conn)
            .await?;
    Ok((number, previous))
}

/// Records a produced block.
pub async fn insert_block(
    conn: &mut PgConnection,
    number: i64,
    monero_horizon: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO settlement_blocks (number, monero_horizon) VALUES ($1, $2)")
        .bind(number)
        .bind(monero_horizon)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether block `number` was produced.
pub async fn block_exists(conn: &mut PgConnection, number: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM settlement_blocks WHERE number = $1)")
        .bind(number)
        .fetch_one(conn)
        .await
}

/// Records that `processor` took in block `number`; false if it had.
pub async fn insert_ack(
    conn: &mut PgConnection,
    processor: &str,
    number: i64,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO settlement_acks (processor, number) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(processor)
    .bind(number)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() > 0)
}

/// The highest block number produced (-1: none).
pub async fn height(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(MAX(number), -1) FROM settlement_blocks")
        .fetch_one(pool)
        .await
}

/// The highest Monero horizon announced (`None`: no block yet).
pub async fn monero_horizon(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(monero_horizon) FROM settlement_blocks")
        .fetch_one(pool)
        .await
}

/// The highest block `processor` acknowledged (-1: none).
pub async fn acked_by(pool: &PgPool, processor: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(MAX(number), -1) FROM settlement_acks WHERE processor = $1")
        .bind(processor)
        .fetch_one(pool)
        .await
}

/// Registers an account for the next settlement block; false if it was.
pub async fn insert_account(pool: &PgPool, account: i32) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query("INSERT INTO accounts (account) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(account)
        .execute(pool)
        .await?;
    Ok(inserted.rows_affected() == 1)
}

/// The Monero block a registered account is credited from (`None`: it
/// waits for the next settlement block, or is not registered).
pub async fn account_active_from(pool: &PgPool, account: i32) -> Result<Option<i64>, sqlx::Error> {
    let active_from: Option<Option<i64>> =
        sqlx::query_scalar("SELECT active_from FROM accounts WHERE account = $1")
            .bind(account)
            .fetch_optional(pool)
            .await?;
    Ok(active_from.flatten())
}

/// Whether `account` is registered.
pub async fn account_registered(pool: &PgPool, account: i32) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE account = $1)")
        .bind(account)
        .fetch_one(pool)
        .await
}

/// Assigns the accounts waiting for registration to block `number`,
/// credited from `active_from`; returns them, sorted.
pub async fn take_accounts(
    conn: &mut PgConnection,
    number: i64,
    active_from: i64,
) -> Result<Vec<i32>, sqlx::Error> {
    let mut accounts: Vec<i32> = sqlx::query_scalar(
        "UPDATE accounts SET settlement_block = $1, active_from = $2
         WHERE settlement_block IS NULL RETURNING account",
    )
    .bind(number)
    .bind(active_from)
    .fetch_all(conn)
    .await?;
    accounts.sort_unstable();
    Ok(accounts)
}

/// Whether an account waits for the next settlement block.
pub async fn accounts_pending(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE settlement_block IS NULL)")
        .fetch_one(pool)
        .await
}
