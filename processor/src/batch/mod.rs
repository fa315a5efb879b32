//! Batches: the deposits of one finalized block, as in-instructions for the
//! settlement chain, signed by the group through the coordinator.

use prost::Message as _;
use proto::processor_v1::{
    Batch, BatchProposal, Fault, InInstruction, ProcessorMessage, SignId, SignKind,
    processor_message::Kind,
};
use sqlx::PgConnection;

use crate::link::{self, HandleError, OutMessage};

pub mod db;

pub use db::{BatchStatus, StoredBatch, list, lock};

/// Domain separation of what the group signs for a batch.
pub const BATCH_DOMAIN: &[u8] = b"monero-custody/batch/v1";

/// The bytes the group signs for a batch's encoding.
pub fn message(encoded: &[u8]) -> Vec<u8> {
    [BATCH_DOMAIN, encoded].concat()
}

/// The signing id of a batch's attempt.
pub fn sign_id(session: u64, id: u64, attempt: u32) -> SignId {
    SignId {
        session,
        kind: SignKind::Batch.into(),
        id: id.to_be_bytes().to_vec(),
        attempt,
    }
}

/// Bits of a batch id that hold the block height: ids are
/// `session * 2^48 + block height`, derived from the chain so that every
/// processor names a batch alike (Monero will not reach 2^48 blocks).
pub const HEIGHT_BITS: u32 = 48;

/// The id of the batch of key `session` for Monero block `block_height`.
pub fn batch_id(session: u64, block_height: u64) -> u64 {
    (session << HEIGHT_BITS) | (block_height & ((1 << HEIGHT_BITS) - 1))
}

/// The (session, block height) a batch id names.
pub fn batch_parts(id: u64) -> (u64, u64) {
    (id >> HEIGHT_BITS, id & ((1 << HEIGHT_BITS) - 1))
}

/// A deposit as a batch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    /// Transaction hash.
    pub tx_hash: [u8; 32],
    /// Index in the transaction.
    pub index_in_tx: u64,
    /// Account credited (0: the main address, unattributed).
    pub account: u32,
    /// Amount, atomic units.
    pub amount: u64,
}

/// An output's id: transaction hash, then its index (4 bytes, little endian).
pub fn output_id(tx_hash: &[u8; 32], index: u64) -> Vec<u8> {
    let mut id = tx_hash.to_vec();
    id.extend_from_slice(&u32::try_from(index).unwrap_or(u32::MAX).to_le_bytes());
    id
}

/// Builds, stores and proposes the batch of a block with deposits. Runs in
/// the scanner's transaction. Returns the sign id of its first signing
/// attempt, for the caller to begin in the same transaction (signing is the
/// signer's, which depends on batches, not the other way round); `None` if
/// the settlement chain included it already.
#[tracing::instrument(name = "batch.create", skip_all, fields(session = session, block = block_height))]
pub async fn create(
    conn: &mut PgConnection,
    link_id: &str,
    session: u64,
    block_height: u64,
    block_hash: &[u8; 32],
    deposits: &[Deposit],
) -> Result<Option<SignId>, HandleError> {
    let id = batch_id(session, block_height);
    let batch = Batch {
        id,
        session,
        block_height,
        block_hash: block_hash.to_vec(),
        instructions: deposits
            .iter()
            .map(|d| InInstruction {
                account: d.account,
                amount: d.amount,
                output_id: output_id(&d.tx_hash, d.index_in_tx),
            })
            .collect(),
    };
    let encoded = batch.encode_to_vec();
    db::insert(conn, id, session, block_height, block_hash, &encoded).await?;
    // The other processors may have signed it, and the settlement chain
    // included it, before this processor's scanner got here.
    if crate::settlement::db::includes_batch(conn, id).await? {
        mark_included(conn, &[id]).await?;
        return Ok(None);
    }
    let proposal = ProcessorMessage {
        kind: Some(Kind::BatchProposal(BatchProposal { batch: Some(batch) })),
    };
    link::enqueue(
        conn,
        link_id,
        &[OutMessage {
            uid: format!("batch-proposal/{id}"),
            kind: "batch_proposal",
            payload: proposal.encode_to_vec(),
        }],
    )
    .await?;
    Ok(Some(sign_id(session, id, 0)))
}

