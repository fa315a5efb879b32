//! The simulated settlement chain: blocks sent to every processor, and their
//! acknowledgements.

pub mod db;

use proto::processor_v1::{SettlementBlock, coordinator_message::Kind};
use sqlx::{PgConnection, PgPool};

use link::HandleError;

use crate::common::{out, to_i64, to_u64};

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
    // Serializes producers so numbers are consecutive.
    let (number, previous) = db::next_block(&mut tx).await?;
    let monero_horizon = previous.map_or(0, to_u64).max(seen_horizon);
    db::insert_block(&mut tx, number, to_i64(monero_horizon)).await?;
    let active_from = monero_horizon.saturating_add(1);
    let accounts = db::take_accounts(&mut tx, number, to_i64(active_from)).await?;
    // Batches verified since the last block are included in this one.
    let included_batch_ids = crate::batches::take_for_block(&mut tx, number).await?;
    let burns = crate::payouts::take_for_block(&mut tx, number, max_burns).await?;
    let number = to_u64(number);
    let out = [out(
        block_uid(number),
        "settlement_block",
        Kind::SettlementBlock(SettlementBlock {
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
        }),
    )];
    // A fixed order of link locks keeps concurrent producers deadlock-free.
    let mut sorted: Vec<&String> = links.iter().collect();
    sorted.sort();
    for link_id in sorted {
        link::enqueue(&mut tx, link_id, &out).await?;
    }
    crate::keygen::activate(&mut tx, monero_horizon, links).await?;
    tx.commit().await?;
    Ok(Emitted {
        number,
        monero_horizon,
    })
}

/// Whether anything waits for the next settlement block to take effect (an
/// account registration, a key's activation).
pub async fn pending(pool: &PgPool) -> Result<bool, sqlx::Error> {
    Ok(db::accounts_pending(pool).await? || crate::keygen::db::activation_pending(pool).await?)
}

/// Records that `processor` took in block `number`.
pub async fn record_ack(
    conn: &mut PgConnection,
    processor: &str,
    number: u64,
) -> Result<(), HandleError> {
    let number = i64::try_from(number)
        .map_err(|_| HandleError::Rejected(format!("block number {number} out of range")))?;
    if !db::block_exists(conn, number).await? {
        return Err(HandleError::Rejected(format!(
            "acknowledgement of settlement block {number}, which this coordinator never produced"
        )));
    }
    if !db::insert_ack(conn, processor, number).await? {
        return Err(HandleError::Rejected(format!(
            "{processor} acknowledged settlement block {number} twice"
        )));
    }
    Ok(())
}
