//! The rotation's state: `keys.retired_height` and `foreign_keys`, and what
//! retirement asks of `outputs` and `plans`.

use sqlx::{PgConnection, PgExecutor};

use service::db::{to_i64, to_u64};

use super::ChainKey;

/// A key of the chain as [`chain`] reads it.
#[derive(sqlx::FromRow)]
struct ChainRecord {
    session: i64,
    group_key: Vec<u8>,
    activation_height: i64,
    retired_height: Option<i64>,
    own: bool,
}

/// Every confirmed key with an activation height, own and foreign, in
/// activation order, with its transition heights.
pub async fn chain(conn: impl PgExecutor<'_>) -> Result<Vec<ChainKey>, sqlx::Error> {
    let rows = sqlx::query_as::<_, ChainRecord>(
        "SELECT session, group_key, activation_height, retired_height, TRUE AS own FROM keys
         WHERE status = 'confirmed' AND activation_height IS NOT NULL AND group_key IS NOT NULL
         UNION ALL
         SELECT session, group_key, activation_height, NULL, FALSE FROM foreign_keys
         WHERE session NOT IN (SELECT session FROM keys)",
    )
    .fetch_all(conn)
    .await?;
    let keys = rows
        .into_iter()
        .filter_map(|r| {
            Some(super::KnownKey {
                session: to_u64(r.session),
                group_key: <[u8; 32]>::try_from(r.group_key).ok()?,
                activation: to_u64(r.activation_height),
                retired: r.retired_height.map(to_u64),
                own: r.own,
            })
        })
        .collect();
    Ok(super::chain(keys))
}

/// Records a successor key this processor holds no share of; false if it
/// was known.
pub async fn insert_foreign(
    conn: &mut PgConnection,
    session: u64,
    group_key: &[u8],
    activation_height: u64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO foreign_keys (session, group_key, activation_height) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(to_i64(session))
    .bind(group_key)
    .bind(to_i64(activation_height))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether a key holds nothing: no output it may still spend or report,
/// and no plan that may still be signed or mined.
pub async fn holds_nothing(conn: &mut PgConnection, session: u64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM outputs WHERE session = $1
                              AND status IN ('locked', 'received', 'included', 'reserved'))
            AND NOT EXISTS (SELECT 1 FROM plans WHERE session = $1
                              AND status IN ('proposed', 'received', 'waiting', 'signing',
                                             'signed', 'published'))",
    )
    .bind(to_i64(session))
    .fetch_one(conn)
    .await
}

/// Retires a key after block `height`.
pub async fn retire(conn: &mut PgConnection, session: u64, height: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keys SET retired_height = $2 WHERE session = $1 AND retired_height IS NULL",
    )
    .bind(to_i64(session))
    .bind(to_i64(height))
    .execute(conn)
    .await?;
    Ok(())
}

/// A key's balance as [`balances`] reads it.
#[derive(sqlx::FromRow)]
struct BalanceRecord {
    session: i64,
    unspent: i64,
    outputs: i64,
}

/// Per key: what it holds (atomic units, outputs not spent, duplicates
/// excluded) and how many outputs.
pub async fn balances(conn: impl PgExecutor<'_>) -> Result<Vec<(u64, u64, u64)>, sqlx::Error> {
    let rows = sqlx::query_as::<_, BalanceRecord>(
        "SELECT session, COALESCE(SUM(amount), 0)::BIGINT AS unspent, COUNT(*) AS outputs
         FROM outputs WHERE status IN ('locked', 'received', 'included', 'reserved')
         GROUP BY session",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (to_u64(r.session), to_u64(r.unspent), to_u64(r.outputs)))
        .collect())
}

/// A `foreign_keys` row as [`foreign_keys`] reads it.
#[derive(sqlx::FromRow)]
struct ForeignRecord {
    session: i64,
    group_key: Vec<u8>,
    activation_height: i64,
}

/// Keys this processor holds no share of: (session, group key, activation).
pub async fn foreign_keys(
    conn: impl PgExecutor<'_>,
) -> Result<Vec<(u64, Vec<u8>, u64)>, sqlx::Error> {
    let rows = sqlx::query_as::<_, ForeignRecord>(
        "SELECT session, group_key, activation_height FROM foreign_keys ORDER BY session",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (to_u64(r.session), r.group_key, to_u64(r.activation_height)))
        .collect())
}
