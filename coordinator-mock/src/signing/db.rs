//! The signing tables, shared by batches and plans: `sign_attempts`,
//! `sign_preprocesses`, `sign_shares`, `sign_blames`. Every query of them
//! lives here.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use crate::batches::db::BatchStatus;
use crate::common::text_enum;
use crate::payouts::db::PlanStatus;

text_enum! {
    /// The `kind` column of every signing table: which procedure a row
    /// belongs to.
    pub enum ProcedureKind {
        /// A batch, by id (FROST Ed25519).
        Batch = "batch",
        /// A plan, by seq (FROST-CLSAG).
        Plan = "plan",
    }
}

text_enum! {
    /// `sign_attempts.status`.
    pub enum AttemptStatus {
        /// Collecting preprocesses.
        Collecting = "collecting",
        /// Signers chosen; collecting their shares.
        Sharing = "sharing",
        /// Every share relayed; waiting for the signature.
        Aggregating = "aggregating",
        /// The procedure completed.
        Done = "done",
        /// Stalled; superseded by the next attempt.
        Abandoned = "abandoned",
    }
}

text_enum! {
    /// `sign_blames.verdict` (see migration 0010).
    pub enum VerdictKind {
        /// The accused's part is invalid.
        Proven = "proven",
        /// The accused's part verifies.
        False = "false",
        /// Out of place, or evidence that is not what was relayed.
        Refused = "refused",
        /// Accuser and accused proposed different batches.
        Disputed = "disputed",
        /// A CLSAG share: not checkable here.
        Unverified = "unverified",
    }
}

/// One signing procedure: a batch (by id) or a plan (by its seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Procedure {
    /// Batch or plan.
    pub kind: ProcedureKind,
    /// Batch id or plan seq.
    pub key: i64,
}

/// An attempt as its handlers see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    /// Where it is.
    pub status: AttemptStatus,
    /// The chosen signers (empty until chosen).
    pub signers: Vec<i32>,
}

/// A signer's index and its preprocess or share.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IndexedBytes {
    /// Its index.
    pub idx: i32,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// An attempt that stalled.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stalled {
    /// Batch or plan.
    pub kind: ProcedureKind,
    /// Batch id or plan seq.
    pub id: i64,
    /// The attempt.
    pub attempt: i32,
    /// Its key's session.
    pub session: i64,
    /// The plan's id (`None`: a batch).
    pub plan_id: Option<Vec<u8>>,
}

/// A pair of participants of a key that disputed one another.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct Pair {
    accuser: i32,
    accused: i32,
}

/// Whether the procedure exists (a batch proposed, a plan proposed).
pub async fn procedure_exists(
    conn: &mut PgConnection,
    procedure: Procedure,
) -> Result<bool, sqlx::Error> {
    match procedure.kind {
        ProcedureKind::Batch => crate::batches::db::exists(conn, procedure.key).await,
        ProcedureKind::Plan => crate::payouts::db::exists(conn, procedure.key).await,
    }
}

/// Creates an attempt (collecting); false if it existed.
pub async fn insert_attempt(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
) -> Result<bool, sqlx::Error> {
    let created = sqlx::query(
        "INSERT INTO sign_attempts (kind, id, attempt) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .execute(conn)
    .await?;
    Ok(created.rows_affected() > 0)
}

/// Locks an attempt, if it exists.
pub async fn lock_attempt(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
) -> Result<Option<AttemptRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, signers FROM sign_attempts WHERE kind = $1 AND id = $2 AND attempt = $3
         FOR NO KEY UPDATE",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .fetch_optional(conn)
    .await
}

/// Moves an attempt to `status`.
pub async fn set_status(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
    status: AttemptStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sign_attempts SET status = $4 WHERE kind = $1 AND id = $2 AND attempt = $3",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .bind(status)
    .execute(conn)
    .await?;
    Ok(())
}

