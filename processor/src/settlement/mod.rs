//! Settlement-chain blocks: what the processor keeps of them (db.rs owns
//! settlement_blocks and burns as received) and the limits on what a block
//! may carry. Taking a block in touches accounts, batches, burns and the
//! scanner's lock, so it lives with the message handlers
//! ([`crate::inbound`]), which depend on every module; nothing here depends
//! on another module, and every module may read the horizon.

pub mod db;

use crate::link::HandleError;

/// The uid of the acknowledgement of block `number`.
pub fn ack_uid(number: u64) -> String {
    format!("settlement-block-ack/{number}")
}

/// Longest burn id taken in (the coordinator refuses longer ones at
/// `SubmitBurn`): a block's size stays bounded by its burn count.
pub const MAX_BURN_ID_BYTES: usize = 128;
/// Longest address text taken in; Monero addresses are at most 106
/// characters (integrated).
pub const MAX_ADDRESS_BYTES: usize = 256;

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
