//! The `batches` table.

use sqlx::{PgConnection, PgPool};

use service::db::{to_i64, to_u64};

/// Where a batch is: `proposed` (made from a block, signing under way),
/// `signed` (the group's signature verified), `included` (a settlement block
/// included it; its deposits are credited). The CHECK of `batches.status`
/// holds the same three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum BatchStatus {
    /// Made and proposed; signing under way.
    Proposed,
    /// Signed by the group.
    Signed,
    /// Included by the settlement chain.
    Included,
}

impl BatchStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::Signed => "signed",
            Self::Included => "included",
        }
    }
}

/// Stores a batch made from a block (status `proposed`).
pub async fn insert(
    conn: &mut PgConnection,
    id: u64,
    session: u64,
    block_height: u64,
    block_hash: &[u8; 32],
    encoded: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO batches (id, session, block_height, block_hash, encoded) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(to_i64(id))
    .bind(to_i64(session))
    .bind(to_i64(block_height))
    .bind(block_hash.as_slice())
    .bind(encoded)
    .execute(conn)
    .await?;
    Ok(())
}

/// A batch's status, if this processor has it.
pub async fn status(conn: &mut PgConnection, id: u64) -> Result<Option<BatchStatus>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM batches WHERE id = $1")
        .bind(to_i64(id))
        .fetch_optional(conn)
        .await
}

/// A stored batch: its encoding and status.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    /// Id.
    pub id: u64,
    /// Key session.
    pub session: u64,
    /// Encoded `Batch`.
    pub encoded: Vec<u8>,
    /// Status.
    pub status: BatchStatus,
    /// Signature, once signed.
    pub signature: Option<Vec<u8>>,
    /// Block.
    pub block_height: u64,
}

/// A `batches` row as [`lock`] and [`list`] read it.
#[derive(sqlx::FromRow)]
struct BatchRecord {
    id: i64,
    session: i64,
    encoded: Vec<u8>,
    status: BatchStatus,
    signature: Option<Vec<u8>>,
    block_height: i64,
}

impl From<BatchRecord> for StoredBatch {
    fn from(r: BatchRecord) -> Self {
        StoredBatch {
            id: to_u64(r.id),
            session: to_u64(r.session),
            encoded: r.encoded,
            status: r.status,
            signature: r.signature,
            block_height: to_u64(r.block_height),
        }
    }
}

/// Loads (and locks) a batch.
pub async fn lock(conn: &mut PgConnection, id: u64) -> Result<Option<StoredBatch>, sqlx::Error> {
    let row = sqlx::query_as::<_, BatchRecord>(
        "SELECT id, session, encoded, status, signature, block_height FROM batches WHERE id = $1 FOR NO KEY UPDATE",
    )
    .bind(to_i64(id))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(StoredBatch::from))
}

/// Every batch, newest last (admin API).
pub async fn list(pool: &PgPool, after: u64, limit: u32) -> Result<Vec<StoredBatch>, sqlx::Error> {
    let rows = sqlx::query_as::<_, BatchRecord>(
        "SELECT id, session, encoded, status, signature, block_height FROM batches
         WHERE id >= $1 ORDER BY id LIMIT $2",
    )
    .bind(to_i64(after))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(StoredBatch::from).collect())
}

/// Moves batches the settlement chain included from proposed or signed to
/// included; returns the ids that moved.
pub async fn set_included(conn: &mut PgConnection, ids: &[u64]) -> Result<Vec<u64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = ids.iter().map(|&i| to_i64(i)).collect();
    let moved: Vec<i64> = sqlx::query_scalar(
        "UPDATE batches SET status = 'included' WHERE id = ANY($1) AND status IN ('proposed', 'signed')
         RETURNING id",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(moved.into_iter().map(to_u64).collect())
}

/// A proposed batch is signed: its signature is stored.
pub async fn set_signed(
    conn: &mut PgConnection,
    id: u64,
    signature: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE batches SET status = 'signed', signature = $2 WHERE id = $1 AND status = 'proposed'")
        .bind(to_i64(id))
        .bind(signature)
        .execute(conn)
        .await?;
    Ok(())
}