/// Fixes an attempt's signers: it collects their shares from now on.
pub async fn choose(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
    signers: &[i32],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sign_attempts SET status = $5, signers = $4 WHERE kind = $1 AND id = $2 AND attempt = $3",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .bind(signers)
    .bind(AttemptStatus::Sharing)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores a participant's preprocess (the first counts).
pub async fn insert_preprocess(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
    idx: i32,
    preprocess: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sign_preprocesses (kind, id, attempt, idx, preprocess) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .bind(idx)
    .bind(preprocess)
    .execute(conn)
    .await?;
    Ok(())
}

/// The preprocesses of an attempt in arrival order, leaving out every
/// participant proven at fault in any signing of key `session` (its share
/// was invalid, or it accused falsely): it is never chosen again.
pub async fn eligible_preprocesses(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
    session: i64,
) -> Result<Vec<IndexedBytes>, sqlx::Error> {
    sqlx::query_as(
        "SELECT idx, preprocess AS bytes FROM sign_preprocesses WHERE kind = $1 AND id = $2 AND attempt = $3
           AND idx NOT IN (
             SELECT b.culprit FROM sign_blames b
             LEFT JOIN batches ba ON b.kind = $5 AND ba.id = b.id
             LEFT JOIN plans p ON b.kind = $6 AND p.seq = b.id
             WHERE b.culprit IS NOT NULL AND COALESCE(ba.session, p.session) = $4)
         ORDER BY received",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .bind(session)
    .bind(ProcedureKind::Batch)
    .bind(ProcedureKind::Plan)
    .fetch_all(conn)
    .await
}

/// Pairs (accuser index, accused index) of key `session`'s participants
/// whose blame nobody could settle (`disputed` or `unverified`).
pub async fn disputed_pairs(
    conn: &mut PgConnection,
    session: i64,
) -> Result<Vec<(i32, i32)>, sqlx::Error> {
    let pairs: Vec<Pair> = sqlx::query_as(
        "SELECT DISTINCT p.idx AS accuser, b.accused FROM sign_blames b
         JOIN keygen_participants p ON p.session = $1 AND p.processor = b.accuser
         LEFT JOIN batches ba ON b.kind = $2 AND ba.id = b.id
         LEFT JOIN plans pl ON b.kind = $3 AND pl.seq = b.id
         WHERE b.verdict = ANY($4)
           AND COALESCE(ba.session, pl.session) = $1",
    )
    .bind(session)
    .bind(ProcedureKind::Batch)
    .bind(ProcedureKind::Plan)
    .bind(
        [VerdictKind::Disputed, VerdictKind::Unverified]
            .map(VerdictKind::as_str)
            .to_vec(),
    )
    .fetch_all(conn)
    .await?;
    Ok(pairs.into_iter().map(|p| (p.accuser, p.accused)).collect())
}

/// Stores a signer's share (the first counts).
pub async fn insert_share(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
    idx: i32,
    share: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sign_shares (kind, id, attempt, idx, share) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .bind(idx)
    .bind(share)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every share of an attempt.
pub async fn shares(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
) -> Result<Vec<IndexedBytes>, sqlx::Error> {
    sqlx::query_as(
        "SELECT idx, share AS bytes FROM sign_shares WHERE kind = $1 AND id = $2 AND attempt = $3",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .fetch_all(conn)
    .await
}

fn by_index(rows: Vec<IndexedBytes>) -> BTreeMap<u16, Vec<u8>> {
    rows.into_iter()
        .filter_map(|r| Some((u16::try_from(r.idx).ok()?, r.bytes)))
        .collect()
}

/// The preprocesses of an attempt from `signers`, by index.
pub async fn preprocesses_of(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
    signers: &[i32],
) -> Result<BTreeMap<u16, Vec<u8>>, sqlx::Error> {
    let rows = sqlx::query_as(
        "SELECT idx, preprocess AS bytes FROM sign_preprocesses
         WHERE kind = $1 AND id = $2 AND attempt = $3 AND idx = ANY($4)",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .bind(signers)
    .fetch_all(conn)
    .await?;
    Ok(by_index(rows))
}

/// The shares of an attempt from `signers`, by index.
pub async fn shares_of(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
    signers: &[i32],
) -> Result<BTreeMap<u16, Vec<u8>>, sqlx::Error> {
    let rows = sqlx::query_as(
        "SELECT idx, share AS bytes FROM sign_shares
         WHERE kind = $1 AND id = $2 AND attempt = $3 AND idx = ANY($4)",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .bind(signers)
    .fetch_all(conn)
    .await?;
    Ok(by_index(rows))
}

/// Locks an attempt and returns its signers (empty until chosen), if it
/// exists.
pub async fn lock_signers(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
) -> Result<Option<Vec<i32>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT signers FROM sign_attempts WHERE kind = $1 AND id = $2 AND attempt = $3
         FOR NO KEY UPDATE",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .fetch_optional(conn)
    .await
}

/// A judged blame (the first per accuser and attempt counts).
#[derive(Debug, Clone)]
pub struct NewBlame<'a> {
    /// The procedure.
    pub procedure: Procedure,
    /// The attempt.
    pub attempt: i32,
    /// The accuser's name.
    pub accuser: &'a str,
    /// The accused's index.
    pub accused: i32,
    /// The accuser's reason.
    pub reason: &'a str,
    /// The coordinator's verdict.
    pub verdict: VerdictKind,
    /// Who is proven at fault.
    pub culprit: Option<i32>,
    /// What the verdict means.
    pub detail: &'a str,
}

/// Records a judged blame.
pub async fn insert_blame(conn: &mut PgConnection, b: &NewBlame<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sign_blames (kind, id, attempt, accuser, accused, reason, verdict, culprit, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT DO NOTHING",
    )
    .bind(b.procedure.kind)
    .bind(b.procedure.key)
    .bind(b.attempt)
    .bind(b.accuser)
    .bind(b.accused)
    .bind(b.reason)
    .bind(b.verdict)
    .bind(b.culprit)
    .bind(b.detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// Seconds since the procedure's first attempt started.
pub async fn seconds_since_start(
    conn: &mut PgConnection,
    procedure: Procedure,
) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - min(started_at))::float8 FROM sign_attempts
         WHERE kind = $1 AND id = $2",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .fetch_one(conn)
    .await
}

/// Marks the procedure's open attempts done; returns how many.
pub async fn finish(conn: &mut PgConnection, procedure: Procedure) -> Result<u64, sqlx::Error> {
    let finished = sqlx::query(
        "UPDATE sign_attempts SET status = $3
         WHERE kind = $1 AND id = $2 AND status <> ALL($4)",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(AttemptStatus::Done)
    .bind(
        [AttemptStatus::Abandoned, AttemptStatus::Done]
            .map(AttemptStatus::as_str)
            .to_vec(),
    )
    .execute(conn)
    .await?;
    Ok(finished.rows_affected())
}

/// Locks the open attempts older than `timeout` whose procedure is still
/// being signed (others are skipped: their handler is running).
pub async fn lock_stalled(
    conn: &mut PgConnection,
    timeout: Duration,
) -> Result<Vec<Stalled>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.kind, a.id, a.attempt, COALESCE(b.session, p.session) AS session, p.plan_id
         FROM sign_attempts a
         LEFT JOIN batches b ON a.kind = $2 AND b.id = a.id
         LEFT JOIN plans p ON a.kind = $3 AND p.seq = a.id
         WHERE a.status = ANY($4)
           AND ((a.kind = $2 AND b.status = $5) OR (a.kind = $3 AND p.status = $6))
           AND a.started_at < now() - $1::interval
         FOR NO KEY UPDATE OF a SKIP LOCKED",
    )
    .bind(format!("{} milliseconds", timeout.as_millis()))
    .bind(ProcedureKind::Batch)
    .bind(ProcedureKind::Plan)
    .bind(
        [
            AttemptStatus::Collecting,
            AttemptStatus::Sharing,
            AttemptStatus::Aggregating,
        ]
        .map(AttemptStatus::as_str)
        .to_vec(),
    )
    .bind(BatchStatus::Proposed)
    .bind(PlanStatus::Signing)
    .fetch_all(conn)
    .await
}

/// How many attempts a procedure had.
pub async fn attempt_count(pool: &PgPool, procedure: Procedure) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM sign_attempts WHERE kind = $1 AND id = $2")
        .bind(procedure.kind)
        .bind(procedure.key)
        .fetch_one(pool)
        .await
}
