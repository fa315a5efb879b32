//! Batches as the coordinator runs them: proposals, verification of the
//! aggregated signature with ed25519-dalek against the group key, and
//! inclusion in the next settlement block. The signing rounds themselves
//! are in [`crate::signing`].

use prost::Message as _;
use proto::processor_v1::{BatchProposal, BatchSigned};
use sqlx::{PgConnection, Row};
use tracing::{info, warn};

use link::HandleError;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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
    sqlx::query(
        "INSERT INTO batches (id, session, block_height, encoded) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
    )
    .bind(i64_of(batch.id))
    .bind(i64_of(batch.session))
    .bind(i64_of(batch.block_height))
    .bind(&encoded)
    .execute(&mut *conn)
    .await?;
    let first: Vec<u8> = sqlx::query_scalar("SELECT encoded FROM batches WHERE id = $1")
        .bind(i64_of(batch.id))
        .fetch_one(&mut *conn)
        .await?;
    if first != encoded {
        warn!(
            batch = batch.id,
            processor, "proposal differs from the first one received"
        );
    }
    sqlx::query("INSERT INTO batch_proposals (id, processor, encoded) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(i64_of(batch.id))
        .bind(processor)
        .bind(&encoded)
        .execute(&mut *conn)
        .await?;
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
) -> Result<(), HandleError> {
    let batch = m
        .batch
        .ok_or_else(|| HandleError::Rejected("no batch".into()))?;
    let encoded = batch.encode_to_vec();
    let row = sqlx::query(
        "SELECT b.encoded, b.status, s.group_key FROM batches b JOIN keygen_sessions s ON s.session = b.session WHERE b.id = $1 FOR NO KEY UPDATE OF b",
    )
    .bind(i64_of(batch.id))
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| HandleError::Rejected(format!("signed batch {} was never proposed", batch.id)))?;
    let stored: Vec<u8> = row.get(0);
    let status: String = row.get(1);
    let group_key: Option<Vec<u8>> = row.get(2);
    if stored != encoded {
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
    if status == "included" {
        return Ok(());
    }
    sqlx::query(
        "UPDATE batches SET status = 'included', signature = $2, included_at = now() WHERE id = $1",
    )
    .bind(i64_of(batch.id))
    .bind(signature.as_slice())
    .execute(&mut *conn)
    .await?;
    crate::signing::finish(
        conn,
        crate::signing::Procedure {
            kind: "batch",
            key: i64_of(batch.id),
        },
    )
    .await?;
    info!(
        batch = batch.id,
        block = batch.block_height,
        processor,
        "batch signature verified: included"
    );
    metrics::counter!(service::metrics::BATCHES_SIGNED).increment(1);
    Ok(())
}

/// Batches included but not yet in a settlement block: assigns them to
/// block `number` and returns their ids.
pub async fn take_for_block(conn: &mut PgConnection, number: i64) -> Result<Vec<u64>, sqlx::Error> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "UPDATE batches SET settlement_block = $1 WHERE status = 'included' AND settlement_block IS NULL RETURNING id",
    )
    .bind(number)
    .fetch_all(conn)
    .await?;
    let mut ids: Vec<u64> = ids
        .into_iter()
        .filter_map(|i| u64::try_from(i).ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}
