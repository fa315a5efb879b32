//! The `accounts` table.

use sqlx::{PgConnection, PgPool};

/// Stores an account; false if it was there already (its first
/// registration stands).
pub async fn insert(
    conn: &mut PgConnection,
    account: i32,
    active_from: u64,
    settlement_block: u64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO accounts (account, active_from, settlement_block) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(account)
    .bind(service::db::to_i64(active_from))
    .bind(service::db::to_i64(settlement_block))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Registered accounts active at or before Monero block `height`, with the
/// block they are active from.
pub async fn active_by(pool: &PgPool, height: u64) -> Result<Vec<(u32, u64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT account, active_from FROM accounts WHERE active_from <= $1 ORDER BY account",
    )
    .bind(service::db::to_i64(height))
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let account: i32 = sqlx::Row::try_get(&r, "account")?;
        let from: i64 = sqlx::Row::try_get(&r, "active_from")?;
        if let Ok(account) = u32::try_from(account) {
            out.push((account, service::db::to_u64(from)));
        }
    }
    Ok(out)
}

/// Whether an account is registered.
pub async fn exists(pool: &PgPool, account: i32) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE account = $1)")
        .bind(account)
        .fetch_one(pool)
        .await
}
