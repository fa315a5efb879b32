//! Key generation as the coordinator runs it: one round at a time, relaying
//! packages (round-2 ciphertexts only to their recipient), confirming the key
//! when every participant reports the same one, recording blame, and
//! reporting participants that stay silent past the round timeout.

use std::collections::HashMap;

use prost::Message as _;
use proto::processor_v1::{
    CoordinatorMessage, KeyConfirmed, KeyGenBlame, KeyGenRound1, KeyGenRound1Packages,
    KeyGenRound2, KeyGenRound2Packages, KeyGenStart, KeyGenerated, Participant, ProcessorIdentity,
    coordinator_message::Kind,
};
use sqlx::{PgConnection, PgPool, Row};
use tracing::{info, warn};

use link::{HandleError, OutMessage};

use crate::coordinator::CoordinatorError;

/// Advisory lock serializing the numbering of key generation sessions.
const KEYGEN_NUMBERING_LOCK: i64 = 0x4B45_5947_454E_0001;

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

fn i64_of(v: u64) -> Result<i64, HandleError> {
    i64::try_from(v).map_err(|_| HandleError::Rejected(format!("session {v} out of range")))
}

/// `ProcessorIdentity`: remember the key to put in `KeyGenStart`.
pub async fn record_identity(
    conn: &mut PgConnection,
    processor: &str,
    message: ProcessorIdentity,
) -> Result<(), HandleError> {
    if message.encryption_public_key.len() != 32 {
        return Err(HandleError::Rejected(format!(
            "identity key of {processor} is {} bytes, not 32",
            message.encryption_public_key.len()
        )));
    }
    sqlx::query(
        "INSERT INTO processor_identities (processor, encryption_public_key) VALUES ($1, $2)
         ON CONFLICT (processor) DO UPDATE SET encryption_public_key = EXCLUDED.encryption_public_key, updated_at = now()",
    )
    .bind(processor)
    .bind(&message.encryption_public_key)
    .execute(&mut *conn)
    .await?;
    info!(processor, key = %hex_of(&message.encryption_public_key), "processor identity recorded");
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The threshold a key gets when none is asked for: floor(2n/3)+1, so any
/// two signer sets share an honest majority's worth of members and fewer
/// than a third of the processors cannot stop signing.
pub fn default_threshold(n: usize) -> u32 {
    u32::try_from(n * 2 / 3 + 1).unwrap_or(u32::MAX)
}

/// Starts session `next` among `processors` (names, in index order).
/// Its span is the root of the key generation's trace: every message of the
/// session, on every service, descends from it.
#[tracing::instrument(name = "keygen", skip_all, fields(threshold = threshold, n = processors.len(), session))]
pub async fn start(
    pool: &PgPool,
    threshold: u32,
    processors: &[String],
    chain: &crate::config::ChainParams,
) -> Result<u64, CoordinatorError> {
    let n = processors.len();
    if n < 2 {
        return Err(CoordinatorError::InvalidArgument(format!(
            "a key needs at least 2 processors, got {n}"
        )));
    }
    let threshold = if threshold == 0 {
        default_threshold(n)
    } else {
        threshold
    };
    if threshold < 2 || threshold as usize > n {
        return Err(CoordinatorError::InvalidArgument(format!(
            "threshold {threshold} is not within 2..={n}"
        )));
    }
    // With t <= n/2 two disjoint signer sets could each sign a conflicting
    // payout of the same burn; more than half means any two sets overlap in
    // an honest processor, which accepts one plan per burn.
    if threshold as usize * 2 <= n {
        return Err(CoordinatorError::InvalidArgument(format!(
            "threshold {threshold} of {n} is not more than half the participants: two disjoint \
             groups could each sign a conflicting payout; ask for at least {} (or 0 for the \
             default floor(2n/3)+1 = {})",
            n / 2 + 1,
            default_threshold(n)
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for p in processors {
        if !seen.insert(p) {
            return Err(CoordinatorError::InvalidArgument(format!(
                "processor {p:?} listed twice"
            )));
        }
    }
    let mut tx = pool.begin().await?;
    let names: Vec<&str> = processors.iter().map(String::as_str).collect();
    let rows = sqlx::query(
        "SELECT processor, encryption_public_key FROM processor_identities WHERE processor = ANY($1)",
    )
    .bind(&names)
    .fetch_all(&mut *tx)
    .await?;
    let keys: HashMap<String, Vec<u8>> = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
    for p in processors {
        if !keys.contains_key(p) {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "processor {p:?} has not announced its identity key yet; is it connected?"
            )));
        }
    }
    // Serializes session numbering. An advisory lock, not a table lock: a
    // table lock would block the foreign-key checks of concurrent handlers
    // while they hold link rows this transaction needs (a deadlock).
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(KEYGEN_NUMBERING_LOCK)
        .execute(&mut *tx)
        .await?;
    let session: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(session) + 1, 0) FROM keygen_sessions")
            .fetch_one(&mut *tx)
            .await?;
    tracing::Span::current().record("session", session);
    sqlx::query(
        "INSERT INTO keygen_sessions (session, threshold, status, confirmations, window_blocks)
         VALUES ($1, $2, 'round1', $3, $4)",
    )
    .bind(session)
    .bind(i32::try_from(threshold).unwrap_or(i32::MAX))
    .bind(i64::try_from(chain.confirmations).unwrap_or(i64::MAX))
    .bind(i64::try_from(chain.window_blocks).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    let participants: Vec<Participant> = processors
        .iter()
        .enumerate()
        .map(|(i, p)| Participant {
            index: u32::try_from(i + 1).unwrap_or(u32::MAX),
            encryption_public_key: keys[p].clone(),
        })
        .collect();
    for (i, p) in processors.iter().enumerate() {
        sqlx::query(
            "INSERT INTO keygen_participants (session, idx, processor, encryption_public_key)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(session)
        .bind(i32::try_from(i + 1).unwrap_or(i32::MAX))
        .bind(p)
        .bind(&keys[p])
        .execute(&mut *tx)
        .await?;
    }
    let session_u = u64::try_from(session).unwrap_or(0);
    let mut order: Vec<(usize, &String)> = processors.iter().enumerate().collect();
    order.sort_by(|a, b| a.1.cmp(b.1));
    for (i, p) in order {
        link::enqueue(
            &mut tx,
            p,
            &[out(
                format!("keygen-start/{session}"),
                "key_gen_start",
                Kind::KeyGenStart(KeyGenStart {
                    session: session_u,
                    threshold,
                    own_index: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    participants: participants.clone(),
                    confirmations: chain.confirmations,
                    window_blocks: chain.window_blocks,
                }),
            )],
        )
        .await?;
    }
    tx.commit().await?;
    info!(session, threshold, n, "key generation started");
    Ok(session_u)
}

struct SessionRow {
    session: i64,
    attempt: i32,
    status: String,
}

/// Locks the session (serializing every handler of it: the last to arrive
/// sees everyone's submissions) and finds the sender's index.
async fn lock_session(
    conn: &mut PgConnection,
    session: u64,
    processor: &str,
) -> Result<(SessionRow, i32), HandleError> {
    let session = i64_of(session)?;
    let row = sqlx::query(
        "SELECT session, attempt, status FROM keygen_sessions WHERE session = $1 FOR NO KEY UPDATE",
    )
    .bind(session)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| HandleError::Rejected(format!("no key generation session {session}")))?;
    let s = SessionRow {
        session: row.get(0),
        attempt: row.get(1),
        status: row.get(2),
    };
    let index: i32 = sqlx::query_scalar(
        "SELECT idx FROM keygen_participants WHERE session = $1 AND processor = $2",
    )
    .bind(session)
    .bind(processor)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        HandleError::Rejected(format!(
            "{processor} is not a participant of session {session}"
        ))
    })?;
    Ok((s, index))
}

