//! The batch tables: `batches` (the first proposal of each, its status and
//! signature) and `batch_proposals` (each processor's). Every query of them
//! lives here.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};

use crate::common::text_enum;

text_enum! {
    /// `batches.status`.
    pub enum BatchStatus {
        /// Proposed; being signed.
        Proposed = "proposed",
        /// Its signature verified: included in the next settlement block.
        Included = "included",
    }
}

/// A batch as `BatchSigned` checks it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    /// The first proposal, encoded.
    pub encoded: Vec<u8>,
    /// Its status.
    pub status: BatchStatus,
    /// Its key's session.
    pub session: i64,
}

/// A batch for the admin API.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    /// Id.
    pub id: i64,
    /// Key session.
    pub session: i64,
    /// The Monero block it credits.
    pub block_height: i64,
    /// Encoded `Batch`.
    pub encoded: Vec<u8>,
    /// Status.
    pub status: BatchStatus,
    /// The settlement block that included it.
    pub settlement_block: Option<i64>,
}

/// The gauge of batches by status.
pub const COUNT_BY_STATUS: &str = "SELECT status, count(*) FROM batches GROUP BY status";

/// Records a batch as first proposed (a later proposal changes nothing);
/// returns the encoding of the first.
pub async fn insert(
    conn: &mut PgConnection,
    id: i64,
    session: i64,
    block_height: i64,
    encoded: &[u8],
) -> Result<Vec<u8>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO batches (id, session, block_height, encoded) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(session)
    .bind(block_height)
    .bind(encoded)
    .execute(&mut *conn)
    .await?;
    encoded_of(conn, id).await
}

/// The encoding of batch `id` as first proposed.
pub async fn encoded_of(conn: &mut PgConnection, id: i64) -> Result<Vec<u8>, sqlx::Error> {
    sqlx::query_scalar("SELECT encoded FROM batches WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
}

/// Whether batch `id` was proposed.
pub async fn exists(conn: &mut PgConnection, id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM batches WHERE id = $1)")
        .bind(id)
        .fetch_one(conn)
        .await
}

/// Records `processor`'s proposal of batch `id`.
pub async fn insert_proposal(
    conn: &mut PgConnection,
    id: i64,
    processor: &str,
    encoded: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO batch_proposals (id, processor, encoded) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(processor)
    .bind(encoded)
    .execute(conn)
    .await?;
    Ok(())
}

/// Each processor's proposal of batch `id`, by processor.
pub async fn proposals(
    conn: &mut PgConnection,
    id: i64,
) -> Result<HashMap<String, Vec<u8>>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        processor: String,
        encoded: Vec<u8>,
    }
    let rows: Vec<Row> =
        sqlx::query_as("SELECT processor, encoded FROM batch_proposals WHERE id = $1")
            .bind(id)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(|r| (r.processor, r.encoded)).collect())
}

/// Locks batch `id`, if it was proposed.
pub async fn lock(conn: &mut PgConnection, id: i64) -> Result<Option<Stored>, sqlx::Error> {
    sqlx::query_as("SELECT encoded, status, session FROM batches WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Includes batch `id` with its verified signature.
pub async fn include(
    conn: &mut PgConnection,
    id: i64,
    signature: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE batches SET status = $3, signature = $2, included_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(signature)
    .bind(BatchStatus::Included)
    .execute(conn)
    .await?;
    Ok(())
}

/// Assigns the included batches not yet in a settlement block to block
/// `number`; returns their ids.
pub async fn take_for_block(conn: &mut PgConnection, number: i64) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE batches SET settlement_block = $1 WHERE status = $2 AND settlement_block IS NULL RETURNING id",
    )
    .bind(number)
    .bind(BatchStatus::Included)
    .fetch_all(conn)
    .await
}

/// Every batch, by id.
pub async fn list(pool: &PgPool) -> Result<Vec<BatchRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, session, block_height, encoded, status, settlement_block FROM batches ORDER BY id",
    )
    .fetch_all(pool)
    .await
}
