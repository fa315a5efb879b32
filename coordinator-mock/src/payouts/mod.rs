//! Payouts as the coordinator sees them: burns queued for the next
//! settlement block, plan proposals relayed from a window's leader to the
//! other participants (who check them independently), completions, faults
//! and rejected burns as processors report them. The signing of plans is
//! in [`crate::signing`], which [`crate::dispatch`] tells when a plan
//! completes.

pub mod db;

use std::collections::HashMap;

use proto::processor_v1::{
    Burn, BurnRejected, Fault, PlanCompleted, PlanProposal, coordinator_message::Kind,
};
use sqlx::{PgConnection, PgPool};
use tracing::{info, warn};

use link::HandleError;
use primitives::amount::Amount;
use processor::scheduler::plan;

use crate::common::{out, to_i64, to_u64};
use db::{FaultKind, PlanStatus};

/// What a `PlanCompleted` changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// The plan (by its seq) completed now: its signing is over.
    Now(i64),
    /// It had completed, or is no longer signed.
    Before,
}

/// The newest confirmed key `processor` holds a share of: (session, index).
async fn key_of(conn: &mut PgConnection, processor: &str) -> Result<(i64, i32), HandleError> {
    crate::keygen::db::newest_key_of(conn, processor)
        .await?
        .ok_or_else(|| HandleError::Rejected(format!("{processor} holds no confirmed key")))
}

/// `PlanProposal` from a window's leader: record it and relay it to every
/// participant of the key, the leader included.
#[tracing::instrument(name = "plan.proposal", skip_all, fields(processor = %processor, plan = %hex::encode(&m.plan_id)))]
pub async fn proposal(
    conn: &mut PgConnection,
    processor: &str,
    m: PlanProposal,
) -> Result<(), HandleError> {
    // The key whose window it is: while one key forwards to the next, a
    // processor leads windows of both.
    let (session, index) = match m.session {
        Some(session) => {
            let session = to_i64(session);
            let index = crate::keygen::db::index_in(conn, processor, session)
                .await?
                .ok_or_else(|| {
                    HandleError::Rejected(format!(
                        "{processor} proposed a plan for key {session}, of which it holds no confirmed share"
                    ))
                })?;
            (session, index)
        }
        None => key_of(conn, processor).await?,
    };
    if i64::from(index) != i64::from(m.leader_index) {
        return Err(HandleError::Rejected(format!(
            "{processor} is participant {index} but proposed as leader {}",
            m.leader_index
        )));
    }
    let inserted = db::insert_plan(
        conn,
        &m.plan_id,
        session,
        to_i64(m.window),
        processor,
        &m.signable_transaction,
        &m.burn_ids,
    )
    .await?;
    if !inserted {
        return Ok(());
    }
    let plan = hex::encode(&m.plan_id);
    // Relayed with the key it was recorded under, whether the leader named
    // it or not.
    let mut m = m;
    m.session = Some(to_u64(session));
    let relay = out(
        format!("plan-proposal/{plan}"),
        "plan_proposal",
        Kind::PlanProposal(m.clone()),
    );
    // To every participant, the leader too: each takes proposals in the
    // order relayed here, so conflicting ones are decided the same way.
    for p in crate::keygen::db::participant_links(conn, session, None).await? {
        link::enqueue(conn, &p.processor, std::slice::from_ref(&relay)).await?;
    }
    info!(%plan, window = m.window, leader = processor, burns = m.burn_ids.len(), "plan proposed; relayed");
    Ok(())
}

/// `PlanCompleted`: record each processor's report; the first completes
/// the plan.
#[tracing::instrument(name = "plan.completed", skip_all, fields(processor = %processor, plan = %hex::encode(&m.plan_id)))]
pub async fn completed(
    conn: &mut PgConnection,
    processor: &str,
    m: PlanCompleted,
) -> Result<Completed, HandleError> {
    let db::Locked {
        seq,
        status,
        tx_hash,
    } = db::lock(conn, &m.plan_id).await?.ok_or_else(|| {
        HandleError::Rejected(format!(
            "completion of plan {}, which was never proposed",
            hex::encode(&m.plan_id)
        ))
    })?;
    db::insert_completion(conn, &m.plan_id, processor, &m.tx_hash).await?;
    if let Some(first) = tx_hash
        && first != m.tx_hash
    {
        warn!(plan = %hex::encode(&m.plan_id), processor, "reported a different transaction for a completed plan");
    }
    if status != PlanStatus::Signing {
        return Ok(Completed::Before);
    }
    db::complete(conn, &m.plan_id, &m.tx_hash).await?;
    info!(plan = %hex::encode(&m.plan_id), tx = %hex::encode(&m.tx_hash), processor, "payout completed");
    Ok(Completed::Now(seq))
}

/// `Fault`: record it. A kind this coordinator does not know is refused:
/// it could neither be counted nor shown for what it is.
pub async fn fault(conn: &mut PgConnection, processor: &str, m: Fault) -> Result<(), HandleError> {
    let kind: FaultKind = m.kind.parse().map_err(|e| {
        HandleError::Rejected(format!("{processor} reported a fault of unknown kind: {e}"))
    })?;
    warn!(reporter = processor, accused = m.accused, kind = %m.kind, "fault reported: {}", m.detail);
    let subject = (!m.subject.is_empty()).then_some(m.subject.as_slice());
    db::insert_fault(
        conn,
        processor,
        to_i64(m.session),
        i32::try_from(m.accused).unwrap_or(0),
        kind,
        &m.detail,
        subject,
    )
    .await?;
    if kind == FaultKind::PlanRefused
        && let Some(subject) = subject
    {
        // Once more than n - t participants refused, t signers can never
        // be found: stop re-attempting it.
        if db::refuse_if_unsignable(conn, subject).await? {
            warn!(plan = %hex::encode(&m.subject), "plan refused by too many participants to be signed");
        }
    }
    Ok(())
}