/// The participants' link ids by index, sorted by link id for lock order.
async fn participants(
    conn: &mut PgConnection,
    session: i64,
) -> Result<Vec<(i32, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT idx, processor FROM keygen_participants WHERE session = $1 ORDER BY processor",
    )
    .bind(session)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn expect_status(s: &SessionRow, status: &str, attempt: u32) -> Result<(), HandleError> {
    if s.status != status {
        return Err(HandleError::Rejected(format!(
            "session {} is in status {}, not {status}",
            s.session, s.status
        )));
    }
    if i64::from(s.attempt) != i64::from(attempt) {
        return Err(HandleError::Rejected(format!(
            "session {} is at attempt {}, not {attempt}",
            s.session, s.attempt
        )));
    }
    Ok(())
}

/// `KeyGenRound1`: store; when all are in, broadcast them.
#[tracing::instrument(name = "keygen.round1", skip_all, fields(processor = %processor, session = m.session, attempt = m.attempt))]
pub async fn round1(
    conn: &mut PgConnection,
    processor: &str,
    m: KeyGenRound1,
) -> Result<(), HandleError> {
    let (s, index) = lock_session(conn, m.session, processor).await?;
    expect_status(&s, "round1", m.attempt)?;
    let stored = sqlx::query("UPDATE keygen_participants SET round1 = $3 WHERE session = $1 AND idx = $2 AND round1 IS NULL")
        .bind(s.session)
        .bind(index)
        .bind(&m.package)
        .execute(&mut *conn)
        .await?;
    if stored.rows_affected() == 0 {
        return Err(HandleError::Rejected(format!(
            "{processor} sent round 1 of session {} twice",
            s.session
        )));
    }
    let rows = sqlx::query("SELECT idx, round1 FROM keygen_participants WHERE session = $1")
        .bind(s.session)
        .fetch_all(&mut *conn)
        .await?;
    let mut packages = HashMap::new();
    for r in &rows {
        if let Some(p) = r.get::<Option<Vec<u8>>, _>(1) {
            packages.insert(u32::try_from(r.get::<i32, _>(0)).unwrap_or(0), p);
        }
    }
    if packages.len() < rows.len() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE keygen_sessions SET status = 'round2', round_started_at = now() WHERE session = $1",
    )
    .bind(s.session)
    .execute(&mut *conn)
    .await?;
    let message = Kind::KeyGenRound1(KeyGenRound1Packages {
        session: m.session,
        attempt: m.attempt,
        packages,
    });
    for (_, link_id) in participants(conn, s.session).await? {
        link::enqueue(
            conn,
            &link_id,
            &[out(
                format!("keygen-round1-packages/{}/{}", s.session, s.attempt),
                "key_gen_round1",
                message.clone(),
            )],
        )
        .await?;
    }
    info!(
        session = s.session,
        "key generation: every round-1 package in, relayed"
    );
    Ok(())
}

