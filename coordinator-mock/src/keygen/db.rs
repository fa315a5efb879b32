//! The key generation tables: `processor_identities`, `keygen_sessions`,
//! `keygen_participants`, `keygen_round2`, `keygen_blames`. Every query of
//! them lives here; other modules ask through these functions.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};

use crate::common::text_enum;

text_enum! {
    /// `keygen_sessions.status`: where a session is.
    pub enum SessionStatus {
        /// Collecting round-1 packages.
        Round1 = "round1",
        /// Collecting round-2 shares.
        Round2 = "round2",
        /// Waiting for every participant's key.
        Generating = "generating",
        /// Every participant reported the same key.
        Confirmed = "confirmed",
        /// Blamed, disagreeing, or timed out.
        Failed = "failed",
    }
}

/// The gauge of sessions by status.
pub const COUNT_BY_STATUS: &str = "SELECT status, count(*) FROM keygen_sessions GROUP BY status";

/// Advisory lock serializing the numbering of key generation sessions.
const KEYGEN_NUMBERING_LOCK: i64 = 0x4B45_5947_454E_0001;

/// A session as its handlers see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    /// Its number.
    pub session: i64,
    /// The current attempt.
    pub attempt: i32,
    /// Where it is.
    pub status: SessionStatus,
}

/// One participant's report of the key it generated.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyReport {
    /// The participant.
    pub processor: String,
    /// Its group key (`None`: not reported yet).
    pub group_key: Option<Vec<u8>>,
    /// Its Monero address.
    pub monero_address: Option<String>,
}

/// A participant's index and one byte column of its row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IndexedBytes {
    /// Its index.
    pub idx: i32,
    /// The bytes (`None`: not in yet).
    pub bytes: Option<Vec<u8>>,
}

/// A participant's index and link id.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ParticipantLink {
    /// Its index.
    pub idx: i32,
    /// Its link id (the processor's name).
    pub processor: String,
}

/// The participant a blame accuses.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Accused {
    /// Its name.
    pub processor: String,
    /// Its round-1 package as relayed.
    pub round1: Option<Vec<u8>>,
}

/// A participant's identity keys: when its session started, and now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ParticipantIdentity {
    /// Its index.
    pub idx: i32,
    /// The key it had when the session started.
    pub at_start: Option<Vec<u8>>,
    /// The key it announced last.
    pub latest: Option<Vec<u8>>,
}

/// A session whose round outlived the timeout.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stalled {
    /// Its number.
    pub session: i64,
    /// The round it is stuck in.
    pub status: SessionStatus,
}

/// A session for the admin API.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionView {
    /// Its number.
    pub session: i64,
    /// t.
    pub threshold: i32,
    /// Where it is.
    pub status: SessionStatus,
    /// The confirmed group key.
    pub group_key: Option<Vec<u8>>,
    /// The confirmed address.
    pub monero_address: Option<String>,
    /// Why it failed.
    pub failure: Option<String>,
    /// Who stayed silent past the timeout.
    pub silent: Vec<String>,
    /// The failed session this one re-attempts.
    pub retry_of: Option<i64>,
    /// Left out of this attempt (and the ones before it).
    pub excluded: Vec<String>,
    /// The session re-attempting this one.
    pub retried_by: Option<i64>,
    /// 1 for a first attempt.
    pub try_number: i32,
}

/// A participant's progress for the admin API.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ParticipantView {
    /// Its index.
    pub idx: i32,
    /// Its name.
    pub processor: String,
    /// Whether its round-1 package is in.
    pub round1: bool,
    /// Whether its round-2 shares are in.
    pub round2_done: bool,
    /// The key it reported.
    pub group_key: Option<Vec<u8>>,
}

/// A DKG blame for the admin API.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BlameView {
    /// The accuser's index.
    pub accuser: i32,
    /// The accused's index.
    pub accused: i32,
    /// The accuser's reason.
    pub reason: String,
}

/// Records (or replaces) a processor's identity key.
pub async fn upsert_identity(
    conn: &mut PgConnection,
    processor: &str,
    key: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO processor_identities (processor, encryption_public_key) VALUES ($1, $2)
         ON CONFLICT (processor) DO UPDATE SET encryption_public_key = EXCLUDED.encryption_public_key, updated_at = now()",
    )
    .bind(processor)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// How many processors announced an identity key.
