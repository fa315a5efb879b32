//! Payouts as the coordinator sees them: burns queued for the next
//! settlement block, plan proposals relayed from a window's leader to the
//! other participants (who check them independently), completions, faults
//! and rejected burns as processors report them.

use std::collections::HashMap;

use prost::Message as _;
use proto::processor_v1::{
    Burn, BurnRejected, CoordinatorMessage, Fault, PlanCompleted, PlanProposal,
    coordinator_message::Kind,
};
use sqlx::{PgConnection, PgPool, Row};
use tracing::{info, warn};

use link::{HandleError, OutMessage};
use primitives::amount::Amount;
use processor::scheduler::plan;

use crate::signing::{Procedure, finish, links};

/// The newest confirmed key `processor` holds a share of: (session, index).
async fn key_of(conn: &mut PgConnection, processor: &str) -> Result<(i64, i32), HandleError> {
    let row = sqlx::query(
        "SELECT s.session, p.idx FROM keygen_sessions s JOIN keygen_participants p USING (session)
         WHERE s.status = 'confirmed' AND p.processor = $1 ORDER BY s.session DESC LIMIT 1",
    )
    .bind(processor)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| HandleError::Rejected(format!("{processor} holds no confirmed key")))?;
    Ok((row.get(0), row.get(1)))
}