/// `KeyGenRound2`: store; when all are in, send each recipient its share.
#[tracing::instrument(name = "keygen.round2", skip_all, fields(processor = %processor, session = m.session, attempt = m.attempt))]
pub async fn round2(
    conn: &mut PgConnection,
    processor: &str,
    m: KeyGenRound2,
) -> Result<(), HandleError> {
    let (s, index) = lock_session(conn, m.session, processor).await?;
    expect_status(&s, "round2", m.attempt)?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM keygen_participants WHERE session = $1")
        .bind(s.session)
        .fetch_one(&mut *conn)
        .await?;
    let mut expected: Vec<i64> = (1..=n).filter(|&i| i != i64::from(index)).collect();
    let mut got: Vec<i64> = m.packages.keys().map(|&k| i64::from(k)).collect();
    expected.sort_unstable();
    got.sort_unstable();
    if got != expected {
        return Err(HandleError::Rejected(format!(
            "{processor} sent round-2 packages for {got:?}, expected {expected:?}"
        )));
    }
    let done = sqlx::query("UPDATE keygen_participants SET round2_done = TRUE WHERE session = $1 AND idx = $2 AND NOT round2_done")
        .bind(s.session)
        .bind(index)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(HandleError::Rejected(format!(
            "{processor} sent round 2 of session {} twice",
            s.session
        )));
    }
    for (to, ciphertext) in &m.packages {
        sqlx::query("INSERT INTO keygen_round2 (session, from_idx, to_idx, ciphertext) VALUES ($1, $2, $3, $4)")
            .bind(s.session)
            .bind(index)
            .bind(i32::try_from(*to).unwrap_or(i32::MAX))
            .bind(ciphertext)
            .execute(&mut *conn)
            .await?;
    }
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM keygen_participants WHERE session = $1 AND NOT round2_done",
    )
    .bind(s.session)
    .fetch_one(&mut *conn)
    .await?;
    if pending > 0 {
        return Ok(());
    }
    sqlx::query("UPDATE keygen_sessions SET status = 'generating', round_started_at = now() WHERE session = $1")
        .bind(s.session)
        .execute(&mut *conn)
        .await?;
    for (to, link_id) in participants(conn, s.session).await? {
        let rows = sqlx::query(
            "SELECT from_idx, ciphertext FROM keygen_round2 WHERE session = $1 AND to_idx = $2",
        )
        .bind(s.session)
        .bind(to)
        .fetch_all(&mut *conn)
        .await?;
        let packages = rows
            .into_iter()
            .map(|r| {
                (
                    u32::try_from(r.get::<i32, _>(0)).unwrap_or(0),
                    r.get::<Vec<u8>, _>(1),
                )
            })
            .collect();
        let message = Kind::KeyGenRound2(KeyGenRound2Packages {
            session: m.session,
            attempt: m.attempt,
            packages,
        });
        link::enqueue(
            conn,
            &link_id,
            &[out(
                format!("keygen-round2-packages/{}/{}", s.session, s.attempt),
                "key_gen_round2",
                message,
            )],
        )
        .await?;
    }
    info!(
        session = s.session,
        "key generation: every round-2 package in, relayed to recipients"
    );
    Ok(())
}

