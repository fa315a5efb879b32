//! Signing procedures (batches, FROST Ed25519) as the coordinator runs them:
//! preprocess -> the chosen signers' commitments -> share -> everyone's
//! shares -> aggregate. An attempt is recorded in Postgres in the same
//! transaction as the preprocess that leaves for it, and its nonces live only
//! in the keystore's memory: after a restart an earlier attempt is never
//! signed; the coordinator's re-attempt (attempt + 1) brings fresh nonces.

pub mod db;
pub mod plan;

use std::collections::{BTreeMap, HashMap};

use prost::Message as _;
use proto::processor_v1::{
    BatchSigned, Fault, ProcessorMessage, SignBlame, SignId, SignKind, SignPreprocess,
    SignPreprocesses, SignReattempt, SignShare, SignShares, processor_message::Kind,
};
use sqlx::PgConnection;
use tracing::{info, warn};

use crate::batch;
use crate::keystore::Keystore;
use crate::keystore::sign::{AttemptKey, SignError, aggregate};
use crate::link::{self, HandleError, OutMessage};

fn kind_name(id: &SignId) -> &'static str {
    match SignKind::try_from(id.kind) {
        Ok(SignKind::Batch) => "batch",
        Ok(SignKind::Plan) => "plan",
        _ => "unknown",
    }
}

fn uid(what: &str, id: &SignId) -> String {
    format!(
        "{what}/{}/{}/{}/{}",
        id.session,
        kind_name(id),
        hex::encode(&id.id),
        id.attempt
    )
}

fn attempt_key(id: &SignId) -> AttemptKey {
    (
        id.session,
        kind_name(id).to_owned(),
        id.id.clone(),
        id.attempt,
    )
}

fn out(uid: String, kind: &'static str, message: Kind) -> OutMessage {
    OutMessage {
        uid,
        kind,
        payload: ProcessorMessage {
            kind: Some(message),
        }
        .encode_to_vec(),
    }
}

/// The session's key as stored: our index, sealed key package, public package.
async fn key(
    conn: &mut PgConnection,
    session: u64,
) -> Result<(u16, Vec<u8>, Vec<u8>), HandleError> {
    crate::keygen::db::confirmed_packages(conn, session)
        .await?
        .ok_or_else(|| HandleError::Rejected(format!("no confirmed key for session {session}")))
}

/// The row of an attempt in `sign_attempts`.
fn attempt_row(id: &SignId) -> db::Attempt<'_> {
    db::Attempt {
        session: id.session,
        kind: kind_name(id),
        id: &id.id,
        attempt: id.attempt,
    }
}

fn is_plan(id: &SignId) -> bool {
    SignKind::try_from(id.kind) == Ok(SignKind::Plan)
}