/// `BurnRejected`: record it.
pub async fn burn_rejected(
    conn: &mut PgConnection,
    processor: &str,
    m: BurnRejected,
) -> Result<(), HandleError> {
    warn!(burn = %m.burn_id, processor, "burn rejected: {}", m.reason);
    db::insert_rejected_burn(conn, &m.burn_id, processor, &m.reason).await?;
    Ok(())
}

/// Why the coordinator refuses to queue a burn.
#[derive(Debug, thiserror::Error)]
pub enum BurnError {
    /// The address or amount is not payable; the message names the field,
    /// the value and what to give instead.
    #[error("{0}")]
    Invalid(String),
    /// A burn with this id is already queued or paid.
    #[error(
        "burn {0:?} was submitted before: give a new burn_id, or leave it empty to have one assigned"
    )]
    Duplicate(String),
    /// Postgres.
    #[error(transparent)]
    Storage(sqlx::Error),
}

/// Checks a burn as a caller submits it, before anything is stored: the
/// address must be one the processors pay (network included) and the amount
/// at least 1 piconero and at most [`MAX_BURN`](primitives::amount::MAX_BURN).
/// Refused, never clamped.
pub fn check_burn(address: &str, amount: u64) -> Result<Amount, BurnError> {
    plan::check_burn_address(address).map_err(BurnError::Invalid)?;
    Amount::for_burn(amount).map_err(|e| BurnError::Invalid(e.to_string()))
}

/// The longest burn id accepted, so that a settlement block's size is
/// bounded by its number of burns.
pub const MAX_BURN_ID_BYTES: usize = 128;

/// Queues a burn for the next settlement block, after [`check_burn`].
/// Processors check it again as they take the block in.
pub async fn submit_burn(
    pool: &PgPool,
    burn_id: &str,
    address: &str,
    amount: u64,
) -> Result<String, BurnError> {
    if burn_id.len() > MAX_BURN_ID_BYTES {
        return Err(BurnError::Invalid(format!(
            "the burn id is {} bytes; at most {MAX_BURN_ID_BYTES}",
            burn_id.len()
        )));
    }
    let amount = check_burn(address, amount)?;
    let amount = i64::try_from(amount.piconero()).map_err(|_| {
        // check_burn bounds the amount by i64::MAX.
        BurnError::Invalid(format!("amount {amount} does not fit BIGINT"))
    })?;
    store_burn_unchecked(pool, burn_id, address, amount)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                BurnError::Duplicate(burn_id.to_owned())
            }
            other => BurnError::Storage(other),
        })
}

/// Queues a burn as given, unchecked: only for tests that need a burn the
/// coordinator's edge refuses, to see the processors reject it too.
#[doc(hidden)]
pub async fn store_burn_unchecked(
    pool: &PgPool,
    burn_id: &str,
    address: &str,
    amount: i64,
) -> Result<String, sqlx::Error> {
    db::insert_burn(pool, burn_id, address, amount).await
}

/// Burns not yet in a settlement block: assigns them to block `number`.
pub async fn take_for_block(
    conn: &mut PgConnection,
    number: i64,
    max: usize,
) -> Result<Vec<Burn>, sqlx::Error> {
    // Each burn is the newest activated key's to pay (activated by an
    // earlier block: this block's activations come after it on every link).
    // Before any key is activated, none is named: the first key pays it.
    let payer = crate::keygen::db::newest_activated(conn).await?;
    let mut burns = db::take_burns(conn, number, i64::try_from(max).unwrap_or(i64::MAX)).await?;
    for burn in &mut burns {
        burn.session = payer.map(to_u64);
    }
    Ok(burns)
}

/// A plan for the admin API.
#[derive(Debug, Clone)]
pub struct PlanView {
    /// Its sequence number (the signing procedure's key).
    pub seq: i64,
    /// Id.
    pub plan_id: Vec<u8>,
    /// Session.
    pub session: u64,
    /// Window.
    pub window: u64,
    /// Leader name.
    pub leader: String,
    /// Burns.
    pub burn_ids: Vec<String>,
    /// Status.
    pub status: PlanStatus,
    /// Tx hash.
    pub tx_hash: Option<Vec<u8>>,
    /// processor -> tx hash.
    pub completions: HashMap<String, Vec<u8>>,
}

/// Every plan, oldest first.
pub async fn list_plans(pool: &PgPool) -> Result<Vec<PlanView>, sqlx::Error> {
    let rows = db::plans(pool).await?;
    let mut plans = Vec::with_capacity(rows.len());
    for r in rows {
        let completions = db::completions(pool, &r.plan_id).await?;
        plans.push(PlanView {
            seq: r.seq,
            plan_id: r.plan_id,
            session: to_u64(r.session),
            window: to_u64(r.window),
            leader: r.leader,
            burn_ids: r.burn_ids,
            status: r.status,
            tx_hash: r.tx_hash,
            completions,
        });
    }
    Ok(plans)
}

/// Every fault, oldest first, and each rejected burn's reason.
pub async fn list_faults(
    pool: &PgPool,
) -> Result<(Vec<db::FaultRow>, HashMap<String, String>), sqlx::Error> {
    Ok((db::faults(pool).await?, db::rejected_burns(pool).await?))
}