pub async fn identity_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM processor_identities")
        .fetch_one(pool)
        .await
}

/// The identity keys of the named processors that announced one.
pub async fn identities(
    conn: &mut PgConnection,
    names: &[&str],
) -> Result<HashMap<String, Vec<u8>>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Identity {
        processor: String,
        encryption_public_key: Vec<u8>,
    }
    let rows: Vec<Identity> = sqlx::query_as(
        "SELECT processor, encryption_public_key FROM processor_identities WHERE processor = ANY($1)",
    )
    .bind(names)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.processor, r.encryption_public_key))
        .collect())
}

/// Takes the numbering lock for this transaction and returns the next
/// session number. An advisory lock, not a table lock: a table lock would
/// block the foreign-key checks of concurrent handlers while they hold link
/// rows this transaction needs (a deadlock).
pub async fn next_session(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(KEYGEN_NUMBERING_LOCK)
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar("SELECT COALESCE(MAX(session) + 1, 0) FROM keygen_sessions")
        .fetch_one(conn)
        .await
}

/// How many sessions were ever started.
pub async fn session_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM keygen_sessions")
        .fetch_one(pool)
        .await
}

/// What a new session is started with.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Its number (from `next_session`).
    pub session: i64,
    /// t.
    pub threshold: i32,
    /// Blocks on top of a final Monero block.
    pub confirmations: i64,
    /// Finalized blocks per coordination window.
    pub window_blocks: i64,
    /// The failed session this one re-attempts.
    pub retry_of: Option<i64>,
    /// The participants left out so far (of every earlier attempt).
    pub excluded: Vec<String>,
    /// 1 for a first attempt.
    pub try_number: i32,
}

/// A new session in round 1.
pub async fn insert_session(conn: &mut PgConnection, new: &NewSession) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO keygen_sessions
             (session, threshold, status, confirmations, window_blocks, retry_of, excluded, try_number)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(new.session)
    .bind(new.threshold)
    .bind(SessionStatus::Round1)
    .bind(new.confirmations)
    .bind(new.window_blocks)
    .bind(new.retry_of)
    .bind(&new.excluded)
    .bind(new.try_number)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a failed session was started with, for its re-attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionParams {
    /// t.
    pub threshold: i32,
    /// Blocks on top of a final Monero block (`None`: sessions from before
    /// they were fixed per key).
    pub confirmations: Option<i64>,
    /// Finalized blocks per coordination window.
    pub window_blocks: Option<i64>,
    /// Left out of it and of the attempts before it.
    pub excluded: Vec<String>,
    /// Its attempt number.
    pub try_number: i32,
}

/// A session's parameters.
pub async fn params(conn: &mut PgConnection, session: i64) -> Result<SessionParams, sqlx::Error> {
    sqlx::query_as(
        "SELECT threshold, confirmations, window_blocks, excluded, try_number
         FROM keygen_sessions WHERE session = $1",
    )
    .bind(session)
    .fetch_one(conn)
    .await
}

/// The session re-attempting `session`, if one was started.
pub async fn retried_by(conn: &mut PgConnection, session: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT session FROM keygen_sessions WHERE retry_of = $1")
        .bind(session)
        .fetch_optional(conn)
        .await
}

/// A session's participants' names, in index order.
pub async fn participants_in_order(
    conn: &mut PgConnection,
    session: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT processor FROM keygen_participants WHERE session = $1 ORDER BY idx")
        .bind(session)
        .fetch_all(conn)
        .await
}

/// Adds `note` to a failed session's reason.
pub async fn append_failure(
    conn: &mut PgConnection,
    session: i64,
    note: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keygen_sessions SET failure = COALESCE(failure || '; ', '') || $2 WHERE session = $1",
    )
    .bind(session)
    .bind(note)
    .execute(conn)
    .await?;
    Ok(())
}