fn batch_id(id: &SignId) -> Result<u64, HandleError> {
    if SignKind::try_from(id.kind) != Ok(SignKind::Batch) {
        return Err(HandleError::Rejected(format!(
            "{} signing is not supported by this processor version",
            kind_name(id)
        )));
    }
    let bytes: [u8; 8] = id
        .id
        .as_slice()
        .try_into()
        .map_err(|_| HandleError::Rejected("a batch id is 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Loads (and locks) the batch a batch `SignId` names, checking that the
/// sign id's session is the batch's own key. `Ok(None)`: no such batch here,
/// or a sign id for another key, which is refused with a `Fault` back (the
/// coordinator named the wrong key; signing under it would put another
/// key's signature on this batch).
async fn batch_for(
    conn: &mut PgConnection,
    link_id: &str,
    id: &SignId,
) -> Result<Option<batch::StoredBatch>, HandleError> {
    let batch_id = batch_id(id)?;
    let Some(batch) = batch::lock(conn, batch_id).await? else {
        return Err(HandleError::Rejected(format!("no batch {batch_id} here")));
    };
    if batch.session == id.session {
        return Ok(Some(batch));
    }
    let reason = format!(
        "sign id {} names key session {} for batch {batch_id}, which belongs to key session {}: refused, \
         a batch is signed only by its own key",
        uid("sign", id),
        id.session,
        batch.session
    );
    warn!(batch = batch_id, "{reason}");
    link::enqueue(
        conn,
        link_id,
        &[out(
            uid("sign-refused", id),
            "fault",
            Kind::Fault(Fault {
                session: id.session,
                // 0: no participant; the coordinator's request is at fault.
                accused: 0,
                kind: "sign-id-refused".into(),
                detail: reason,
                subject: id.id.clone(),
            }),
        )],
    )
    .await?;
    Ok(None)
}

fn keystore_failure(e: SignError) -> HandleError {
    match e {
        SignError::Keystore(crate::keystore::KeystoreError::Storage(e)) => HandleError::Storage(e),
        // Our own sealed key package: this side's fault, retried.
        SignError::Keystore(e) => HandleError::Local(e.to_string()),
        other => HandleError::Rejected(other.to_string()),
    }
}

/// Begins an attempt: records it, makes nonces, sends the commitments. An
/// attempt already begun is not begun again (no second preprocess, ever).
#[tracing::instrument(name = "sign.begin", skip_all, fields(kind = kind_name(id), session = id.session, attempt = id.attempt))]
pub async fn begin(
    conn: &mut PgConnection,
    keystore: &Keystore,
    link_id: &str,
    id: &SignId,
) -> Result<(), HandleError> {
    if !db::record(conn, attempt_row(id)).await? {
        return Ok(());
    }
    metrics::counter!(crate::metrics::SIGN_PREPROCESSES, "kind" => kind_name(id)).increment(1);
    if is_plan(id) {
        return plan::preprocess(conn, keystore, link_id, id).await;
    }
    let (_, sealed, _) = key(conn, id.session).await?;
    let commitments = keystore
        .preprocess(attempt_key(id), id.session, &sealed)
        .map_err(keystore_failure)?;
    link::enqueue(
        conn,
        link_id,
        &[out(
            uid("sign-preprocess", id),
            "sign_preprocess",
            Kind::SignPreprocess(SignPreprocess {
                sign_id: Some(id.clone()),
                preprocess: commitments,
            }),
        )],
    )
    .await?;
    Ok(())
}

/// Sends a blame with the evidence the coordinator (or anyone) needs to
/// check it: the chosen signers' preprocesses as relayed, and the accused's
/// share when a share is at fault.
async fn blame(
    conn: &mut PgConnection,
    link_id: &str,
    id: &SignId,
    accused: u16,
    reason: String,
    preprocesses: &HashMap<u32, Vec<u8>>,
    shares: Option<&HashMap<u32, Vec<u8>>>,
) -> Result<(), HandleError> {
    warn!(attempt = id.attempt, accused, "signer blamed: {reason}");
    let accused_share = shares
        .and_then(|s| s.get(&u32::from(accused)))
        .cloned()
        .unwrap_or_default();
    link::enqueue(
        conn,
        link_id,
        &[out(
            uid("sign-blame", id),
            "sign_blame",
            Kind::SignBlame(SignBlame {
                sign_id: Some(id.clone()),
                accused: u32::from(accused),
                reason,
                accused_share,
                preprocesses: preprocesses.clone(),
            }),
        )],
    )
    .await?;
    Ok(())
}

fn indexed(map: &HashMap<u32, Vec<u8>>) -> BTreeMap<u16, Vec<u8>> {
    map.iter()
        .filter_map(|(&i, b)| Some((u16::try_from(i).ok()?, b.clone())))
        .collect()
}

/// `SignPreprocesses`: if chosen, sign with this attempt's nonces.
pub async fn preprocesses(
    conn: &mut PgConnection,
    keystore: &Keystore,
    link_id: &str,
    m: SignPreprocesses,
) -> Result<(), HandleError> {
    let id = m
        .sign_id
        .clone()
        .ok_or_else(|| HandleError::Rejected("no sign id".into()))?;
    if is_plan(&id) {
        return plan::preprocesses(conn, keystore, link_id, id, m).await;
    }
    let batch_id = batch_id(&id)?;
    let Some(batch) = batch_for(conn, link_id, &id).await? else {
        return Ok(());
    };
    let (own, sealed, _) = key(conn, id.session).await?;
    let commitments = indexed(&m.preprocesses);
    if !commitments.contains_key(&own) {
        // Not chosen: this attempt's nonces will never sign.
        keystore.abandon_attempt(&attempt_key(&id));
        return Ok(());
    }
    if batch.status != batch::BatchStatus::Proposed {
        keystore.forget_signing(id.session, kind_name(&id), &id.id);
        return Ok(());
    }
    db::choose(conn, attempt_row(&id), &m.encode_to_vec()).await?;
    // Fault injection for crash tests: stop here, chosen but not yet
    // signed, as a process killed at this point would.
    if crate::failpoint::eval("signer-before-share", |_| ()).is_some() {
        warn!(
            batch = batch_id,
            attempt = id.attempt,
            "fault injection: holding the share back"
        );
        std::future::pending::<()>().await;
    }
    let outcome = keystore.sign(
        &attempt_key(&id),
        id.session,
        &sealed,
        &commitments,
        &batch::message(&batch.encoded),
    );
    // Fault injection for blame tests: send an invalid share.
    let outcome = match outcome {
        Ok(Some(mut share)) if crate::failpoint::eval("signer-corrupt-share", |_| ()).is_some() => {
            warn!(
                batch = batch_id,
                "fault injection: sending an invalid share"
            );
            if let Some(byte) = share.first_mut() {
                *byte ^= 1;
            }
            Ok(Some(share))
        }
        other => other,
    };
    send_share(conn, link_id, &id, outcome, &m.preprocesses).await
}

/// Sends what making a share for `id` gave: the share; nothing, when the
/// nonces are gone (the attempt began before a restart: a re-attempt will
/// come); or a blame of the signer whose preprocess was bad.
async fn send_share(
    conn: &mut PgConnection,
    link_id: &str,
    id: &SignId,
    outcome: Result<Option<Vec<u8>>, SignError>,
    preprocesses: &HashMap<u32, Vec<u8>>,
) -> Result<(), HandleError> {
    match outcome {
        Ok(Some(share)) => {
            metrics::counter!(crate::metrics::SIGN_SHARES, "kind" => kind_name(id)).increment(1);
            link::enqueue(
                conn,
                link_id,
                &[out(
                    uid("sign-share", id),
                    "sign_share",
                    Kind::SignShare(SignShare {
                        sign_id: Some(id.clone()),
                        share,
                    }),
                )],
            )
            .await?;
            Ok(())
        }
        Ok(None) => {
            warn!(
                kind = kind_name(id),
                id = %hex::encode(&id.id),
                attempt = id.attempt,
                "no nonces for this attempt (begun before a restart): not signing, waiting for a re-attempt"
            );
            Ok(())
        }
        Err(SignError::Blame { accused, reason }) => {
            blame(conn, link_id, id, accused, reason, preprocesses, None).await
        }
        Err(e) => Err(keystore_failure(e)),
    }
}

/// `SignShares`: aggregate, check, and report the signed batch.
pub async fn shares(
    conn: &mut PgConnection,
    keystore: &Keystore,
    link_id: &str,
    m: SignShares,
) -> Result<(), HandleError> {
    let id = m
        .sign_id
        .clone()
        .ok_or_else(|| HandleError::Rejected("no sign id".into()))?;
    if is_plan(&id) {
        return plan::shares(conn, keystore, link_id, id, m).await;
    }
    let batch_id = batch_id(&id)?;
    let Some(batch) = batch_for(conn, link_id, &id).await? else {
        return Ok(());
    };
    let (own, _, public) = key(conn, id.session).await?;
    if batch.status != batch::BatchStatus::Proposed {
        keystore.forget_signing(id.session, kind_name(&id), &id.id);
        return Ok(());
    }
    let Some(Some(stored)) = db::commitments(conn, attempt_row(&id)).await? else {
        // Not a signer of this attempt.
        return Ok(());
    };
    let chosen = SignPreprocesses::decode(stored.as_slice())
        .map_err(|e| HandleError::Local(format!("stored commitments: {e}")))?;
    let commitments = indexed(&chosen.preprocesses);
    match aggregate(
        &public,
        &commitments,
        &indexed(&m.shares),
        &batch::message(&batch.encoded),
    ) {
        Ok(signature) => {
            keystore.forget_signing(id.session, kind_name(&id), &id.id);
            batch::db::set_signed(conn, batch_id, signature.as_slice()).await?;
            let decoded = proto::processor_v1::Batch::decode(batch.encoded.as_slice())
                .map_err(|e| HandleError::Local(format!("stored batch: {e}")))?;
            link::enqueue(
                conn,
                link_id,
                &[out(
                    format!("batch-signed/{batch_id}"),
                    "batch_signed",
                    Kind::BatchSigned(BatchSigned {
                        batch: Some(decoded),
                        signature: signature.to_vec(),
                    }),
                )],
            )
            .await?;
            info!(
                batch = batch_id,
                block = batch.block_height,
                attempt = id.attempt,
                "batch signed"
            );
            // Fault injection for blame tests: accuse another signer whose
            // share was valid (a false accusation, with true evidence).
            if crate::failpoint::eval("signer-false-blame", |_| ()).is_some()
                && let Some(&victim) = commitments.keys().find(|&&i| i != own)
            {
                warn!(victim, "fault injection: falsely blaming a signer");
                blame(
                    conn,
                    link_id,
                    &id,
                    victim,
                    "fault injection: a false accusation".into(),
                    &chosen.preprocesses,
                    Some(&m.shares),
                )
                .await?;
            }
            Ok(())
        }
        Err(SignError::Blame { accused, reason }) => {
            blame(
                conn,
                link_id,
                &id,
                accused,
                reason,
                &chosen.preprocesses,
                Some(&m.shares),
            )
            .await
        }
        Err(e) => Err(keystore_failure(e)),
    }
}

/// `SignReattempt`: begin the next attempt with fresh nonces.
pub async fn reattempt(
    conn: &mut PgConnection,
    keystore: &Keystore,
    link_id: &str,
    m: SignReattempt,
) -> Result<(), HandleError> {
    let id = m
        .sign_id
        .ok_or_else(|| HandleError::Rejected("no sign id".into()))?;
    // The abandoned attempt (and any before it) never signs: drop its state.
    keystore.abandon_attempt(&attempt_key(&id));
    if is_plan(&id) {
        if !plan::still_signing(conn, &id).await? {
            keystore.forget_signing(id.session, kind_name(&id), &id.id);
            return Ok(());
        }
        let next = SignId {
            attempt: id.attempt + 1,
            ..id
        };
        info!(plan = %hex::encode(&next.id), attempt = next.attempt, "re-attempting plan signing");
        return begin(conn, keystore, link_id, &next).await;
    }
    let batch_id = batch_id(&id)?;
    let Some(batch) = batch_for(conn, link_id, &id).await? else {
        return Ok(());
    };
    if batch.status != batch::BatchStatus::Proposed {
        keystore.forget_signing(id.session, kind_name(&id), &id.id);
        return Ok(());
    }
    let next = SignId {
        attempt: id.attempt + 1,
        ..id
    };
    info!(
        batch = batch_id,
        attempt = next.attempt,
        "re-attempting signing"
    );
    begin(conn, keystore, link_id, &next).await
}
