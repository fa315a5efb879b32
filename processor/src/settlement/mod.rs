//! Settlement-chain blocks from the coordinator: taken in durably (with their
//! burns) and acknowledged with a `SettlementBlockAck`.

pub mod db;

use prost::Message as _;
use proto::processor_v1::{
    ProcessorMessage, SettlementBlock, SettlementBlockAck, processor_message,
};
use sqlx::PgConnection;

use crate::link::{self, HandleError, OutMessage};

/// The uid of the acknowledgement of block `number`.
pub fn ack_uid(number: u64) -> String {
    format!("settlement-block-ack/{number}")
}

/// Longest burn id taken in (the coordinator refuses longer ones at
/// `SubmitBurn`): a block's size stays bounded by its burn count.
pub const MAX_BURN_ID_BYTES: usize = 128;
/// Longest address text taken in; Monero addresses are at most 106
/// characters (integrated).
const MAX_ADDRESS_BYTES: usize = 256;

/// Refuses a peer's string that cannot be stored as it is: longer than
/// `max`, or holding NUL, which a Postgres TEXT column refuses (the insert
/// would fail and the message come back forever).
pub fn check_text(what: &str, text: &str, max: usize) -> Result<(), HandleError> {
    if text.len() > max {
        return Err(HandleError::Rejected(format!(
            "{what} is {} bytes, more than {max}",
            text.len()
        )));
    }
    if text.contains('\0') {
        return Err(HandleError::Rejected(format!(
            "{what} {text:?} contains a NUL character"
        )));
    }
    Ok(())
}

/// Stores `block` and enqueues its acknowledgement, in the caller's
/// transaction. A block number seen before is refused: the coordinator would
/// be rewriting history.
pub async fn take_in(
    conn: &mut PgConnection,
    link_id: &str,
    block: SettlementBlock,
) -> Result<(), HandleError> {
    // In one order with the scanner's block transactions: see
    // `lock_chain_order` (the batch-inclusion race).
    crate::scanner::db::lock_chain_order(&mut *conn).await?;
    if db::exists(conn, block.number).await? {
        return Err(HandleError::Rejected(format!(
            "settlement block {} was already taken in",
            block.number
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for burn in &block.burns {
        check_text("burn id", &burn.burn_id, MAX_BURN_ID_BYTES)?;
        check_text(
            &format!("burn {:?} address", burn.burn_id),
            &burn.monero_address,
            MAX_ADDRESS_BYTES,
        )?;
        if !seen.insert(burn.burn_id.as_str()) {
            return Err(HandleError::Rejected(format!(
                "settlement block {} lists burn {:?} twice",
                block.number, burn.burn_id
            )));
        }
        if i64::try_from(burn.amount).is_err() {
            return Err(HandleError::Rejected(format!(
                "burn {:?} amount {} exceeds the Monero supply",
                burn.burn_id, burn.amount
            )));
        }
    }
    if db::any_burn_exists(conn, &block.burns).await? {
        return Err(HandleError::Rejected(format!(
            "settlement block {} repeats a burn id already taken in",
            block.number
        )));
    }
    // The horizon and the accounts' activation heights are what make every
    // processor's reports a function of the chain: refuse a block that
    // would let one processor have scanned what another interprets anew.
    let previous = db::horizon(&mut *conn).await?;
    if let Some(previous) = previous
        && block.monero_horizon < previous
    {
        return Err(HandleError::Rejected(format!(
            "settlement block {} lowers the Monero horizon from {previous} to {}: the horizon never decreases",
            block.number, block.monero_horizon
        )));
    }
    for account in &block.accounts {
        if previous.is_some_and(|p| account.active_from <= p) {
            return Err(HandleError::Rejected(format!(
                "settlement block {} registers account {} from Monero block {}, at or below the horizon {} \
                 already given: processors may have scanned that block",
                block.number,
                account.account,
                account.active_from,
                previous.unwrap_or_default()
            )));
        }
    }
    for account in &block.accounts {
        crate::accounts::register(conn, account.account, account.active_from, block.number).await?;
    }
    let included =
        crate::batch::include(conn, link_id, block.number, &block.included_batch_ids).await?;
    db::insert(conn, &block, &included).await?;
    crate::scheduler::take_in_burns(conn, link_id, block.number).await?;
    let ack = ProcessorMessage {
        kind: Some(processor_message::Kind::SettlementBlockAck(
            SettlementBlockAck {
                number: block.number,
            },
        )),
    };
    link::enqueue(
        conn,
        link_id,
        &[OutMessage {
            uid: ack_uid(block.number),
            kind: "settlement_block_ack",
            payload: ack.encode_to_vec(),
        }],
    )
    .await?;
    Ok(())
}
