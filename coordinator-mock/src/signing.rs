//! Signing rounds as the coordinator runs them, for batches (FROST Ed25519)
//! and plans (FROST-CLSAG) alike: collect preprocesses, choose the first t
//! signers to preprocess, relay their commitments and then their shares.
//! An attempt that stalls is abandoned and re-attempted (attempt + 1, fresh
//! nonces); whoever stays silent is simply not chosen, and a participant
//! proven at fault (an invalid share, or a false accusation) is never
//! chosen again for that key. Blame is checked before it counts.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message as _;
use proto::processor_v1::{
    CoordinatorMessage, SignBlame, SignId, SignKind, SignPreprocess, SignPreprocesses,
    SignReattempt, SignShare, SignShares, coordinator_message::Kind,
};
use sqlx::{PgConnection, PgPool, Row};
use tracing::{info, warn};

use link::{HandleError, OutMessage};

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

/// One signing procedure: a batch (by id) or a plan (by its seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Procedure {
    /// "batch" or "plan".
    pub kind: &'static str,
    /// Batch id or plan seq.
    pub key: i64,
}

/// The procedure a sign id names, if this coordinator knows it.
async fn procedure_of(conn: &mut PgConnection, id: &SignId) -> Result<Procedure, HandleError> {
    match SignKind::try_from(id.kind) {
        Ok(SignKind::Batch) => {
            let bytes: [u8; 8] = id
                .id
                .as_slice()
                .try_into()
                .map_err(|_| HandleError::Rejected("a batch id is 8 bytes".into()))?;
            Ok(Procedure {
                kind: "batch",
                key: i64_of(u64::from_be_bytes(bytes)),
            })
        }
        Ok(SignKind::Plan) => {
            let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM plans WHERE plan_id = $1")
                .bind(&id.id)
                .fetch_optional(&mut *conn)
                .await?;
            let key = seq.ok_or_else(|| {
                HandleError::Rejected(format!(
                    "signing message for unknown plan {}",
                    hex::encode(&id.id)
                ))
            })?;
            Ok(Procedure { kind: "plan", key })
        }
        _ => Err(HandleError::Rejected("sign id without a known kind".into())),
    }
}

/// The sender's index in the key session, and the session's t.
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