/// `KeyGenerated`: when everyone reported, confirm if they agree.
#[tracing::instrument(name = "keygen.generated", skip_all, fields(processor = %processor, session = m.session))]
pub async fn generated(
    conn: &mut PgConnection,
    processor: &str,
    m: KeyGenerated,
) -> Result<(), HandleError> {
    let (s, index) = lock_session(conn, m.session, processor).await?;
    if s.status != "generating" {
        return Err(HandleError::Rejected(format!(
            "session {} is in status {}, not generating",
            s.session, s.status
        )));
    }
    sqlx::query("UPDATE keygen_participants SET group_key = $3, monero_address = $4 WHERE session = $1 AND idx = $2")
        .bind(s.session)
        .bind(index)
        .bind(&m.group_key)
        .bind(&m.monero_address)
        .execute(&mut *conn)
        .await?;
    let rows = sqlx::query("SELECT processor, group_key, monero_address FROM keygen_participants WHERE session = $1 ORDER BY idx")
        .bind(s.session)
        .fetch_all(&mut *conn)
        .await?;
    let reports: Vec<(String, Option<Vec<u8>>, Option<String>)> = rows
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    if reports.iter().any(|r| r.1.is_none()) {
        return Ok(());
    }
    let first = reports[0].clone();
    if let Some(odd) = reports.iter().find(|r| r.1 != first.1 || r.2 != first.2) {
        let failure = format!(
            "participants disagree on the key: {} reported {}, {} reported {}",
            first.0,
            hex_of(first.1.as_deref().unwrap_or_default()),
            odd.0,
            hex_of(odd.1.as_deref().unwrap_or_default())
        );
        warn!(session = s.session, "{failure}");
        sqlx::query(
            "UPDATE keygen_sessions SET status = 'failed', failure = $2 WHERE session = $1",
        )
        .bind(s.session)
        .bind(&failure)
        .execute(&mut *conn)
        .await?;
        return Ok(());
    }
    let group_key = first.1.unwrap_or_default();
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - created_at)::float8 FROM keygen_sessions WHERE session = $1",
    )
    .bind(s.session)
    .fetch_optional(&mut *conn)
    .await?;
    metrics::counter!(service::metrics::KEYGEN_COMPLETED).increment(1);
    if let Some(seconds) = seconds {
        metrics::histogram!(service::metrics::KEYGEN_SECONDS).record(seconds);
    }
    sqlx::query("UPDATE keygen_sessions SET status = 'confirmed', group_key = $2, monero_address = $3 WHERE session = $1")
        .bind(s.session)
        .bind(&group_key)
        .bind(&first.2)
        .execute(&mut *conn)
        .await?;
    // KeyConfirmed leaves with the next settlement block, which fixes the
    // Monero height the key is scanned from (see `activate`).
    info!(session = s.session, group_key = %hex_of(&group_key), address = first.2.as_deref().unwrap_or(""), "key confirmed by every participant");
    Ok(())
}

