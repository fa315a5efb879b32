//! The payout tables: `burns`, `plans`, `plan_completions`, `faults`,
//! `rejected_burns`. Every query of them lives here.

use std::collections::HashMap;

use proto::processor_v1::Burn;
use sqlx::{PgConnection, PgPool};

use crate::common::{text_enum, to_u64};

text_enum! {
    /// `plans.status`.
    pub enum PlanStatus {
        /// Being signed.
        Signing = "signing",
        /// A processor reported its transaction final.
        Completed = "completed",
        /// Too many participants refused it to ever reach t signers.
        Refused = "refused",
        /// A conflicting plan completed.
        Superseded = "superseded",
    }
}

text_enum! {
    /// `faults.kind`: what a processor reports as another's fault.
    pub enum FaultKind {
        /// A follower refused a window leader's plan.
        PlanRefused = "plan-refused",
        /// A signing message named a procedure the processor refuses.
        SignIdRefused = "sign-id-refused",
        /// A settlement block included a batch the processor refuses.
        InclusionRefused = "inclusion-refused",
    }
}

/// A plan as `PlanCompleted` finds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Locked {
    /// Its sequence number (the signing procedure's key).
    pub seq: i64,
    /// Its status.
    pub status: PlanStatus,
    /// The transaction that completed it.
    pub tx_hash: Option<Vec<u8>>,
}

/// A plan for the admin API.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PlanRow {
    /// Its sequence number (the signing procedure's key).
    pub seq: i64,
    /// Id.
    pub plan_id: Vec<u8>,
    /// Key session.
    pub session: i64,
    /// Coordination window.
    pub window: i64,
    /// The leader's name.
    pub leader: String,
    /// The burns it pays.
    pub burn_ids: Vec<String>,
    /// Its status.
    pub status: PlanStatus,
    /// The transaction that completed it.
    pub tx_hash: Option<Vec<u8>>,
}

/// A fault for the admin API.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FaultRow {
    /// Who reported it.
    pub reporter: String,
    /// Key session.
    pub session: i64,
    /// The accused's name (or `participant <index>`).
    pub accused: String,
    /// What kind of fault.
    pub kind: FaultKind,
    /// The reporter's detail.
    pub detail: String,
}

/// The gauge of plans by status.
pub const COUNT_BY_STATUS: &str = "SELECT status, count(*) FROM plans GROUP BY status";

/// A plan as proposed, in state `signing`; false if it was proposed before.
pub async fn insert_plan(
    conn: &mut PgConnection,
    plan_id: &[u8],
    session: i64,
    window: i64,
    leader: &str,
    signable: &[u8],
    burn_ids: &[String],
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO plans (plan_id, session, \"window\", leader, signable, burn_ids)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(plan_id)
    .bind(session)
    .bind(window)
    .bind(leader)
    .bind(signable)
    .bind(burn_ids)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// The sequence number of plan `plan_id`, if it was proposed.
pub async fn seq_of(conn: &mut PgConnection, plan_id: &[u8]) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT seq FROM plans WHERE plan_id = $1")
        .bind(plan_id)
        .fetch_optional(conn)
        .await
}

/// Whether a plan with sequence number `seq` exists.
pub async fn exists(conn: &mut PgConnection, seq: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM plans WHERE seq = $1)")
        .bind(seq)
        .fetch_one(conn)
        .await
}

/// Locks plan `plan_id`, if it was proposed.
pub async fn lock(conn: &mut PgConnection, plan_id: &[u8]) -> Result<Option<Locked>, sqlx::Error> {
    sqlx::query_as("SELECT seq, status, tx_hash FROM plans WHERE plan_id = $1 FOR NO KEY UPDATE")
        .bind(plan_id)
        .fetch_optional(conn)
        .await
}

