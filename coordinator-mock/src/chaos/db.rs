//! The chaos runner's SQL.

use sqlx::PgConnection;

/// Terminates every backend serving `database` (a processor's), as a
/// Postgres restart would for that processor: whatever transaction was open
/// is rolled back and its connections must be remade. Returns how many.
pub async fn terminate_backends(
    admin: &mut PgConnection,
    database: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
         FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_one(admin)
    .await
}

/// Drops a run's database (after a passing run; a failing run keeps its).
pub async fn drop_database(admin: &mut PgConnection, database: &str) -> Result<(), sqlx::Error> {
    // The name is one the devnet made ([A-Za-z0-9_], checked there).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .execute(admin)
    .await?;
    Ok(())
}
