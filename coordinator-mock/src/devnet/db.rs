//! What the devnet reads from the databases it drives: the coordinator's
//! (identities, batches, plans) and each processor's (its plans, windows
//! and books), and the databases it makes.

use sqlx::{PgConnection, PgPool};

/// Drops database `name` if it exists and creates it empty. `name` is
/// checked by the caller to be a plain identifier (`CREATE DATABASE` takes
/// no parameters).
pub async fn recreate_database(admin: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut *admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(admin)
        .await?;
    Ok(())
}

/// Coordinator: processors that announced their identity key.
pub async fn identities(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM processor_identities")
        .fetch_one(pool)
        .await
}

/// Coordinator: the encodings of included batches, by id.
pub async fn included_batches(pool: &PgPool) -> Result<Vec<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT encoded FROM batches WHERE status = 'included' ORDER BY id")
        .fetch_all(pool)
        .await
}

/// Coordinator: the first completed plan's (tx hash, plan id, processors
/// that reported it completed).
pub async fn first_completed_plan(
    pool: &PgPool,
) -> Result<Option<(Vec<u8>, Vec<u8>, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.tx_hash, p.plan_id,
                (SELECT count(*) FROM plan_completions c WHERE c.plan_id = p.plan_id) AS reporters
         FROM plans p WHERE p.status = 'completed' ORDER BY p.seq LIMIT 1",
    )
    .fetch_optional(pool)
    .await
}

/// Processor: when it published plan `plan_id` (if it did) and when the
/// plan's window opened there, as Unix seconds.
pub async fn plan_times(
    pool: &PgPool,
    plan_id: &[u8],
) -> Result<Option<(Option<f64>, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM p.published_at)::float8 AS published,
                EXTRACT(EPOCH FROM w.opened_at)::float8 AS opened
         FROM plans p JOIN windows w ON w.\"window\" = p.\"window\" WHERE p.plan_id = $1",
    )
    .bind(plan_id)
    .fetch_optional(pool)
    .await
}

/// Processor: its books, in atomic units.
#[derive(Debug, sqlx::FromRow)]
pub struct Books {
    /// Credited deposits.
    pub deposits: i64,
    /// Burns paid.
    pub paid: i64,
    /// Fees of completed payouts.
    pub fees: i64,
    /// Outputs held: deposits and change, included or reserved.
    pub unspent: i64,
}

/// Processor: deposits, paid, fees and unspent, read in one statement.
pub async fn books(pool: &PgPool) -> Result<Books, sqlx::Error> {
    sqlx::query_as(
        "SELECT
           (SELECT COALESCE(sum(amount), 0)::bigint FROM outputs
             WHERE account > 0 AND status <> 'received') AS deposits,
           (SELECT COALESCE(sum(amount), 0)::bigint FROM burns WHERE status = 'paid') AS paid,
           (SELECT COALESCE(sum(fee), 0)::bigint FROM plans WHERE status = 'completed') AS fees,
           (SELECT COALESCE(sum(amount), 0)::bigint FROM outputs
             WHERE status IN ('included', 'reserved') AND (account > 0 OR subaddress_minor = 1)) AS unspent",
    )
    .fetch_one(pool)
    .await
}