/// Records `processor`'s report that plan `plan_id` completed with `tx_hash`.
pub async fn insert_completion(
    conn: &mut PgConnection,
    plan_id: &[u8],
    processor: &str,
    tx_hash: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO plan_completions (plan_id, processor, tx_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(plan_id)
    .bind(processor)
    .bind(tx_hash)
    .execute(conn)
    .await?;
    Ok(())
}

/// Completes plan `plan_id` with `tx_hash`.
pub async fn complete(
    conn: &mut PgConnection,
    plan_id: &[u8],
    tx_hash: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE plans SET status = $3, tx_hash = $2, completed_at = now() WHERE plan_id = $1",
    )
    .bind(plan_id)
    .bind(tx_hash)
    .bind(PlanStatus::Completed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a reported fault.
pub async fn insert_fault(
    conn: &mut PgConnection,
    reporter: &str,
    session: i64,
    accused: i32,
    kind: FaultKind,
    detail: &str,
    subject: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO faults (reporter, session, accused, kind, detail, subject) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(reporter)
    .bind(session)
    .bind(accused)
    .bind(kind)
    .bind(detail)
    .bind(subject)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks plan `plan_id` refused once more than n - t of its key's
/// participants refused it (t signers can never be found); returns whether
/// it did.
pub async fn refuse_if_unsignable(
    conn: &mut PgConnection,
    plan_id: &[u8],
) -> Result<bool, sqlx::Error> {
    let refused = sqlx::query(
        "UPDATE plans p SET status = $3 WHERE p.plan_id = $1 AND p.status = $2
         AND (SELECT count(DISTINCT reporter) FROM faults WHERE kind = $4 AND subject = $1)
             > (SELECT count(*) FROM keygen_participants k WHERE k.session = p.session)
               - (SELECT threshold FROM keygen_sessions s WHERE s.session = p.session)",
    )
    .bind(plan_id)
    .bind(PlanStatus::Signing)
    .bind(PlanStatus::Refused)
    .bind(FaultKind::PlanRefused)
    .execute(conn)
    .await?;
    Ok(refused.rows_affected() > 0)
}

/// How many faults name `processor` as the accused.
pub async fn faults_against(pool: &PgPool, processor: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM faults f JOIN keygen_participants k
         ON k.session = f.session AND k.idx = f.accused WHERE k.processor = $1",
    )
    .bind(processor)
    .fetch_one(pool)
    .await
}

/// Records that `processor` rejected a burn.
pub async fn insert_rejected_burn(
    conn: &mut PgConnection,
    burn_id: &str,
    processor: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rejected_burns (burn_id, processor, reason) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(burn_id)
    .bind(processor)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Queues a burn as given (an empty id gets `burn-<seq>`); returns its id.
pub async fn insert_burn(
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

/// Assigns the oldest `max` burns not yet in a settlement block to block
/// `number`; returns them in submission order (the rest wait).
pub async fn take_burns(
    conn: &mut PgConnection,
    number: i64,
    max: i64,
) -> Result<Vec<Burn>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        seq: i64,
        burn_id: String,
        monero_address: String,
        amount: i64,
    }
    let mut rows: Vec<Row> = sqlx::query_as(
        "UPDATE burns SET settlement_block = $1
         WHERE burn_id IN (
             SELECT burn_id FROM burns WHERE settlement_block IS NULL
             ORDER BY seq LIMIT $2 FOR UPDATE
         )
         RETURNING seq, burn_id, monero_address, amount",
    )
    .bind(number)
    .bind(max)
    .fetch_all(conn)
    .await?;
    rows.sort_by_key(|r| r.seq);
    Ok(rows
        .into_iter()
        .map(|r| Burn {
            burn_id: r.burn_id,
            monero_address: r.monero_address,
            amount: to_u64(r.amount),
            session: None,
        })
        .collect())
}

/// Every plan, oldest first.
pub async fn plans(pool: &PgPool) -> Result<Vec<PlanRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, plan_id, session, \"window\", leader, burn_ids, status, tx_hash
         FROM plans ORDER BY seq",
    )
    .fetch_all(pool)
    .await
}

/// Each processor's reported transaction for plan `plan_id`.
pub async fn completions(
    pool: &PgPool,
    plan_id: &[u8],
) -> Result<HashMap<String, Vec<u8>>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        processor: String,
        tx_hash: Vec<u8>,
    }
    let rows: Vec<Row> =
        sqlx::query_as("SELECT processor, tx_hash FROM plan_completions WHERE plan_id = $1")
            .bind(plan_id)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|r| (r.processor, r.tx_hash)).collect())
}

/// Every fault, oldest first, with the accused's name.
pub async fn faults(pool: &PgPool) -> Result<Vec<FaultRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT f.reporter, f.session, COALESCE(p.processor, 'participant ' || f.accused::text) AS accused,
                f.kind, f.detail
         FROM faults f LEFT JOIN keygen_participants p ON p.session = f.session AND p.idx = f.accused
         ORDER BY f.id",
    )
    .fetch_all(pool)
    .await
}

/// Each rejected burn's reason (one per burn).
pub async fn rejected_burns(pool: &PgPool) -> Result<HashMap<String, String>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        burn_id: String,
        reason: String,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT DISTINCT ON (burn_id) burn_id, reason FROM rejected_burns ORDER BY burn_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.burn_id, r.reason)).collect())
}
