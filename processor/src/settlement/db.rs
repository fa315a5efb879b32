//! The `settlement_blocks` and `burns` tables.

use proto::processor_v1::{Burn, SettlementBlock};
use sqlx::{PgConnection, PgPool};

use service::db::{to_i64, to_u64};

/// Whether block `number` is stored.
pub async fn exists(conn: &mut PgConnection, number: u64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM settlement_blocks WHERE number = $1)")
        .bind(to_i64(number))
        .fetch_one(conn)
        .await
}

/// Whether any of these burn ids is stored.
pub async fn any_burn_exists(conn: &mut PgConnection, burns: &[Burn]) -> Result<bool, sqlx::Error> {
    if burns.is_empty() {
        return Ok(false);
    }
    let ids: Vec<&str> = burns.iter().map(|b| b.burn_id.as_str()).collect();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM burns WHERE burn_id = ANY($1))")
        .bind(&ids)
        .fetch_one(conn)
        .await
}

/// The highest Monero horizon of the settlement blocks taken in (`None`:
/// none yet): the scanner goes no further.
pub async fn horizon(conn: impl sqlx::PgExecutor<'_>) -> Result<Option<u64>, sqlx::Error> {
    let h: Option<i64> = sqlx::query_scalar("SELECT max(monero_horizon) FROM settlement_blocks")
        .fetch_one(conn)
        .await?;
    Ok(h.map(to_u64))
}

/// Stores a block and its burns. `included` are the batch ids the block
/// includes that this processor accepted.
pub async fn insert(
    conn: &mut PgConnection,
    block: &SettlementBlock,
    included: &[u64],
) -> Result<(), sqlx::Error> {
    let included: Vec<i64> = included.iter().map(|&b| to_i64(b)).collect();
    sqlx::query(
        "INSERT INTO settlement_blocks (number, included_batch_ids, monero_horizon) VALUES ($1, $2, $3)",
    )
    .bind(to_i64(block.number))
    .bind(&included)
    .bind(to_i64(block.monero_horizon))
    .execute(&mut *conn)
    .await?;
    if !block.burns.is_empty() {
        let ids: Vec<&str> = block.burns.iter().map(|b| b.burn_id.as_str()).collect();
        let addresses: Vec<&str> = block
            .burns
            .iter()
            .map(|b| b.monero_address.as_str())
            .collect();
        let amounts: Vec<i64> = block.burns.iter().map(|b| to_i64(b.amount)).collect();
        let sessions: Vec<Option<i64>> =
            block.burns.iter().map(|b| b.session.map(to_i64)).collect();
        sqlx::query(
            "INSERT INTO burns (burn_id, block_number, monero_address, amount, session)
             SELECT u.id, $1, u.address, u.amount, u.session
             FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::bigint[])
                  AS u(id, address, amount, session)",
        )
        .bind(to_i64(block.number))
        .bind(&ids)
        .bind(&addresses)
        .bind(&amounts)
        .bind(&sessions)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A stored block, for the admin API.
#[derive(Debug, Clone)]
pub struct BlockView {
    /// Number.
    pub number: u64,
    /// Included batches.
    pub included_batch_ids: Vec<u64>,
    /// Burn count.
    pub burns: u32,
    /// Arrival, Unix ms.
    pub received_unix_ms: i64,
}

/// A `settlement_blocks` row, with its burn count, as [`list`] reads it.
#[derive(sqlx::FromRow)]
struct BlockRecord {
    number: i64,
    included_batch_ids: Vec<i64>,
    burns: i64,
    received_unix_ms: i64,
}

/// Lists blocks with a number of at least `from` (admin API).
pub async fn list(pool: &PgPool, from: u64, limit: u32) -> Result<Vec<BlockView>, sqlx::Error> {
    let rows = sqlx::query_as::<_, BlockRecord>(
        "SELECT b.number, b.included_batch_ids,
                (SELECT count(*) FROM burns WHERE block_number = b.number) AS burns,
                (extract(epoch from b.received_at) * 1000)::bigint AS received_unix_ms
         FROM settlement_blocks b WHERE b.number >= $1 ORDER BY b.number LIMIT $2",
    )
    .bind(to_i64(from))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| BlockView {
            number: to_u64(r.number),
            included_batch_ids: r.included_batch_ids.into_iter().map(to_u64).collect(),
            burns: u32::try_from(r.burns).unwrap_or(u32::MAX),
            received_unix_ms: r.received_unix_ms,
        })
        .collect())
}

/// Whether a stored settlement block already includes batch `id`.
pub async fn includes_batch(conn: &mut PgConnection, id: u64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM settlement_blocks WHERE $1 = ANY(included_batch_ids))",
    )
    .bind(to_i64(id))
    .fetch_one(conn)
    .await
}
