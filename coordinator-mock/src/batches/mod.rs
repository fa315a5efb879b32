//! Batches as the coordinator runs them: proposals, verification of the
//! aggregated signature with ed25519-dalek against the group key, and
//! inclusion in the next settlement block. The signing rounds themselves
//! are in [`crate::signing`], which [`crate::dispatch`] tells when a batch
//! is included.

pub mod db;

use prost::Message as _;
use proto::processor_v1::{BatchProposal, BatchSigned};
use sqlx::PgConnection;
use tracing::{info, warn};

use link::HandleError;

use crate::common::{to_i64, to_u64};
use db::BatchStatus;

/// What a verified `BatchSigned` changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// The batch is included now: its signing is over.
    Included(i64),
    /// It was included before.
    AlreadyIncluded,
}

/// `BatchProposal`: remember it (the first proposal defines the batch).
#[tracing::instrument(name = "batch.proposal", skip_all, fields(processor = %processor, batch = m.batch.as_ref().map(|b| b.id)))]
pub async fn proposal(
    conn: &mut PgConnection,
    processor: &str,
    m: BatchProposal,
) -> Result<(), HandleError> {
    let batch = m
        .batch
        .ok_or_else(|| HandleError::Rejected("proposal without a batch".into()))?;
    let encoded = batch.encode_to_vec();
    let first = db::insert(
        conn,
        to_i64(batch.id),
        to_i64(batch.session),
        to_i64(batch.block_height),
        &encoded,
    )
    .await?;
    if first != encoded {
        warn!(
            batch = batch.id,
            processor, "proposal differs from the first one received"
        );
    }
    db::insert_proposal(conn, to_i64(batch.id), processor, &encoded).await?;
    info!(
        batch = batch.id,
        block = batch.block_height,
        deposits = batch.instructions.len(),
        processor,
        "batch proposed"
    );
    Ok(())
}

/// `BatchSigned`: verify with a standard Ed25519 verifier, then include.
#[tracing::instrument(name = "batch.signed", skip_all, fields(processor = %processor, batch = m.batch.as_ref().map(|b| b.id)))]
pub async fn signed(
    conn: &mut PgConnection,
    processor: &str,
    m: BatchSigned,
) -> Result<Signed, HandleError> {
    let batch = m
        .batch
        .ok_or_else(|| HandleError::Rejected("no batch".into()))?;
    let encoded = batch.encode_to_vec();
    let id = to_i64(batch.id);
    let stored = db::lock(conn, id).await?.ok_or_else(|| {
        HandleError::Rejected(format!("signed batch {} was never proposed", batch.id))
    })?;
    let group_key = crate::keygen::db::group_key(conn, stored.session).await?;
    if stored.encoded != encoded {
        return Err(HandleError::Rejected(format!(
            "{processor} signed a batch {} other than the one proposed",
            batch.id
        )));
    }
    let key: [u8; 32] = group_key
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| HandleError::Rejected(format!("key {} is not confirmed", batch.session)))?;
    let signature: [u8; 64] = m
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| HandleError::Rejected("a signature is 64 bytes".into()))?;
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&key)
        // The confirmed group key is our own stored row: a local fault.
        .map_err(|e| HandleError::Local(format!("stored group key: {e}")))?;
    verifying
        .verify_strict(
            &processor::batch::message(&encoded),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .map_err(|e| {
            HandleError::Rejected(format!(
                "{processor}'s signature on batch {} does not verify: {e}",
                batch.id
            ))
        })?;
    if stored.status == BatchStatus::Included {
        return Ok(Signed::AlreadyIncluded);
    }
    db::include(conn, id, signature.as_slice()).await?;
    info!(
        batch = batch.id,
        block = batch.block_height,
        processor,
        "batch signature verified: included"
    );
    metrics::counter!(service::metrics::BATCHES_SIGNED).increment(1);
    Ok(Signed::Included(id))
}

/// Batches included but not yet in a settlement block: assigns them to
/// block `number` and returns their ids.
pub async fn take_for_block(conn: &mut PgConnection, number: i64) -> Result<Vec<u64>, sqlx::Error> {
    let mut ids: Vec<u64> = db::take_for_block(conn, number)
        .await?
        .into_iter()
        .map(to_u64)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}
