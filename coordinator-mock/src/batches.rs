//! Batch signing as the coordinator runs it: collect proposals and
//! preprocesses, choose the first t signers to preprocess, relay their
//! commitments and then their shares, verify the aggregated signature with
//! ed25519-dalek against the group key, include the batch in the next
//! settlement block. An attempt that stalls is abandoned and re-attempted
//! (attempt + 1, fresh nonces); whoever stays silent is simply not chosen.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message as _;
use proto::processor_v1::{
    BatchProposal, BatchSigned, CoordinatorMessage, SignBlame, SignId, SignKind, SignPreprocess,
    SignPreprocesses, SignReattempt, SignShare, SignShares, coordinator_message::Kind,
};
use sqlx::{PgConnection, PgPool, Row};
use tracing::{info, warn};

use processor::link::{self, HandleError, OutMessage};

fn out(uid: String, kind: &'static str, message: Kind) -> OutMessage {
    OutMessage {
        uid,
        kind,
        payload: CoordinatorMessage {
            kind: Some(message),
        }
        .encode_to_vec(),
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn batch_of(id: &SignId) -> Result<i64, HandleError> {
    if SignKind::try_from(id.kind) != Ok(SignKind::Batch) {
        return Err(HandleError::Rejected(
            "plan signing is not run by this coordinator version".into(),
        ));
    }
    let bytes: [u8; 8] = id
        .id
        .as_slice()
        .try_into()
        .map_err(|_| HandleError::Rejected("a batch id is 8 bytes".into()))?;
    Ok(i64_of(u64::from_be_bytes(bytes)))
}

/// The sender's index in the batch's key session, and the session's t.
async fn index_of(
    conn: &mut PgConnection,
    session: i64,
    processor: &str,
) -> Result<(i32, i32), HandleError> {
    let row = sqlx::query(
        "SELECT p.idx, s.threshold FROM keygen_participants p JOIN keygen_sessions s USING (session)
         WHERE p.session = $1 AND p.processor = $2",
    )
    .bind(session)
    .bind(processor)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| HandleError::Rejected(format!("{processor} holds no share of key {session}")))?;
    Ok((row.get(0), row.get(1)))
}

/// Link ids of the given indices of a session, sorted (lock order).
async fn links(
    conn: &mut PgConnection,
    session: i64,
    indices: Option<&[i32]>,
) -> Result<Vec<(i32, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT idx, processor FROM keygen_participants
         WHERE session = $1 AND ($2::int[] IS NULL OR idx = ANY($2)) ORDER BY processor",
    )
    .bind(session)
    .bind(indices.map(<[i32]>::to_vec))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn uid(what: &str, id: &SignId) -> String {
    format!(
        "{what}/{}/batch/{}/{}",
        id.session,
        hex::encode(&id.id),
        id.attempt
    )
}

/// `BatchProposal`: remember it (the first proposal defines the batch).
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

/// Locks an attempt (creating it), returning its status and signers.
async fn lock_attempt(
    conn: &mut PgConnection,
    batch: i64,
    attempt: i32,
) -> Result<Option<(String, Vec<i32>)>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM batches WHERE id = $1)")
        .bind(batch)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    sqlx::query("INSERT INTO sign_attempts (id, attempt) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(batch)
        .bind(attempt)
        .execute(&mut *conn)
        .await?;
    let row = sqlx::query(
        "SELECT status, signers FROM sign_attempts WHERE id = $1 AND attempt = $2 FOR NO KEY UPDATE",
    )
    .bind(batch)
    .bind(attempt)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some((row.get(0), row.get(1))))
}

/// A signing attempt as a message from `processor` refers to it.
struct Attempt {
    batch: i64,
    session: i64,
    index: i32,
    threshold: i32,
    attempt: i32,
    status: String,
    signers: Vec<i32>,
}

