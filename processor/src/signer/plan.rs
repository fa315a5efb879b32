//! Plan signing (FROST-CLSAG): the same rounds as batches, with
//! monero-wallet's transaction machines in the keystore. The result is a
//! complete Monero transaction, stored for the scheduler to publish.

use std::collections::HashMap;

use prost::Message as _;
use proto::processor_v1::{SignId, SignPreprocesses, SignShares};
use sqlx::PgConnection;
use tracing::{info, warn};

use super::{attempt_key, blame, indexed, key, keystore_failure, out, send_share, uid};
use crate::keystore::Keystore;
use crate::keystore::clsag::KeyShape;
use crate::keystore::sign::SignError;
use crate::link::{self, HandleError};
use crate::scheduler::db as sched;
use monero_wallet::send::SignableTransaction;
use proto::processor_v1::{SignPreprocess, processor_message::Kind};

async fn shape(conn: &mut PgConnection, session: u64) -> Result<KeyShape, HandleError> {
    let (threshold, n, own_index) = crate::keygen::db::shape(conn, session).await?;
    Ok(KeyShape {
        threshold,
        n,
        own_index,
    })
}

/// The row of a plan attempt in `sign_attempts`.
fn attempt_row(id: &SignId) -> super::db::Attempt<'_> {
    super::db::Attempt {
        session: id.session,
        kind: "plan",
        id: &id.id,
        attempt: id.attempt,
    }
}

/// The plan being signed, if it still is.
async fn signing(
    conn: &mut PgConnection,
    id: &SignId,
) -> Result<Option<sched::StoredPlan>, HandleError> {
    let plan = sched::lock_plan(conn, &id.id).await?;
    Ok(plan.filter(|p| p.status == sched::PlanStatus::Signing))
}

/// Makes this signer's preprocess for a recorded attempt and sends it.
pub async fn preprocess(
    conn: &mut PgConnection,
    keystore: &Keystore,
    link_id: &str,
    id: &SignId,
) -> Result<(), HandleError> {
    let Some(plan) = signing(conn, id).await? else {
        return Ok(());
    };
    // Fault injection for the Byzantine tests: an honest signer whose
    // preprocess arrives late (`return(ms)`), so a faulty one is always among
    // the first to preprocess.
    if let Some(ms) = crate::failpoint::eval("plan-signer-slow-preprocess", |arg| {
        arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(1_000)
    }) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let signable = SignableTransaction::read(&mut plan.signable.as_slice())
        .map_err(|e| HandleError::Local(format!("stored plan: {e}")))?;
    let (_, sealed, public) = key(conn, id.session).await?;
    let shape = shape(conn, id.session).await?;
    let preprocess = keystore
        .plan_preprocess(
            attempt_key(id),
            id.session,
            shape,
            &sealed,
            &public,
            signable,
        )
        .map_err(keystore_failure)?;
    link::enqueue(
        conn,
        link_id,
        &[out(
            uid("sign-preprocess", id),
            "sign_preprocess",
            Kind::SignPreprocess(SignPreprocess {
                sign_id: Some(id.clone()),
                preprocess,
            }),
        )],
    )
    .await?;
    Ok(())
}

/// The chosen signers' preprocesses: answer with our share.
pub async fn preprocesses(
    conn: &mut PgConnection,
    keystore: &Keystore,
    link_id: &str,
    id: SignId,
    m: SignPreprocesses,
) -> Result<(), HandleError> {
    let (own, _, _) = key(conn, id.session).await?;
    let chosen = indexed(&m.preprocesses);
    if !chosen.contains_key(&own) {
        // Not chosen: this attempt's machine will never sign.
        keystore.abandon_attempt(&attempt_key(&id));
        return Ok(());
    }
    if signing(conn, &id).await?.is_none() {
        keystore.forget_signing(id.session, "plan", &id.id);
        return Ok(());
    }
    if !super::db::choose(conn, attempt_row(&id), &m.encode_to_vec()).await? {
        // We never began this attempt (the plan was still being checked).
        return Ok(());
    }
    if crate::failpoint::eval("plan-signer-before-share", |_| ()).is_some() {
        warn!(
            attempt = id.attempt,
            "fault injection: holding the plan share back"
        );
        std::future::pending::<()>().await;
    }
    let outcome = keystore.plan_sign(&attempt_key(&id), own, &chosen);
    // Fault injection for the Byzantine tests: an invalid CLSAG share, which
    // only the other signers can detect (the coordinator cannot check it).
    let outcome = match outcome {
        Ok(Some(mut share))
            if crate::failpoint::eval("plan-signer-corrupt-share", |_| ()).is_some() =>
        {
            warn!(
                attempt = id.attempt,
                "fault injection: sending an invalid CLSAG share and withholding the transaction"
            );
            // A faulty signer would not publish what only it can complete.
            keystore.abandon_attempt(&attempt_key(&id));
            if let Some(byte) = share.first_mut() {
                *byte ^= 1;
            }
            Ok(Some(share))
        }
        other => other,
    };
    send_share(conn, link_id, &id, outcome, &m.preprocesses).await
}

/// Everyone's shares: complete the transaction and store it for publishing.
pub async fn shares(
    conn: &mut PgConnection,
    keystore: &Keystore,
    link_id: &str,
    id: SignId,
    m: SignShares,
) -> Result<(), HandleError> {
    let (own, _, _) = key(conn, id.session).await?;
    if signing(conn, &id).await?.is_none() {
        keystore.forget_signing(id.session, "plan", &id.id);
        return Ok(());
    }
    match keystore.plan_complete(&attempt_key(&id), own, &indexed(&m.shares)) {
        Ok(Some(tx)) => {
            keystore.forget_signing(id.session, "plan", &id.id);
            let fee = match &tx {
                monero_wallet::transaction::Transaction::V2 {
                    proofs: Some(proofs),
                    ..
                } => proofs.base.fee,
                _ => 0,
            };
            let hash = tx.hash();
            sched::set_signed(conn, &id.id, &tx.serialize(), &hash, fee).await?;
            info!(
                plan = %hex::encode(&id.id),
                tx = %hex::encode(hash),
                fee,
                attempt = id.attempt,
                "payout transaction signed"
            );
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(SignError::Blame { accused, reason }) => {
            let preprocesses = chosen_preprocesses(conn, &id).await?;
            blame(
                conn,
                link_id,
                &id,
                accused,
                reason,
                &preprocesses,
                Some(&m.shares),
            )
            .await
        }
        Err(e) => Err(keystore_failure(e)),
    }
}

/// The chosen signers' preprocesses of an attempt, as relayed and stored
/// when this signer was chosen (evidence for a blame).
async fn chosen_preprocesses(
    conn: &mut PgConnection,
    id: &SignId,
) -> Result<HashMap<u32, Vec<u8>>, HandleError> {
    let stored = super::db::commitments(conn, attempt_row(id)).await?;
    Ok(stored
        .flatten()
        .and_then(|b| SignPreprocesses::decode(b.as_slice()).ok())
        .map(|p| p.preprocesses)
        .unwrap_or_default())
}

/// Whether a plan is still being signed (for re-attempts).
pub async fn still_signing(conn: &mut PgConnection, id: &SignId) -> Result<bool, HandleError> {
    Ok(signing(conn, id).await?.is_some())
}