/// A participant of a new session, with the identity key it has now.
pub async fn insert_participant(
    conn: &mut PgConnection,
    session: i64,
    idx: i32,
    processor: &str,
    key: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO keygen_participants (session, idx, processor, encryption_public_key)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(session)
    .bind(idx)
    .bind(processor)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks a session (serializing every handler of it), if it exists.
pub async fn lock_session(
    conn: &mut PgConnection,
    session: i64,
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT session, attempt, status FROM keygen_sessions WHERE session = $1 FOR NO KEY UPDATE",
    )
    .bind(session)
    .fetch_optional(conn)
    .await
}

/// `processor`'s index in `session`, if it is a participant.
pub async fn index_of(
    conn: &mut PgConnection,
    session: i64,
    processor: &str,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar("SELECT idx FROM keygen_participants WHERE session = $1 AND processor = $2")
        .bind(session)
        .bind(processor)
        .fetch_optional(conn)
        .await
}

/// `processor`'s index in `session` and the session's t, if it is a
/// participant.
pub async fn index_and_threshold(
    conn: &mut PgConnection,
    session: i64,
    processor: &str,
) -> Result<Option<(i32, i32)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        idx: i32,
        threshold: i32,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT p.idx, s.threshold FROM keygen_participants p JOIN keygen_sessions s USING (session)
         WHERE p.session = $1 AND p.processor = $2",
    )
    .bind(session)
    .bind(processor)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.idx, r.threshold)))
}

/// The name of participant `idx` of `session`.
pub async fn participant_name(
    conn: &mut PgConnection,
    session: i64,
    idx: i32,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT processor FROM keygen_participants WHERE session = $1 AND idx = $2")
        .bind(session)
        .bind(idx)
        .fetch_optional(conn)
        .await
}

/// The newest confirmed key `processor` holds a share of: (session, index).
pub async fn newest_key_of(
    conn: &mut PgConnection,
    processor: &str,
) -> Result<Option<(i64, i32)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        session: i64,
        idx: i32,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT s.session, p.idx FROM keygen_sessions s JOIN keygen_participants p USING (session)
         WHERE s.status = $2 AND p.processor = $1 ORDER BY s.session DESC LIMIT 1",
    )
    .bind(processor)
    .bind(SessionStatus::Confirmed)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.session, r.idx)))
}

/// Every confirmed key's activation height, once given: (session,
/// activation).
pub async fn activations(pool: &PgPool) -> Result<Vec<(i64, Option<i64>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT session, activation_height FROM keygen_sessions WHERE status = $1 ORDER BY session",
    )
    .bind(SessionStatus::Confirmed)
    .fetch_all(pool)
    .await
}

/// The newest key given an activation height, if any.
pub async fn newest_activated(conn: &mut PgConnection) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT session FROM keygen_sessions WHERE status = $1 AND activation_height IS NOT NULL
         ORDER BY activation_height DESC, session DESC LIMIT 1",
    )
    .bind(SessionStatus::Confirmed)
    .fetch_optional(conn)
    .await
}

/// `processor`'s index in confirmed key `session`, if it holds a share.
pub async fn index_in(
    conn: &mut PgConnection,
    processor: &str,
    session: i64,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT p.idx FROM keygen_sessions s JOIN keygen_participants p USING (session)
         WHERE s.status = $3 AND p.processor = $1 AND s.session = $2",
    )
    .bind(processor)
    .bind(session)
    .bind(SessionStatus::Confirmed)
    .fetch_optional(conn)
    .await
}

/// The newest confirmed key: (session, group key).
pub async fn newest_confirmed(
    pool: &PgPool,
) -> Result<Option<(i64, Option<Vec<u8>>)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        session: i64,
        group_key: Option<Vec<u8>>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT session, group_key FROM keygen_sessions WHERE status = $1 ORDER BY session DESC LIMIT 1",
    )
    .bind(SessionStatus::Confirmed)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.session, r.group_key)))
}

/// The group key of session `session` (`None`: not confirmed, or no such
/// session).
pub async fn group_key(
    conn: &mut PgConnection,
    session: i64,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    let key: Option<Option<Vec<u8>>> =
        sqlx::query_scalar("SELECT group_key FROM keygen_sessions WHERE session = $1")
            .bind(session)
            .fetch_optional(conn)
            .await?;
    Ok(key.flatten())
}