/// Gives every confirmed key still without one its activation height
/// (`monero_horizon + 1` of the settlement block being produced) and sends
/// `KeyConfirmed` to its participants, after that block on every link: no
/// processor can have scanned the activation block before it learns of the
/// key. Runs in the settlement block's transaction.
pub async fn activate(conn: &mut PgConnection, monero_horizon: u64) -> Result<(), sqlx::Error> {
    let activation = monero_horizon.saturating_add(1);
    let rows = sqlx::query(
        "UPDATE keygen_sessions SET activation_height = $1
         WHERE status = 'confirmed' AND activation_height IS NULL
         RETURNING session, group_key",
    )
    .bind(i64::try_from(activation).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    let mut confirmed: Vec<(i64, Vec<u8>)> = Vec::with_capacity(rows.len());
    for r in rows {
        confirmed.push((
            r.try_get("session")?,
            r.try_get::<Option<Vec<u8>>, _>("group_key")?
                .unwrap_or_default(),
        ));
    }
    confirmed.sort();
    for (session, group_key) in confirmed {
        let message = Kind::KeyConfirmed(KeyConfirmed {
            session: u64::try_from(session).unwrap_or(0),
            group_key,
            activation_height: activation,
        });
        for (_, link_id) in participants(conn, session).await? {
            link::enqueue(
                conn,
                &link_id,
                &[out(
                    format!("keygen-confirmed/{session}"),
                    "key_confirmed",
                    message.clone(),
                )],
            )
            .await?;
        }
        info!(
            session,
            activation_height = activation,
            "key confirmed to its participants, scanned from its activation height"
        );
    }
    Ok(())
}

/// Whether a confirmed key waits for its activation height.
pub async fn activation_pending(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM keygen_sessions WHERE status = 'confirmed' AND activation_height IS NULL)",
    )
    .fetch_one(pool)
    .await
}