/// `PlanProposal` from a window's leader: record it and relay it to every
/// participant of the key, the leader included.
#[tracing::instrument(name = "plan.proposal", skip_all, fields(processor = %processor, plan = %hex::encode(&m.plan_id)))]
pub async fn proposal(
    conn: &mut PgConnection,
    processor: &str,
    m: PlanProposal,
) -> Result<(), HandleError> {
    let (session, index) = key_of(conn, processor).await?;
    if i64::from(index) != i64::from(m.leader_index) {
        return Err(HandleError::Rejected(format!(
            "{processor} is participant {index} but proposed as leader {}",
            m.leader_index
        )));
    }
    let inserted = sqlx::query(
        "INSERT INTO plans (plan_id, session, \"window\", leader, signable, burn_ids)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&m.plan_id)
    .bind(session)
    .bind(i64::try_from(m.window).unwrap_or(i64::MAX))
    .bind(processor)
    .bind(&m.signable_transaction)
    .bind(&m.burn_ids)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        return Ok(());
    }
    let plan = hex::encode(&m.plan_id);
    let relay = OutMessage {
        uid: format!("plan-proposal/{plan}"),
        kind: "plan_proposal",
        payload: CoordinatorMessage {
            kind: Some(Kind::PlanProposal(m.clone())),
        }
        .encode_to_vec(),
    };
    // To every participant, the leader too: each takes proposals in the
    // order relayed here, so conflicting ones are decided the same way.
    for (_, link_id) in links(conn, session, None).await? {
        link::enqueue(conn, &link_id, std::slice::from_ref(&relay)).await?;
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
) -> Result<(), HandleError> {
    let row =
        sqlx::query("SELECT seq, status, tx_hash FROM plans WHERE plan_id = $1 FOR NO KEY UPDATE")
            .bind(&m.plan_id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| {
                HandleError::Rejected(format!(
                    "completion of plan {}, which was never proposed",
                    hex::encode(&m.plan_id)
                ))
            })?;
    let (seq, status, tx_hash): (i64, String, Option<Vec<u8>>) =
        (row.get(0), row.get(1), row.get(2));
    sqlx::query(
        "INSERT INTO plan_completions (plan_id, processor, tx_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(&m.plan_id)
    .bind(processor)
    .bind(&m.tx_hash)
    .execute(&mut *conn)
    .await?;
    if let Some(first) = tx_hash
        && first != m.tx_hash
    {
        warn!(plan = %hex::encode(&m.plan_id), processor, "reported a different transaction for a completed plan");
    }
    if status == "signing" {
        sqlx::query(
            "UPDATE plans SET status = 'completed', tx_hash = $2, completed_at = now() WHERE plan_id = $1",
        )
        .bind(&m.plan_id)
        .bind(&m.tx_hash)
        .execute(&mut *conn)
        .await?;
        finish(
            conn,
            Procedure {
                kind: "plan",
                key: seq,
            },
        )
        .await?;
        info!(plan = %hex::encode(&m.plan_id), tx = %hex::encode(&m.tx_hash), processor, "payout completed");
    }
    Ok(())
}

/// `Fault`: record it.
pub async fn fault(conn: &mut PgConnection, processor: &str, m: Fault) -> Result<(), HandleError> {
    warn!(reporter = processor, accused = m.accused, kind = %m.kind, "fault reported: {}", m.detail);
    sqlx::query(
        "INSERT INTO faults (reporter, session, accused, kind, detail, subject) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(processor)
    .bind(i64::try_from(m.session).unwrap_or(i64::MAX))
    .bind(i32::try_from(m.accused).unwrap_or(0))
    .bind(&m.kind)
    .bind(&m.detail)
    .bind((!m.subject.is_empty()).then_some(&m.subject))
    .execute(&mut *conn)
    .await?;
    if m.kind == "plan-refused" && !m.subject.is_empty() {
        // Once more than n - t participants refused, t signers can never
        // be found: stop re-attempting it.
        let refused = sqlx::query(
            "UPDATE plans p SET status = 'refused' WHERE p.plan_id = $1 AND p.status = 'signing'
             AND (SELECT count(DISTINCT reporter) FROM faults WHERE kind = 'plan-refused' AND subject = $1)
                 > (SELECT count(*) FROM keygen_participants k WHERE k.session = p.session)
                   - (SELECT threshold FROM keygen_sessions s WHERE s.session = p.session)",
        )
        .bind(&m.subject)
        .execute(conn)
        .await?
        .rows_affected();
        if refused > 0 {
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
    sqlx::query(
        "INSERT INTO rejected_burns (burn_id, processor, reason) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(&m.burn_id)
    .bind(processor)
    .bind(&m.reason)
    .execute(conn)
    .await?;
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
    if burn_id.is_empty() {
        sqlx::query_scalar(
            "INSERT INTO burns (burn_id, monero_address, amount)
             VALUES ('burn-' || currval(pg_get_serial_sequence('burns', 'seq'))::text, $1, $2)
             RETURNING burn_id",
        )
        .bind(address)
        .bind(amount)
        .fetch_one(pool)
        .await
    } else {
        sqlx::query_scalar(
            "INSERT INTO burns (burn_id, monero_address, amount) VALUES ($1, $2, $3) RETURNING burn_id",
        )
        .bind(burn_id)
        .bind(address)
        .bind(amount)
        .fetch_one(pool)
        .await
    }
}

/// Burns not yet in a settlement block: assigns them to block `number`.
pub async fn take_for_block(
    conn: &mut PgConnection,
    number: i64,
    max: usize,
) -> Result<Vec<Burn>, sqlx::Error> {
    // The oldest `max` waiting burns, in submission order; the rest wait.
    let rows = sqlx::query(
        "UPDATE burns SET settlement_block = $1
         WHERE burn_id IN (
             SELECT burn_id FROM burns WHERE settlement_block IS NULL
             ORDER BY seq LIMIT $2 FOR UPDATE
         )
         RETURNING seq, burn_id, monero_address, amount",
    )
    .bind(number)
    .bind(i64::try_from(max).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await?;
    let mut burns: Vec<(i64, Burn)> = rows
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                Burn {
                    burn_id: r.get(1),
                    monero_address: r.get(2),
                    amount: u64::try_from(r.get::<i64, _>(3)).unwrap_or(0),
                },
            )
        })
        .collect();
    burns.sort_by_key(|(seq, _)| *seq);
    Ok(burns.into_iter().map(|(_, b)| b).collect())
}

/// A plan for the admin API.
#[derive(Debug, Clone)]
pub struct PlanRow {
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
    pub status: String,
    /// Tx hash.
    pub tx_hash: Option<Vec<u8>>,
    /// processor -> tx hash.
    pub completions: HashMap<String, Vec<u8>>,
    /// Attempts.
    pub attempts: u32,
}

/// Every plan, oldest first.
pub async fn list_plans(pool: &PgPool) -> Result<Vec<PlanRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.plan_id, p.session, p.\"window\", p.leader, p.burn_ids, p.status, p.tx_hash,
                (SELECT count(*) FROM sign_attempts a WHERE a.kind = 'plan' AND a.id = p.seq)
         FROM plans p ORDER BY p.seq",
    )
    .fetch_all(pool)
    .await?;
    let mut plans = Vec::with_capacity(rows.len());
    for r in rows {
        let plan_id: Vec<u8> = r.get(0);
        let completions =
            sqlx::query("SELECT processor, tx_hash FROM plan_completions WHERE plan_id = $1")
                .bind(&plan_id)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|c| (c.get(0), c.get(1)))
                .collect();
        plans.push(PlanRow {
            plan_id,
            session: u64::try_from(r.get::<i64, _>(1)).unwrap_or(0),
            window: u64::try_from(r.get::<i64, _>(2)).unwrap_or(0),
            leader: r.get(3),
            burn_ids: r.get(4),
            status: r.get(5),
            tx_hash: r.get(6),
            completions,
            attempts: u32::try_from(r.get::<i64, _>(7)).unwrap_or(0),
        });
    }
    Ok(plans)
}

/// Faults as (reporter, session, accused name, kind, detail), oldest first,
/// and rejected burns (id -> reason).
#[allow(clippy::type_complexity)]
pub async fn list_faults(
    pool: &PgPool,
) -> Result<
    (
        Vec<(String, u64, String, String, String)>,
        HashMap<String, String>,
    ),
    sqlx::Error,
> {
    let faults = sqlx::query(
        "SELECT f.reporter, f.session, COALESCE(p.processor, 'participant ' || f.accused::text), f.kind, f.detail
         FROM faults f LEFT JOIN keygen_participants p ON p.session = f.session AND p.idx = f.accused
         ORDER BY f.id",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        (
            r.get(0),
            u64::try_from(r.get::<i64, _>(1)).unwrap_or(0),
            r.get(2),
            r.get(3),
            r.get(4),
        )
    })
    .collect();
    let rejected = sqlx::query(
        "SELECT DISTINCT ON (burn_id) burn_id, reason FROM rejected_burns ORDER BY burn_id",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    Ok((faults, rejected))
}