/// The link ids of the given indices of a session (all if `None`), sorted
/// by link id: the lock order of links.
pub async fn participant_links(
    conn: &mut PgConnection,
    session: i64,
    indices: Option<&[i32]>,
) -> Result<Vec<ParticipantLink>, sqlx::Error> {
    sqlx::query_as(
        "SELECT idx, processor FROM keygen_participants
         WHERE session = $1 AND ($2::int[] IS NULL OR idx = ANY($2)) ORDER BY processor",
    )
    .bind(session)
    .bind(indices.map(<[i32]>::to_vec))
    .fetch_all(conn)
    .await
}

/// How many participants a session has.
pub async fn participant_count(conn: &mut PgConnection, session: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM keygen_participants WHERE session = $1")
        .bind(session)
        .fetch_one(conn)
        .await
}

/// t of a session.
pub async fn threshold(conn: &mut PgConnection, session: i64) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT threshold FROM keygen_sessions WHERE session = $1")
        .bind(session)
        .fetch_one(conn)
        .await
}

/// Stores a participant's round-1 package; false if it had sent one.
pub async fn store_round1(
    conn: &mut PgConnection,
    session: i64,
    idx: i32,
    package: &[u8],
) -> Result<bool, sqlx::Error> {
    let stored = sqlx::query(
        "UPDATE keygen_participants SET round1 = $3 WHERE session = $1 AND idx = $2 AND round1 IS NULL",
    )
    .bind(session)
    .bind(idx)
    .bind(package)
    .execute(conn)
    .await?;
    Ok(stored.rows_affected() > 0)
}

/// Every participant's round-1 package (`None`: not in yet).
pub async fn round1_packages(
    conn: &mut PgConnection,
    session: i64,
) -> Result<Vec<IndexedBytes>, sqlx::Error> {
    sqlx::query_as("SELECT idx, round1 AS bytes FROM keygen_participants WHERE session = $1")
        .bind(session)
        .fetch_all(conn)
        .await
}

/// Moves a session to its next round, whose timeout starts now.
pub async fn advance(
    conn: &mut PgConnection,
    session: i64,
    status: SessionStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keygen_sessions SET status = $2, round_started_at = now() WHERE session = $1",
    )
    .bind(session)
    .bind(status)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a participant's round 2 done; false if it was.
pub async fn mark_round2_done(
    conn: &mut PgConnection,
    session: i64,
    idx: i32,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE keygen_participants SET round2_done = TRUE WHERE session = $1 AND idx = $2 AND NOT round2_done",
    )
    .bind(session)
    .bind(idx)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Stores a participant's round-2 ciphertexts as relayed (recipient index,
/// ciphertext), all in one statement: at n = 100 one message carries 99,
/// and a round trip per row made the n^2 inserts the slowest part of key
/// generation.
pub async fn insert_round2(
    conn: &mut PgConnection,
    session: i64,
    from: i32,
    packages: &[(i32, &[u8])],
) -> Result<(), sqlx::Error> {
    let (to, ciphertexts): (Vec<i32>, Vec<&[u8]>) = packages.iter().copied().unzip();
    sqlx::query(
        "INSERT INTO keygen_round2 (session, from_idx, to_idx, ciphertext)
         SELECT $1, $2, to_idx, ciphertext FROM UNNEST($3::int4[], $4::bytea[]) AS p(to_idx, ciphertext)",
    )
    .bind(session)
    .bind(from)
    .bind(to)
    .bind(ciphertexts)
    .execute(conn)
    .await?;
    Ok(())
}

/// How many participants have not finished round 2.
pub async fn round2_pending(conn: &mut PgConnection, session: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM keygen_participants WHERE session = $1 AND NOT round2_done",
    )
    .bind(session)
    .fetch_one(conn)
    .await
}

/// The round-2 ciphertexts addressed to participant `to`, by sender.
pub async fn round2_for(
    conn: &mut PgConnection,
    session: i64,
    to: i32,
) -> Result<Vec<IndexedBytes>, sqlx::Error> {
    sqlx::query_as(
        "SELECT from_idx AS idx, ciphertext AS bytes FROM keygen_round2 WHERE session = $1 AND to_idx = $2",
    )
    .bind(session)
    .bind(to)
    .fetch_all(conn)
    .await
}

