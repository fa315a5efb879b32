//! The `accounts` table.

use sqlx::{PgConnection, PgPool};

/// Stores an account; false if it was there already.
pub async fn insert(conn: &mut PgConnection, account: i32) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("INSERT INTO accounts (account) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(account)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether an account is registered.
pub async fn exists(pool: &PgPool, account: i32) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE account = $1)")
        .bind(account)
        .fetch_one(pool)
        .await
}