/// `KeyGenBlame`: judge it from public data (the accused's round-1
/// package, its round-2 ciphertext to the accuser as relayed, the
/// accuser's decryption proof), record it with the proven culprit, and fail
/// the session naming that culprit: the accused if its package or share is
/// invalid, the accuser if what it accused is valid.
pub async fn blame(
    conn: &mut PgConnection,
    processor: &str,
    m: KeyGenBlame,
) -> Result<(), HandleError> {
    let (s, index) = lock_session(conn, m.session, processor).await?;
    let accused_index = i32::try_from(m.accused).unwrap_or(0);
    let accused: Option<(String, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT processor, round1 FROM keygen_participants WHERE session = $1 AND idx = $2",
    )
    .bind(s.session)
    .bind(accused_index)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((accused, accused_round1)) = accused else {
        return Err(HandleError::Rejected(format!(
            "{processor} blamed participant {}, who is not in session {}",
            m.accused, s.session
        )));
    };
    let threshold: i32 =
        sqlx::query_scalar("SELECT threshold FROM keygen_sessions WHERE session = $1")
            .bind(s.session)
            .fetch_one(&mut *conn)
            .await?;
    let identities: std::collections::BTreeMap<u16, [u8; 32]> =
        sqlx::query_as::<_, (i32, Option<Vec<u8>>, Option<Vec<u8>>)>(
            "SELECT p.idx, p.encryption_public_key, i.encryption_public_key
         FROM keygen_participants p LEFT JOIN processor_identities i USING (processor)
         WHERE p.session = $1",
        )
        .bind(s.session)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .filter_map(|(i, at_start, latest)| {
            // Sessions started before the key was kept per session: the latest.
            let key: [u8; 32] = at_start.or(latest)?.try_into().ok()?;
            Some((u16::try_from(i).ok()?, key))
        })
        .collect();
    let ciphertext: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT ciphertext FROM keygen_round2 WHERE session = $1 AND from_idx = $2 AND to_idx = $3",
    )
    .bind(s.session)
    .bind(accused_index)
    .bind(index)
    .fetch_optional(&mut *conn)
    .await?;
    let small = |v: i32| u16::try_from(v).unwrap_or(0);
    let finding = if accused_index == index {
        processor::keystore::dkg::Finding::Accuser("it accused itself".into())
    } else {
        processor::keystore::dkg::judge_blame(&processor::keystore::dkg::BlameCase {
            session: u64::try_from(s.session).unwrap_or(0),
            attempt: m.attempt,
            threshold: small(threshold),
            accuser: small(index),
            accused: small(accused_index),
            identities: &identities,
            accused_round1: accused_round1.as_deref(),
            ciphertext: ciphertext.as_deref(),
            decryption_proof: &m.decryption_proof,
        })
    };
    let (culprit, failure) = match &finding {
        processor::keystore::dkg::Finding::Accused(why) => (
            accused_index,
            format!("{processor} blamed {accused}, proven: {why} ({})", m.reason),
        ),
        processor::keystore::dkg::Finding::Accuser(why) => (
            index,
            format!(
                "{processor} blamed {accused} falsely: {why}; {processor} is at fault ({})",
                m.reason
            ),
        ),
    };
    sqlx::query(
        "INSERT INTO keygen_blames (session, accuser, accused, reason, evidence, culprit)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (session, accuser) DO NOTHING",
    )
    .bind(s.session)
    .bind(index)
    .bind(accused_index)
    .bind(&m.reason)
    .bind(&m.evidence)
    .bind(culprit)
    .execute(&mut *conn)
    .await?;
    warn!(session = s.session, "{failure}");
    sqlx::query("UPDATE keygen_sessions SET status = 'failed', failure = COALESCE(failure, $2) WHERE session = $1")
        .bind(s.session)
        .bind(&failure)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Marks sessions whose current round outlived `timeout` as failed, naming
/// the participants that did not answer. Returns how many it marked.
pub async fn expire(pool: &PgPool, timeout: std::time::Duration) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT session, status FROM keygen_sessions
         WHERE status IN ('round1', 'round2', 'generating') AND round_started_at < now() - $1::interval
         FOR NO KEY UPDATE SKIP LOCKED",
    )
    .bind(format!("{} milliseconds", timeout.as_millis()))
    .fetch_all(&mut *tx)
    .await?;
    let mut marked = 0;
    for row in rows {
        let session: i64 = row.get(0);
        let status: String = row.get(1);
        let condition = match status.as_str() {
            "round1" => "round1 IS NULL",
            "round2" => "NOT round2_done",
            _ => "group_key IS NULL",
        };
        let silent: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT processor FROM keygen_participants WHERE session = $1 AND {condition} ORDER BY idx"
        )))
        .bind(session)
        .fetch_all(&mut *tx)
        .await?;
        let failure = format!(
            "{status} timed out after {timeout:?}; silent: {}",
            silent.join(", ")
        );
        warn!(session, "key generation {failure}");
        sqlx::query("UPDATE keygen_sessions SET status = 'failed', failure = $2, silent = $3 WHERE session = $1")
            .bind(session)
            .bind(&failure)
            .bind(&silent)
            .execute(&mut *tx)
            .await?;
        marked += 1;
    }
    tx.commit().await?;
    Ok(marked)
}