/// The round-2 ciphertext `from` sent to `to`, as relayed.
pub async fn round2_ciphertext(
    conn: &mut PgConnection,
    session: i64,
    from: i32,
    to: i32,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT ciphertext FROM keygen_round2 WHERE session = $1 AND from_idx = $2 AND to_idx = $3",
    )
    .bind(session)
    .bind(from)
    .bind(to)
    .fetch_optional(conn)
    .await
}

/// Records the key a participant generated.
pub async fn store_generated(
    conn: &mut PgConnection,
    session: i64,
    idx: i32,
    group_key: &[u8],
    monero_address: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keygen_participants SET group_key = $3, monero_address = $4 WHERE session = $1 AND idx = $2",
    )
    .bind(session)
    .bind(idx)
    .bind(group_key)
    .bind(monero_address)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every participant's key report, by index.
pub async fn key_reports(
    conn: &mut PgConnection,
    session: i64,
) -> Result<Vec<KeyReport>, sqlx::Error> {
    sqlx::query_as(
        "SELECT processor, group_key, monero_address FROM keygen_participants WHERE session = $1 ORDER BY idx",
    )
    .bind(session)
    .fetch_all(conn)
    .await
}

/// Fails a session with `failure`, replacing an earlier one.
pub async fn fail(conn: &mut PgConnection, session: i64, failure: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE keygen_sessions SET status = $3, failure = $2 WHERE session = $1")
        .bind(session)
        .bind(failure)
        .bind(SessionStatus::Failed)
        .execute(conn)
        .await?;
    Ok(())
}

/// Fails a session; an earlier failure stays the one reported.
pub async fn fail_first(
    conn: &mut PgConnection,
    session: i64,
    failure: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keygen_sessions SET status = $3, failure = COALESCE(failure, $2) WHERE session = $1",
    )
    .bind(session)
    .bind(failure)
    .bind(SessionStatus::Failed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Fails a session that timed out, naming who stayed silent.
pub async fn fail_silent(
    conn: &mut PgConnection,
    session: i64,
    failure: &str,
    silent: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keygen_sessions SET status = $4, failure = $2, silent = $3 WHERE session = $1",
    )
    .bind(session)
    .bind(failure)
    .bind(silent)
    .bind(SessionStatus::Failed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Seconds since the session started.
pub async fn age_seconds(
    conn: &mut PgConnection,
    session: i64,
) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - created_at)::float8 FROM keygen_sessions WHERE session = $1",
    )
    .bind(session)
    .fetch_optional(conn)
    .await
}

/// Confirms a session's key.
pub async fn confirm(
    conn: &mut PgConnection,
    session: i64,
    group_key: &[u8],
    monero_address: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keygen_sessions SET status = $4, group_key = $2, monero_address = $3 WHERE session = $1",
    )
    .bind(session)
    .bind(group_key)
    .bind(monero_address)
    .bind(SessionStatus::Confirmed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives every confirmed key without one the activation height; returns
/// those keys as (session, group key), sorted by session.
pub async fn activate(
    conn: &mut PgConnection,
    activation: i64,
) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        session: i64,
        group_key: Option<Vec<u8>>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "UPDATE keygen_sessions SET activation_height = $1
         WHERE status = $2 AND activation_height IS NULL
         RETURNING session, group_key",
    )
    .bind(activation)
    .bind(SessionStatus::Confirmed)
    .fetch_all(conn)
    .await?;
    let mut confirmed: Vec<(i64, Vec<u8>)> = rows
        .into_iter()
        .map(|r| (r.session, r.group_key.unwrap_or_default()))
        .collect();
    confirmed.sort();
    Ok(confirmed)
}

/// Whether a confirmed key waits for its activation height.
pub async fn activation_pending(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM keygen_sessions WHERE status = $1 AND activation_height IS NULL)",
    )
    .bind(SessionStatus::Confirmed)
    .fetch_one(pool)
    .await
}

/// Participant `idx` of `session` as a blame accuses it.
pub async fn accused(
    conn: &mut PgConnection,
    session: i64,
    idx: i32,
) -> Result<Option<Accused>, sqlx::Error> {
    sqlx::query_as(
        "SELECT processor, round1 FROM keygen_participants WHERE session = $1 AND idx = $2",
    )
    .bind(session)
    .bind(idx)
    .fetch_optional(conn)
    .await
}