/// Marks batches the settlement chain included: each moves from proposed or
/// signed to included, and its outputs from received to included (only
/// those: a reserved or spent output never moves back). Returns the ids that
/// moved.
pub async fn mark_included(conn: &mut PgConnection, ids: &[u64]) -> Result<Vec<u64>, sqlx::Error> {
    let moved = db::set_included(conn, ids).await?;
    crate::scanner::db::include_outputs_of(conn, &moved).await?;
    Ok(moved)
}

/// A settlement block's `included_batch_ids`, checked against this
/// processor's books. A batch this processor has is included (once: a
/// second inclusion changes nothing); one for a block it has not scanned
/// yet is accepted, to be included when the scanner gets there. A batch it
/// already had included, or one for a block it scanned and found no such
/// batch in, is refused: a `Fault` says why, and the rest of the block is
/// taken in. Returns the ids accepted.
pub async fn include(
    conn: &mut PgConnection,
    link_id: &str,
    settlement_block: u64,
    ids: &[u64],
) -> Result<Vec<u64>, HandleError> {
    let next_height = crate::scanner::db::next_height(&mut *conn).await?;
    let mut accepted = Vec::new();
    let mut refusals = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut unknown = false;
    for &id in ids {
        let (session, height) = batch_parts(id);
        if !seen.insert(id) {
            refusals.push((
                id,
                format!("batch {id} is listed twice in settlement block {settlement_block}"),
            ));
            continue;
        }
        let status = db::status(conn, id).await?;
        let earlier = crate::settlement::db::includes_batch(conn, id).await?;
        match status {
            _ if earlier => refusals.push((
                id,
                format!("batch {id} (key {session}, block {height}) was already included by an earlier settlement block"),
            )),
            Some(BatchStatus::Included) => refusals.push((
                id,
                format!("batch {id} (key {session}, block {height}) is already included"),
            )),
            Some(_) => accepted.push(id),
            None if next_height.is_some_and(|next| height < next) => refusals.push((
                id,
                format!(
                    "batch {id} is unknown: this processor scanned block {height} and found no deposits \
                     of key {session} in it"
                ),
            )),
            // Not scanned yet: the batch is marked when it is made.
            None => {
                unknown = true;
                accepted.push(id);
            }
        }
    }
    let moved = mark_included(conn, &accepted).await?;
    tracing::debug!(?moved, "batches included");
    // Fault injection for the batch-inclusion race test: this transaction,
    // having accepted a batch this processor does not have yet, stays open
    // (`return(ms)`) while the scanner makes that batch.
    if unknown
        && let Some(ms) = crate::failpoint::eval("settlement-slow-unknown-batch", |arg| {
            arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(1_000)
        })
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    for (id, reason) in refusals {
        tracing::warn!(batch = id, settlement_block, "inclusion refused: {reason}");
        let (session, _) = batch_parts(id);
        link::enqueue(
            conn,
            link_id,
            &[OutMessage {
                uid: format!("inclusion-refused/{settlement_block}/{id}"),
                kind: "fault",
                payload: ProcessorMessage {
                    kind: Some(Kind::Fault(Fault {
                        session,
                        // 0: no participant; the settlement chain's block is at fault.
                        accused: 0,
                        kind: "inclusion-refused".into(),
                        detail: format!("settlement block {settlement_block}: {reason}"),
                        subject: id.to_be_bytes().to_vec(),
                    })),
                }
                .encode_to_vec(),
            }],
        )
        .await?;
    }
    Ok(accepted)
}