/// Link ids of the given indices of a session (all if `None`), sorted
/// (lock order).
pub async fn links(
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

fn uid(what: &str, kind: &str, id: &SignId) -> String {
    format!(
        "{what}/{}/{kind}/{}/{}",
        id.session,
        hex::encode(&id.id),
        id.attempt
    )
}

/// Locks an attempt (creating it), returning its status and signers; `None`
/// if the procedure is unknown.
async fn lock_attempt(
    conn: &mut PgConnection,
    procedure: Procedure,
    attempt: i32,
) -> Result<Option<(String, Vec<i32>)>, sqlx::Error> {
    let exists: bool = match procedure.kind {
        "batch" => sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM batches WHERE id = $1)"),
        _ => sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM plans WHERE seq = $1)"),
    }
    .bind(procedure.key)
    .fetch_one(&mut *conn)
    .await?;
    if !exists {
        return Ok(None);
    }
    let created = sqlx::query(
        "INSERT INTO sign_attempts (kind, id, attempt) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .execute(&mut *conn)
    .await?;
    if created.rows_affected() > 0 {
        metrics::counter!(service::metrics::SIGN_ATTEMPTS, "kind" => procedure.kind).increment(1);
    }
    let row = sqlx::query(
        "SELECT status, signers FROM sign_attempts WHERE kind = $1 AND id = $2 AND attempt = $3
         FOR NO KEY UPDATE",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some((row.get(0), row.get(1))))
}

/// A signing attempt as a message from `processor` refers to it.
struct Attempt {
    procedure: Procedure,
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
    let procedure = procedure_of(conn, &id).await?;
    let session = i64_of(id.session);
    let (index, threshold) = index_of(conn, session, processor).await?;
    let attempt = i32::try_from(id.attempt).unwrap_or(i32::MAX);
    let (status, signers) = lock_attempt(conn, procedure, attempt)
        .await?
        .ok_or_else(|| {
            HandleError::Rejected(format!(
                "signing message for unknown {} {}",
                procedure.kind, procedure.key
            ))
        })?;
    Ok((
        id,
        Attempt {
            procedure,
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
#[tracing::instrument(name = "sign.preprocess", skip_all, fields(processor = %processor, session = m.sign_id.as_ref().map(|i| i.session), attempt = m.sign_id.as_ref().map(|i| i.attempt)))]
pub async fn preprocess(
    conn: &mut PgConnection,
    processor: &str,
    m: SignPreprocess,
) -> Result<(), HandleError> {
    let (id, a) = open_attempt(conn, processor, m.sign_id).await?;
    let Procedure { kind, key } = a.procedure;
    sqlx::query(
        "INSERT INTO sign_preprocesses (kind, id, attempt, idx, preprocess) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(kind)
    .bind(key)
    .bind(a.attempt)
    .bind(a.index)
    .bind(&m.preprocess)
    .execute(&mut *conn)
    .await?;
    if a.status != "collecting" {
        return Ok(());
    }
    // A participant proven at fault in any signing of this key (its share
    // was invalid, or it accused falsely) is never chosen again.
    let rows = sqlx::query(
        "SELECT idx, preprocess FROM sign_preprocesses WHERE kind = $1 AND id = $2 AND attempt = $3
           AND idx NOT IN (
             SELECT b.culprit FROM sign_blames b
             LEFT JOIN batches ba ON b.kind = 'batch' AND ba.id = b.id
             LEFT JOIN plans p ON b.kind = 'plan' AND p.seq = b.id
             WHERE b.culprit IS NOT NULL AND COALESCE(ba.session, p.session) = $5)
         ORDER BY received LIMIT $4",
    )
    .bind(kind)
    .bind(key)
    .bind(a.attempt)
    .bind(i64::from(a.threshold))
    .bind(a.session)
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() < usize::try_from(a.threshold).unwrap_or(usize::MAX) {
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
        "UPDATE sign_attempts SET status = 'sharing', signers = $4 WHERE kind = $1 AND id = $2 AND attempt = $3",
    )
    .bind(kind)
    .bind(key)
    .bind(a.attempt)
    .bind(&signers)
    .execute(&mut *conn)
    .await?;
    let message = Kind::SignPreprocesses(SignPreprocesses {
        sign_id: Some(id.clone()),
        preprocesses: chosen,
    });
    for (_, link_id) in links(conn, a.session, Some(&signers)).await? {
        link::enqueue(
            conn,
            &link_id,
            &[out(
                uid("sign-preprocesses", kind, &id),
                "sign_preprocesses",
                message.clone(),
            )],
        )
        .await?;
    }
    info!(kind, key, attempt = a.attempt, ?signers, "signers chosen");
    Ok(())
}

/// `SignShare`: collect; when every signer's share is in, relay them.
#[tracing::instrument(name = "sign.share", skip_all, fields(processor = %processor, session = m.sign_id.as_ref().map(|i| i.session), attempt = m.sign_id.as_ref().map(|i| i.attempt)))]
pub async fn share(
    conn: &mut PgConnection,
    processor: &str,
    m: SignShare,
) -> Result<(), HandleError> {
    let (id, a) = open_attempt(conn, processor, m.sign_id).await?;
    let Procedure { kind, key } = a.procedure;
    if a.status != "sharing" || !a.signers.contains(&a.index) {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO sign_shares (kind, id, attempt, idx, share) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(kind)
    .bind(key)
    .bind(a.attempt)
    .bind(a.index)
    .bind(&m.share)
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query(
        "SELECT idx, share FROM sign_shares WHERE kind = $1 AND id = $2 AND attempt = $3",
    )
    .bind(kind)
    .bind(key)
    .bind(a.attempt)
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() < a.signers.len() {
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
    sqlx::query(
        "UPDATE sign_attempts SET status = 'aggregating' WHERE kind = $1 AND id = $2 AND attempt = $3",
    )
    .bind(kind)
    .bind(key)
    .bind(a.attempt)
    .execute(&mut *conn)
    .await?;
    let message = Kind::SignShares(SignShares {
        sign_id: Some(id.clone()),
        shares,
    });
    for (_, link_id) in links(conn, a.session, Some(&a.signers)).await? {
        link::enqueue(
            conn,
            &link_id,
            &[out(
                uid("sign-shares", kind, &id),
                "sign_shares",
                message.clone(),
            )],
        )
        .await?;
    }
    Ok(())
}

/// The coordinator's verdict on a signing blame (see migration 0009).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The accused's preprocess or share is invalid: it is never chosen
    /// again for this key.
    Proven,
    /// The accused's part verifies: the accuser is at fault.
    False,
    /// Accuser or accused was not a chosen signer, or the evidence is not
    /// what was relayed: the accuser is at fault.
    Refused(String),
    /// Accuser and accused proposed different batches: neither is proven
    /// at fault by this blame.
    Disputed,
    /// A CLSAG share, which the coordinator cannot check: nobody is banned.
    Unverified,
}

impl Verdict {
    fn name(&self) -> &'static str {
        match self {
            Self::Proven => "proven",
            Self::False => "false",
            Self::Refused(_) => "refused",
            Self::Disputed => "disputed",
            Self::Unverified => "unverified",
        }
    }
}

/// Index -> bytes of one attempt's rows of `sign_preprocesses` or
/// `sign_shares`, for the given signers.
async fn attempt_rows(
    conn: &mut PgConnection,
    table: &str,
    procedure: Procedure,
    attempt: i32,
    signers: &[i32],
) -> Result<std::collections::BTreeMap<u16, Vec<u8>>, sqlx::Error> {
    let column = if table == "sign_shares" {
        "share"
    } else {
        "preprocess"
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT idx, {column} FROM {table} WHERE kind = $1 AND id = $2 AND attempt = $3 AND idx = ANY($4)"
    )))
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .bind(signers)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((u16::try_from(r.get::<i32, _>(0)).ok()?, r.get(1))))
        .collect())
}

/// Judges a blame against what this coordinator relayed. Public data only:
/// the attempt's chosen signers, their preprocesses (and their shares, if
/// they were relayed), the batch each proposed, and the key's public
/// round-1 commitments.
async fn judge(
    conn: &mut PgConnection,
    procedure: Procedure,
    id: &SignId,
    accuser: (&str, i32),
    accused: i32,
    m: &SignBlame,
) -> Result<Verdict, HandleError> {
    let attempt = i32::try_from(id.attempt).unwrap_or(i32::MAX);
    let row = sqlx::query(
        "SELECT signers FROM sign_attempts WHERE kind = $1 AND id = $2 AND attempt = $3
         FOR NO KEY UPDATE",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .bind(attempt)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(Verdict::Refused("no such attempt".into()));
    };
    // Empty until the signers are chosen.
    let signers: Vec<i32> = row.get(0);
    if !signers.contains(&accuser.1) {
        return Ok(Verdict::Refused(format!(
            "the accuser was not a chosen signer of this attempt (signers {signers:?})"
        )));
    }
    if accused == accuser.1 || !signers.contains(&accused) {
        return Ok(Verdict::Refused(format!(
            "the accused was not another chosen signer of this attempt (signers {signers:?})"
        )));
    }
    let preprocesses =
        attempt_rows(conn, "sign_preprocesses", procedure, attempt, &signers).await?;
    // Shares are relayed exactly when every signer's is in.
    let mut shares = attempt_rows(conn, "sign_shares", procedure, attempt, &signers).await?;
    if shares.len() < signers.len() {
        shares.clear();
    }
    let claimed: std::collections::BTreeMap<u16, Vec<u8>> = m
        .preprocesses
        .iter()
        .filter_map(|(&i, b)| Some((u16::try_from(i).ok()?, b.clone())))
        .collect();
    if !claimed.is_empty() && claimed != preprocesses {
        return Ok(Verdict::Refused(
            "the evidence's preprocesses are not the ones relayed for this attempt".into(),
        ));
    }
    let accused_u16 = u16::try_from(accused).unwrap_or(0);
    if !m.accused_share.is_empty() && shares.get(&accused_u16) != Some(&m.accused_share) {
        return Ok(Verdict::Refused(
            "the evidence's share is not the one relayed from the accused".into(),
        ));
    }
    if procedure.kind == "plan" {
        return Ok(Verdict::Unverified);
    }
    // The batch as each of them proposed it; the canonical (first) one for
    // a signer that proposed none.
    let proposals: HashMap<String, Vec<u8>> =
        sqlx::query("SELECT processor, encoded FROM batch_proposals WHERE id = $1")
            .bind(procedure.key)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    let canonical: Vec<u8> = sqlx::query_scalar("SELECT encoded FROM batches WHERE id = $1")
        .bind(procedure.key)
        .fetch_one(&mut *conn)
        .await?;
    let accused_name: Option<String> = sqlx::query_scalar(
        "SELECT processor FROM keygen_participants WHERE session = $1 AND idx = $2",
    )
    .bind(i64_of(id.session))
    .bind(accused)
    .fetch_optional(&mut *conn)
    .await?;
    let signed = proposals.get(accuser.0).unwrap_or(&canonical);
    let theirs = accused_name
        .and_then(|n| proposals.get(&n))
        .unwrap_or(signed);
    if signed != theirs {
        return Ok(Verdict::Disputed);
    }
    let round1: Vec<(i32, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT idx, round1 FROM keygen_participants WHERE session = $1")
            .bind(i64_of(id.session))
            .fetch_all(&mut *conn)
            .await?;
    let round1: std::collections::BTreeMap<u16, Vec<u8>> = round1
        .into_iter()
        .filter_map(|(i, p)| Some((u16::try_from(i).ok()?, p?)))
        .collect();
    let unverifiable = |e: processor::keystore::sign::SignError| {
        HandleError::Rejected(format!(
            "the blame cannot be checked against key {}: {e}",
            id.session
        ))
    };
    // The key's public package is rebuilt from this coordinator's own rows:
    // if that fails, the fault is here, not the accuser's (retried, never
    // acknowledged without a verdict).
    let public =
        processor::keystore::sign::public_key_package_from_round1(&round1).map_err(|e| {
            HandleError::Local(format!(
                "key {}'s public package does not rebuild from the stored round-1 packages: {e}",
                id.session
            ))
        })?;
    let at_fault = processor::keystore::sign::signer_at_fault(
        &public,
        &preprocesses,
        &shares,
        accused_u16,
        &processor::batch::message(signed),
    )
    .map_err(unverifiable)?;
    Ok(if at_fault {
        Verdict::Proven
    } else {
        Verdict::False
    })
}

/// `SignBlame`: verify it against what was relayed, then record it with its
/// verdict. Only a proven culprit (the accused whose part is invalid, or an
/// accuser whose accusation is false or out of place) is never chosen again
/// for this key; the attempt will time out and be re-attempted.
pub async fn blame(
    conn: &mut PgConnection,
    processor: &str,
    m: SignBlame,
) -> Result<(), HandleError> {
    let id = m
        .sign_id
        .clone()
        .ok_or_else(|| HandleError::Rejected("no sign id".into()))?;
    let procedure = procedure_of(conn, &id).await?;
    let Procedure { kind, key } = procedure;
    let (accuser_index, _) = index_of(conn, i64_of(id.session), processor).await?;
    let accused_index = i32::try_from(m.accused).unwrap_or(0);
    let accused: String = sqlx::query_scalar(
        "SELECT processor FROM keygen_participants WHERE session = $1 AND idx = $2",
    )
    .bind(i64_of(id.session))
    .bind(accused_index)
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or_else(|| format!("participant {}", m.accused));
    let verdict = judge(
        conn,
        procedure,
        &id,
        (processor, accuser_index),
        accused_index,
        &m,
    )
    .await?;
    let culprit = match &verdict {
        Verdict::Proven => Some(accused_index),
        Verdict::False | Verdict::Refused(_) => Some(accuser_index),
        Verdict::Disputed | Verdict::Unverified => None,
    };
    let detail = match &verdict {
        Verdict::Proven => format!("{accused}'s part is invalid: never chosen again for this key"),
        Verdict::False => format!(
            "{accused}'s part verifies: the accusation is false, {processor} is never chosen again for this key"
        ),
        Verdict::Refused(why) => {
            format!("refused: {why}; {processor} is never chosen again for this key")
        }
        Verdict::Disputed => {
            format!("{processor} and {accused} proposed different batches: nobody is banned for it")
        }
        Verdict::Unverified => {
            "a CLSAG share cannot be checked by the coordinator: nobody is banned for it".into()
        }
    };
    warn!(kind, key, attempt = id.attempt, accuser = processor, %accused, verdict = verdict.name(), "signer blamed: {}; {detail}", m.reason);
    metrics::counter!(service::metrics::SIGN_BLAMES, "kind" => kind).increment(1);
    sqlx::query(
        "INSERT INTO sign_blames (kind, id, attempt, accuser, accused, reason, verdict, culprit, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT DO NOTHING",
    )
    .bind(kind)
    .bind(key)
    .bind(i32::try_from(id.attempt).unwrap_or(i32::MAX))
    .bind(processor)
    .bind(accused_index)
    .bind(&m.reason)
    .bind(verdict.name())
    .bind(culprit)
    .bind(&detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks a procedure's attempts done (it completed).
pub async fn finish(conn: &mut PgConnection, procedure: Procedure) -> Result<(), sqlx::Error> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - min(started_at))::float8 FROM sign_attempts
         WHERE kind = $1 AND id = $2",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .fetch_one(&mut *conn)
    .await?;
    let finished = sqlx::query(
        "UPDATE sign_attempts SET status = 'done'
         WHERE kind = $1 AND id = $2 AND status NOT IN ('abandoned', 'done')",
    )
    .bind(procedure.kind)
    .bind(procedure.key)
    .execute(conn)
    .await?;
    // Counted once: a second report of the same signature finds it done.
    if finished.rows_affected() > 0 {
        metrics::counter!(service::metrics::SIGN_COMPLETED, "kind" => procedure.kind).increment(1);
        if let Some(seconds) = seconds {
            metrics::histogram!(service::metrics::SIGN_SECONDS, "kind" => procedure.kind)
                .record(seconds);
        }
    }
    Ok(())
}

/// Abandons attempts older than `timeout` whose procedure is still open and
/// asks every participant for the next attempt. Returns how many it
/// re-attempted.
pub async fn reattempt_stalled(pool: &PgPool, timeout: Duration) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT a.kind, a.id, a.attempt, COALESCE(b.session, p.session), p.plan_id
         FROM sign_attempts a
         LEFT JOIN batches b ON a.kind = 'batch' AND b.id = a.id
         LEFT JOIN plans p ON a.kind = 'plan' AND p.seq = a.id
         WHERE a.status IN ('collecting', 'sharing', 'aggregating')
           AND ((a.kind = 'batch' AND b.status = 'proposed') OR (a.kind = 'plan' AND p.status = 'signing'))
           AND a.started_at < now() - $1::interval
         FOR NO KEY UPDATE OF a SKIP LOCKED",
    )
    .bind(format!("{} milliseconds", timeout.as_millis()))
    .fetch_all(&mut *tx)
    .await?;
    let mut count = 0;
    for row in rows {
        let kind: String = row.get(0);
        let (key, attempt, session): (i64, i32, i64) = (row.get(1), row.get(2), row.get(3));
        let plan_id: Option<Vec<u8>> = row.get(4);
        sqlx::query(
            "UPDATE sign_attempts SET status = 'abandoned' WHERE kind = $1 AND id = $2 AND attempt = $3",
        )
        .bind(&kind)
        .bind(key)
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO sign_attempts (kind, id, attempt) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&kind)
        .bind(key)
        .bind(attempt + 1)
        .execute(&mut *tx)
        .await?;
        let (sign_kind, id_bytes, kind_name) = match plan_id {
            Some(plan_id) => (SignKind::Plan, plan_id, "plan"),
            None => (
                SignKind::Batch,
                u64::try_from(key).unwrap_or(0).to_be_bytes().to_vec(),
                "batch",
            ),
        };
        let id = SignId {
            session: u64::try_from(session).unwrap_or(0),
            kind: sign_kind.into(),
            id: id_bytes,
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
                    uid("sign-reattempt", kind_name, &id),
                    "sign_reattempt",
                    message.clone(),
                )],
            )
            .await?;
        }
        warn!(
            kind = kind_name,
            key, attempt, "signing attempt stalled; re-attempting"
        );
        metrics::counter!(service::metrics::SIGN_REATTEMPTS, "kind" => kind_name).increment(1);
        count += 1;
    }
    tx.commit().await?;
    Ok(count)
}
