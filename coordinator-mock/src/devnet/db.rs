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
         FROM plans p JOIN windows w ON w.\"window\" = p.\"window\" AND w.session = p.session WHERE p.plan_id = $1",
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

/// Coordinator: the activation height of key `session`, once given.
pub async fn activation_height(pool: &PgPool, session: u64) -> Result<Option<i64>, sqlx::Error> {
    let h: Option<Option<i64>> =
        sqlx::query_scalar("SELECT activation_height FROM keygen_sessions WHERE session = $1")
            .bind(i64::try_from(session).unwrap_or(i64::MAX))
            .fetch_optional(pool)
            .await?;
    Ok(h.flatten())
}

/// Coordinator: the completed plan paying burn `burn_id`: (tx hash, its
/// key's session).
pub async fn plan_paying(
    pool: &PgPool,
    burn_id: &str,
) -> Result<Option<(Vec<u8>, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tx_hash, session FROM plans
         WHERE status = 'completed' AND $1 = ANY(burn_ids) AND tx_hash IS NOT NULL",
    )
    .bind(burn_id)
    .fetch_optional(pool)
    .await
}

/// Processor: the block after which key `session` retired, once it has.
pub async fn retired_height(pool: &PgPool, session: i64) -> Result<Option<i64>, sqlx::Error> {
    let h: Option<Option<i64>> =
        sqlx::query_scalar("SELECT retired_height FROM keys WHERE session = $1")
            .bind(session)
            .fetch_optional(pool)
            .await?;
    Ok(h.flatten())
}

/// Processor: key `session`'s completed forwards (burn-less plans nothing of
/// which came back to it): (tx hash, amount moved, fee).
pub async fn forwards(
    pool: &PgPool,
    session: i64,
) -> Result<Vec<(Vec<u8>, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.tx_hash,
                ((SELECT COALESCE(sum(i.amount), 0) FROM outputs i WHERE i.plan_id = p.plan_id)
                 - p.fee)::bigint AS moved,
                p.fee
         FROM plans p
         WHERE p.session = $1 AND p.status = 'completed' AND cardinality(p.burn_ids) = 0
           AND NOT EXISTS (SELECT 1 FROM outputs o WHERE o.tx_hash = p.tx_hash AND o.session = p.session)
         ORDER BY p.completed_height, p.plan_id",
    )
    .bind(session)
    .fetch_all(pool)
    .await
}

/// Processor: outputs to account 1 of exactly `amount`: (session, amount).
pub async fn credited(pool: &PgPool, amount: u64) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT session, amount FROM outputs WHERE account = 1 AND amount = $1 AND status <> 'duplicate'",
    )
    .bind(i64::try_from(amount).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
}
