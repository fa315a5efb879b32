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

/// The server's `max_connections` less its reserved superuser slots: how
/// many sessions the runs may open together.
pub async fn usable_connections(admin: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT current_setting('max_connections')::bigint
              - current_setting('superuser_reserved_connections')::bigint",
    )
    .fetch_one(admin)
    .await
}