/// Every participant's identity key, at the session's start and now.
pub async fn participant_identities(
    conn: &mut PgConnection,
    session: i64,
) -> Result<Vec<ParticipantIdentity>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.idx, p.encryption_public_key AS at_start, i.encryption_public_key AS latest
         FROM keygen_participants p LEFT JOIN processor_identities i USING (processor)
         WHERE p.session = $1",
    )
    .bind(session)
    .fetch_all(conn)
    .await
}

/// A DKG blame with its proven culprit (the first per accuser counts).
pub async fn insert_blame(
    conn: &mut PgConnection,
    session: i64,
    accuser: i32,
    accused: i32,
    reason: &str,
    evidence: &[u8],
    culprit: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO keygen_blames (session, accuser, accused, reason, evidence, culprit)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (session, accuser) DO NOTHING",
    )
    .bind(session)
    .bind(accuser)
    .bind(accused)
    .bind(reason)
    .bind(evidence)
    .bind(culprit)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks the sessions whose round started more than `timeout` ago (others
/// are skipped: their handler is running).
pub async fn lock_stalled(
    conn: &mut PgConnection,
    timeout: std::time::Duration,
) -> Result<Vec<Stalled>, sqlx::Error> {
    sqlx::query_as(
        "SELECT session, status FROM keygen_sessions
         WHERE status = ANY($2) AND round_started_at < now() - $1::interval
         FOR NO KEY UPDATE SKIP LOCKED",
    )
    .bind(format!("{} milliseconds", timeout.as_millis()))
    .bind(
        [
            SessionStatus::Round1,
            SessionStatus::Round2,
            SessionStatus::Generating,
        ]
        .map(SessionStatus::as_str)
        .to_vec(),
    )
    .fetch_all(conn)
    .await
}

/// The participants that have not answered `status`'s round, by index.
pub async fn silent(
    conn: &mut PgConnection,
    session: i64,
    status: SessionStatus,
) -> Result<Vec<String>, sqlx::Error> {
    let query = match status {
        SessionStatus::Round1 => {
            "SELECT processor FROM keygen_participants WHERE session = $1 AND round1 IS NULL ORDER BY idx"
        }
        SessionStatus::Round2 => {
            "SELECT processor FROM keygen_participants WHERE session = $1 AND NOT round2_done ORDER BY idx"
        }
        _ => {
            "SELECT processor FROM keygen_participants WHERE session = $1 AND group_key IS NULL ORDER BY idx"
        }
    };
    sqlx::query_scalar(query)
        .bind(session)
        .fetch_all(conn)
        .await
}

/// Makes the transaction a read-only snapshot: what it reads is what one
/// commit left.
pub async fn snapshot(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(conn)
        .await?;
    Ok(())
}

/// Sessions for the admin API (all if `None`), oldest first.
pub async fn sessions(
    conn: &mut PgConnection,
    session: Option<i64>,
) -> Result<Vec<SessionView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.session, s.threshold, s.status, s.group_key, s.monero_address, s.failure,
                s.silent, s.retry_of, s.excluded, s.try_number, r.session AS retried_by
         FROM keygen_sessions s LEFT JOIN keygen_sessions r ON r.retry_of = s.session
         WHERE $1::bigint IS NULL OR s.session = $1 ORDER BY s.session",
    )
    .bind(session)
    .fetch_all(conn)
    .await
}

/// A session's participants for the admin API, by index.
pub async fn participant_views(
    conn: &mut PgConnection,
    session: i64,
) -> Result<Vec<ParticipantView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT idx, processor, round1 IS NOT NULL AS round1, round2_done, group_key
         FROM keygen_participants WHERE session = $1 ORDER BY idx",
    )
    .bind(session)
    .fetch_all(conn)
    .await
}

/// A session's blames for the admin API, by accuser.
pub async fn blame_views(
    conn: &mut PgConnection,
    session: i64,
) -> Result<Vec<BlameView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT accuser, accused, reason FROM keygen_blames WHERE session = $1 ORDER BY accuser",
    )
    .bind(session)
    .fetch_all(conn)
    .await
}