/// Checks a signing message's id and sender, and locks its attempt.
async fn open_attempt(
    conn: &mut PgConnection,
    processor: &str,
    id: Option<SignId>,
) -> Result<(SignId, Attempt), HandleError> {
    let id = id.ok_or_else(|| HandleError::Rejected("no sign id".into()))?;
    let batch = batch_of(&id)?;
    let session = i64_of(id.session);
    let (index, threshold) = index_of(conn, session, processor).await?;
    let attempt = i32::try_from(id.attempt).unwrap_or(i32::MAX);
    let (status, signers) = lock_attempt(conn, batch, attempt).await?.ok_or_else(|| {
        HandleError::Rejected(format!("signing message for unknown batch {batch}"))
    })?;
    Ok((
        id,
        Attempt {
            batch,
            session,
            index,
            threshold,
            attempt,
            status,
            signers,
        },
    ))
}

/// `SignPreprocess`: collect; the first t to arrive become the signers.
pub async fn preprocess(
    conn: &mut PgConnection,
    processor: &str,
    m: SignPreprocess,
) -> Result<(), HandleError> {
    let (id, a) = open_attempt(conn, processor, m.sign_id).await?;
    let Attempt {
        batch,
        session,
        index,
        threshold,
        attempt,
        status,
        ..
    } = a;
    sqlx::query("INSERT INTO sign_preprocesses (id, attempt, idx, preprocess) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(batch)
        .bind(attempt)
        .bind(index)
        .bind(&m.preprocess)
        .execute(&mut *conn)
        .await?;
    if status != "collecting" {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT idx, preprocess FROM sign_preprocesses WHERE id = $1 AND attempt = $2 ORDER BY received LIMIT $3",
    )
    .bind(batch)
    .bind(attempt)
    .bind(i64::from(threshold))
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() < usize::try_from(threshold).unwrap_or(usize::MAX) {
        return Ok(());
    }
    let chosen: HashMap<u32, Vec<u8>> = rows
        .iter()
        .map(|r| {
            (
                u32::try_from(r.get::<i32, _>(0)).unwrap_or(0),
                r.get::<Vec<u8>, _>(1),
            )
        })
        .collect();
    let signers: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    sqlx::query(
        "UPDATE sign_attempts SET status = 'sharing', signers = $3 WHERE id = $1 AND attempt = $2",
    )
    .bind(batch)
    .bind(attempt)
    .bind(&signers)
    .execute(&mut *conn)
    .await?;
    let message = Kind::SignPreprocesses(SignPreprocesses {
        sign_id: Some(id.clone()),
        preprocesses: chosen,
    });
    for (_, link_id) in links(conn, session, Some(&signers)).await? {
        link::enqueue(
            conn,
            &link_id,
            &[out(
                uid("sign-preprocesses", &id),
                "sign_preprocesses",
                message.clone(),
            )],
        )
        .await?;
    }
    info!(batch, attempt, ?signers, "batch signers chosen");
    Ok(())
}

/// `SignShare`: collect; when every signer's share is in, relay them.
pub async fn share(
    conn: &mut PgConnection,
    processor: &str,
    m: SignShare,
) -> Result<(), HandleError> {
    let (id, a) = open_attempt(conn, processor, m.sign_id).await?;
    let Attempt {
        batch,
        session,
        index,
        attempt,
        status,
        signers,
        ..
    } = a;
    if status != "sharing" || !signers.contains(&index) {
        return Ok(());
    }
    sqlx::query("INSERT INTO sign_shares (id, attempt, idx, share) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(batch)
        .bind(attempt)
        .bind(index)
        .bind(&m.share)
        .execute(&mut *conn)
        .await?;
    let rows = sqlx::query("SELECT idx, share FROM sign_shares WHERE id = $1 AND attempt = $2")
        .bind(batch)
        .bind(attempt)
        .fetch_all(&mut *conn)
        .await?;
    if rows.len() < signers.len() {
        return Ok(());
    }
    let shares: HashMap<u32, Vec<u8>> = rows
        .iter()
        .map(|r| {
            (
                u32::try_from(r.get::<i32, _>(0)).unwrap_or(0),
                r.get::<Vec<u8>, _>(1),
            )
        })
        .collect();
    sqlx::query("UPDATE sign_attempts SET status = 'aggregating' WHERE id = $1 AND attempt = $2")
        .bind(batch)
        .bind(attempt)
        .execute(&mut *conn)
        .await?;
    let message = Kind::SignShares(SignShares {
        sign_id: Some(id.clone()),
        shares,
    });
    for (_, link_id) in links(conn, session, Some(&signers)).await? {
        link::enqueue(
            conn,
            &link_id,
            &[out(uid("sign-shares", &id), "sign_shares", message.clone())],
        )
        .await?;
    }
    Ok(())
}

/// `SignBlame`: record it; the attempt will time out and be re-attempted.
pub async fn blame(
    conn: &mut PgConnection,
    processor: &str,
    m: SignBlame,
) -> Result<(), HandleError> {
    let id = m
        .sign_id
        .ok_or_else(|| HandleError::Rejected("no sign id".into()))?;
    let batch = batch_of(&id)?;
    let accused: String = sqlx::query_scalar(
        "SELECT processor FROM keygen_participants WHERE session = $1 AND idx = $2",
    )
    .bind(i64_of(id.session))
    .bind(i32::try_from(m.accused).unwrap_or(0))
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or_else(|| format!("participant {}", m.accused));
    warn!(batch, attempt = id.attempt, accuser = processor, %accused, "signer blamed: {}", m.reason);
    sqlx::query("INSERT INTO sign_blames (id, attempt, accuser, accused, reason) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
        .bind(batch)
        .bind(i32::try_from(id.attempt).unwrap_or(i32::MAX))
        .bind(processor)
        .bind(i32::try_from(m.accused).unwrap_or(0))
        .bind(&m.reason)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `BatchSigned`: verify with a standard Ed25519 verifier, then include.
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
        .map_err(|e| HandleError::Rejected(format!("group key: {e}")))?;
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
    sqlx::query("UPDATE sign_attempts SET status = 'done' WHERE id = $1 AND status <> 'abandoned'")
        .bind(i64_of(batch.id))
        .execute(&mut *conn)
        .await?;
    info!(
        batch = batch.id,
        block = batch.block_height,
        processor,
        "batch signature verified: included"
    );
    Ok(())
}

/// Abandons attempts older than `timeout` and asks every participant for
/// the next attempt. Returns how many it re-attempted.
pub async fn reattempt_stalled(pool: &PgPool, timeout: Duration) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT a.id, a.attempt, b.session FROM sign_attempts a JOIN batches b ON b.id = a.id
         WHERE a.status IN ('collecting', 'sharing', 'aggregating') AND b.status = 'proposed'
           AND a.started_at < now() - $1::interval
         FOR NO KEY UPDATE OF a SKIP LOCKED",
    )
    .bind(format!("{} milliseconds", timeout.as_millis()))
    .fetch_all(&mut *tx)
    .await?;
    let mut count = 0;
    for row in rows {
        let (batch, attempt, session): (i64, i32, i64) = (row.get(0), row.get(1), row.get(2));
        sqlx::query("UPDATE sign_attempts SET status = 'abandoned' WHERE id = $1 AND attempt = $2")
            .bind(batch)
            .bind(attempt)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sign_attempts (id, attempt) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(batch)
        .bind(attempt + 1)
        .execute(&mut *tx)
        .await?;
        let id = SignId {
            session: u64::try_from(session).unwrap_or(0),
            kind: SignKind::Batch.into(),
            id: u64::try_from(batch).unwrap_or(0).to_be_bytes().to_vec(),
            attempt: u32::try_from(attempt).unwrap_or(0),
        };
        let message = Kind::SignReattempt(SignReattempt {
            sign_id: Some(id.clone()),
        });
        for (_, link_id) in links(&mut tx, session, None).await? {
            link::enqueue(
                &mut tx,
                &link_id,
                &[out(
                    uid("sign-reattempt", &id),
                    "sign_reattempt",
                    message.clone(),
                )],
            )
            .await?;
        }
        warn!(batch, attempt, "signing attempt stalled; re-attempting");
        count += 1;
    }
    tx.commit().await?;
    Ok(count)
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
