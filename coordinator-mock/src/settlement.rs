//! The simulated settlement chain: blocks sent to every processor, and their
//! acknowledgements.

use prost::Message as _;
use proto::processor_v1::{CoordinatorMessage, SettlementBlock, coordinator_message};
use sqlx::{PgConnection, PgPool, Row};

use processor::link::{self, HandleError, OutMessage};

/// Advisory lock serializing settlement block production.
const SETTLEMENT_NUMBERING_LOCK: i64 = 0x5345_5454_4C45_0001;

/// The uid of settlement block `number` on a link.
pub fn block_uid(number: u64) -> String {
    format!("settlement-block/{number}")
}

/// Produces the next settlement block and enqueues it to every link in
/// `links` in one transaction. Returns its number.
pub async fn emit_block(pool: &PgPool, links: &[String]) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Serializes producers so numbers are consecutive. An advisory lock, not
    // a table lock: a table lock blocks the foreign-key checks of handlers
    // recording acknowledgements, which hold link rows we lock next.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SETTLEMENT_NUMBERING_LOCK)
        .execute(&mut *tx)
        .await?;
    let number: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(number) + 1, 0) FROM settlement_blocks")
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("INSERT INTO settlement_blocks (number) VALUES ($1)")
        .bind(number)
        .execute(&mut *tx)
        .await?;
    // Batches verified since the last block are included in this one.
    let included_batch_ids = crate::batches::take_for_block(&mut tx, number).await?;
    let burns = crate::payouts::take_for_block(&mut tx, number).await?;
    let number = u64::try_from(number).unwrap_or(0);
    let message = CoordinatorMessage {
        kind: Some(coordinator_message::Kind::SettlementBlock(
            SettlementBlock {
                number,
                included_batch_ids,
                burns,
            },
        )),
    };
    let out = [OutMessage {
        uid: block_uid(number),
        kind: "settlement_block",
        payload: message.encode_to_vec(),
    }];
    // A fixed order of link locks keeps concurrent producers deadlock-free.
    let mut sorted: Vec<&String> = links.iter().collect();
    sorted.sort();
    for link_id in sorted {
        link::enqueue(&mut tx, link_id, &out).await?;
    }
    tx.commit().await?;
    Ok(number)
}

/// Records that `processor` took in block `number`.
pub async fn record_ack(
    conn: &mut PgConnection,
    processor: &str,
    number: u64,
) -> Result<(), HandleError> {
    let number = i64::try_from(number)
        .map_err(|_| HandleError::Rejected(format!("block number {number} out of range")))?;
    let known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM settlement_blocks WHERE number = $1)")
            .bind(number)
            .fetch_one(&mut *conn)
            .await?;
    if !known {
        return Err(HandleError::Rejected(format!(
            "acknowledgement of settlement block {number}, which this coordinator never produced"
        )));
    }
    let inserted = sqlx::query(
        "INSERT INTO settlement_acks (processor, number) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(processor)
    .bind(number)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(HandleError::Rejected(format!(
            "{processor} acknowledged settlement block {number} twice"
        )));
    }
    Ok(())
}

/// The highest block number produced (-1: none).
pub async fn height(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(MAX(number), -1) FROM settlement_blocks")
        .fetch_one(pool)
        .await
}

/// The highest block each processor acknowledged (-1: none).
pub async fn acked_by(pool: &PgPool, processor: &str) -> Result<i64, sqlx::Error> {
    let row =
        sqlx::query("SELECT COALESCE(MAX(number), -1) FROM settlement_acks WHERE processor = $1")
            .bind(processor)
            .fetch_one(pool)
            .await?;
    Ok(row.get(0))
}