/// A session's progress for the admin API, read from one snapshot: a
/// session, its participants and its blames are always seen as one commit
/// left them (a blame is never shown beside the status it changed).
pub async fn status(
    pool: &PgPool,
    session: Option<u64>,
) -> Result<Vec<proto::coordinator_v1::KeyGenStatus>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let sessions = sqlx::query(
        "SELECT session, threshold, status, group_key, monero_address, failure, silent
         FROM keygen_sessions WHERE $1::bigint IS NULL OR session = $1 ORDER BY session",
    )
    .bind(session.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::with_capacity(sessions.len());
    for s in sessions {
        let id: i64 = s.get(0);
        let participants = sqlx::query(
            "SELECT idx, processor, round1 IS NOT NULL, round2_done, group_key FROM keygen_participants WHERE session = $1 ORDER BY idx",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let names: HashMap<i32, String> =
            participants.iter().map(|p| (p.get(0), p.get(1))).collect();
        let blames = sqlx::query("SELECT accuser, accused, reason FROM keygen_blames WHERE session = $1 ORDER BY accuser")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        out.push(proto::coordinator_v1::KeyGenStatus {
            session: u64::try_from(id).unwrap_or(0),
            threshold: u32::try_from(s.get::<i32, _>(1)).unwrap_or(0),
            status: s.get(2),
            group_key: s
                .get::<Option<Vec<u8>>, _>(3)
                .map(|k| hex_of(&k))
                .unwrap_or_default(),
            monero_address: s.get::<Option<String>, _>(4).unwrap_or_default(),
            failure: s.get::<Option<String>, _>(5).unwrap_or_default(),
            participants: participants
                .iter()
                .map(|p| proto::coordinator_v1::KeyGenParticipant {
                    index: u32::try_from(p.get::<i32, _>(0)).unwrap_or(0),
                    processor: p.get(1),
                    round1: p.get(2),
                    round2: p.get(3),
                    group_key: p
                        .get::<Option<Vec<u8>>, _>(4)
                        .map(|k| hex_of(&k))
                        .unwrap_or_default(),
                })
                .collect(),
            blames: blames
                .iter()
                .map(|b| {
                    let name = |i: i32| names.get(&i).cloned().unwrap_or_else(|| format!("#{i}"));
                    proto::coordinator_v1::KeyGenBlameView {
                        accuser: name(b.get(0)),
                        accused: name(b.get(1)),
                        reason: b.get(2),
                    }
                })
                .collect(),
            silent: s.get(6),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_threshold_of_half_or_less_is_refused_and_zero_means_the_default() {
        // Refused before the database is touched: a pool that never connects.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(500))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool parses its URL");
        let names: Vec<String> = (1..=4).map(|i| format!("p{i}")).collect();
        let chain = crate::config::KeygenConfig::default().chain();
        let err = start(&pool, 2, &names, &chain).await.expect_err("2 of 4");
        assert!(
            matches!(&err, CoordinatorError::InvalidArgument(m) if m.contains("not more than half")),
            "{err}"
        );
        assert_eq!(default_threshold(3), 3);
        assert_eq!(default_threshold(4), 3);
        assert_eq!(default_threshold(100), 67);
        // 0 asks for the default, which passes the rule and goes on to the
        // database (unreachable here).
        let err = start(&pool, 0, &names, &chain)
            .await
            .expect_err("no database");
        assert!(matches!(err, CoordinatorError::Storage(_)), "{err}");
    }
}
