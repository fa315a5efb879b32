//! The simulated settlement chain: blocks sent to every processor, and their
//! acknowledgements.

use prost::Message as _;
use proto::processor_v1::{CoordinatorMessage, SettlementBlock, coordinator_message};
use sqlx::{PgConnection, PgPool, Row};

use link::{HandleError, OutMessage};

/// Advisory lock serializing settlement block production.
const SETTLEMENT_NUMBERING_LOCK: i64 = 0x5345_5454_4C45_0001;

/// The uid of settlement block `number` on a link.
pub fn block_uid(number: u64) -> String {
    format!("settlement-block/{number}")
}

/// A settlement block as produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emitted {
    /// Its number.
    pub number: u64,
    /// Its Monero horizon.
    pub monero_horizon: u64,
}

/// Produces the next settlement block and enqueues it to every link in
/// `links` in one transaction: the batches included since the last block,
/// the burns submitted (the oldest `max_burns` of them; the rest wait for
/// the next block, so a block stays far below the link's payload limit),
/// the accounts waiting for registration (credited from
/// `monero_horizon + 1`), and the Monero horizon itself (`seen_horizon`,
/// never lower than the last block's). Keys confirmed since the last block
/// get their activation height here, and their `KeyConfirmed` follows the
/// block on every participant's link.
pub async fn emit_block(
    pool: &PgPool,
    links: &[String],
    seen_horizon: u64,
    max_burns: usize,
) -> Result<Emitted, sqlx::Error> {
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
    let previous: Option<i64> =
        sqlx::query_scalar("SELECT max(monero_horizon) FROM settlement_blocks")
            .fetch_one(&mut *tx)
            .await?;
    let monero_horizon = previous
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(0)
        .max(seen_horizon);
    let horizon_i64 = i64::try_from(monero_horizon).unwrap_or(i64::MAX);
    sqlx::query("INSERT INTO settlement_blocks (number, monero_horizon) VALUES ($1, $2)")
        .bind(number)
        .bind(horizon_i64)
        .execute(&mut *tx)
        .await?;
    let active_from = monero_horizon.saturating_add(1);
    let mut accounts: Vec<i32> = sqlx::query_scalar(
        "UPDATE accounts SET settlement_block = $1, active_from = $2
         WHERE settlement_block IS NULL RETURNING account",
    )
    .bind(number)
    .bind(i64::try_from(active_from).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await?;
    accounts.sort_unstable();
    // Batches verified since the last block are included in this one.
    let included_batch_ids = crate::batches::take_for_block(&mut tx, number).await?;
    let burns = crate::payouts::take_for_block(&mut tx, number, max_burns).await?;
    let number = u64::try_from(number).unwrap_or(0);
    let message = CoordinatorMessage {
        kind: Some(coordinator_message::Kind::SettlementBlock(
            SettlementBlock {
                number,
                included_batch_ids,
                burns,
                monero_horizon,
                accounts: accounts
                    .into_iter()
                    .filter_map(|a| u32::try_from(a).ok())
                    .map(|account| proto::processor_v1::RegisterAccount {
                        account,
                        active_from,
                    })
                    .collect(),
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
    crate::keygen::activate(&mut tx, monero_horizon).await?;
    tx.commit().await?;
    Ok(Emitted {
        number,
        monero_horizon,
    })
}

/// Whether anything waits for the next settlement block to take effect (an
/// account registration, a key's activation).
pub async fn pending(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let accounts: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE settlement_block IS NULL)")
            .fetch_one(pool)
            .await?;
    Ok(accounts || crate::keygen::activation_pending(pool).await?)
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
