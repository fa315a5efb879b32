//! Key generation as the coordinator runs it: one round at a time, relaying
//! packages (round-2 ciphertexts only to their recipient), confirming the key
//! when every participant reports the same one, recording blame, and
//! reporting participants that stay silent past the round timeout.

pub mod db;

use std::collections::HashMap;

use proto::processor_v1::{
    KeyConfirmed, KeyGenBlame, KeyGenRound1, KeyGenRound1Packages, KeyGenRound2,
    KeyGenRound2Packages, KeyGenStart, KeyGenerated, Participant, ProcessorIdentity,
    coordinator_message::Kind,
};
use sqlx::{PgConnection, PgPool};
use tracing::{info, warn};

use link::HandleError;

use crate::common::{out, to_i32, to_i64, to_u32, to_u64};
use crate::error::CoordinatorError;
use db::{SessionRow, SessionStatus};

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
    db::upsert_identity(conn, processor, &message.encryption_public_key).await?;
    info!(processor, key = %hex::encode(&message.encryption_public_key), "processor identity recorded");
    Ok(())
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
    let keys = db::identities(&mut tx, &names).await?;
    for p in processors {
        if !keys.contains_key(p) {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "processor {p:?} has not announced its identity key yet; is it connected?"
            )));
        }
    }
    let session = db::next_session(&mut tx).await?;
    tracing::Span::current().record("session", session);
    begin(
        &mut tx,
        processors,
        &keys,
        &db::NewSession {
            session,
            threshold: to_i32(threshold),
            confirmations: to_i64(chain.confirmations),
            window_blocks: to_i64(chain.window_blocks),
            retry_of: None,
            excluded: Vec::new(),
            try_number: 1,
        },
    )
    .await?;
    tx.commit().await?;
    info!(session, threshold, n, "key generation started");
    Ok(to_u64(session))
}

/// Inserts session `new` among `processors` (in index order, each with its
/// identity key in `keys`) and sends each its `KeyGenStart`.
async fn begin(
    conn: &mut PgConnection,
    processors: &[String],
    keys: &HashMap<String, Vec<u8>>,
    new: &db::NewSession,
) -> Result<(), sqlx::Error> {
    let session = new.session;
    db::insert_session(conn, new).await?;
    let participants: Vec<Participant> = processors
        .iter()
        .enumerate()
        .map(|(i, p)| Participant {
            index: participant_index(i),
            encryption_public_key: keys.get(p).cloned().unwrap_or_default(),
        })
        .collect();
    for (i, p) in processors.iter().enumerate() {
        let key = keys.get(p).map(Vec::as_slice).unwrap_or_default();
        db::insert_participant(conn, session, to_i32(participant_index(i)), p, key).await?;
    }
    let mut order: Vec<(usize, &String)> = processors.iter().enumerate().collect();
    order.sort_by(|a, b| a.1.cmp(b.1));
    for (i, p) in order {
        link::enqueue(
            conn,
            p,
            &[out(
                format!("keygen-start/{session}"),
                "key_gen_start",
                Kind::KeyGenStart(KeyGenStart {
                    session: to_u64(session),
                    threshold: to_u32(new.threshold),
                    own_index: participant_index(i),
                    participants: participants.clone(),
                    confirmations: to_u64(new.confirmations),
                    window_blocks: to_u64(new.window_blocks),
                }),
            )],
        )
        .await?;
    }
    Ok(())
}

/// What became of a failed session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reattempt {
    /// Started again without the culprits, as this session.
    Started(u64),
    /// Too few participants would remain for the threshold: the failure
    /// says so, naming everyone excluded.
    TooFew,
    /// Already re-attempted, or no culprit to leave out.
    NotNeeded,
}

/// Re-attempts `failed` (already marked failed in this transaction) without
/// `culprits`, the participants proven faulty or silent, while the rest
/// still reach its threshold. The new session keeps the threshold and the
/// chain parameters: the key it makes is the one the operators asked for,
/// only held by fewer. Runs in the failing transaction, so a crash between
/// the failure and its re-attempt cannot leave the key generation stuck.
pub async fn reattempt(
    conn: &mut PgConnection,
    failed: i64,
    culprits: &[String],
) -> Result<Reattempt, sqlx::Error> {
    if culprits.is_empty() || db::retried_by(conn, failed).await?.is_some() {
        return Ok(Reattempt::NotNeeded);
    }
    let params = db::params(conn, failed).await?;
    let remaining: Vec<String> = db::participants_in_order(conn, failed)
        .await?
        .into_iter()
        .filter(|p| !culprits.contains(p))
        .collect();
    let mut excluded = params.excluded.clone();
    for c in culprits {
        if !excluded.contains(c) {
            excluded.push(c.clone());
        }
    }
    let threshold = usize::try_from(params.threshold).unwrap_or(usize::MAX);
    if remaining.len() < threshold.max(2) {
        let note = format!(
            "not re-attempted: without {} only {} of the {} needed remain ({}); start a new              key generation with a smaller threshold or other processors",
            excluded.join(", "),
            remaining.len(),
            params.threshold,
            if remaining.is_empty() {
                "none".to_owned()
            } else {
                remaining.join(", ")
            },
        );
        db::append_failure(conn, failed, &note).await?;
        warn!(session = failed, "key generation {note}");
        metrics::counter!(service::metrics::KEYGEN_REATTEMPTS, "outcome" => "too_few").increment(1);
        return Ok(Reattempt::TooFew);
    }
    let names: Vec<&str> = remaining.iter().map(String::as_str).collect();
    let keys = db::identities(conn, &names).await?;
    let session = db::next_session(conn).await?;
    let defaults = crate::config::KeygenConfig::default();
    begin(
        conn,
        &remaining,
        &keys,
        &db::NewSession {
            session,
            threshold: params.threshold,
            confirmations: params
                .confirmations
                .unwrap_or_else(|| to_i64(defaults.confirmations)),
            window_blocks: params
                .window_blocks
                .unwrap_or_else(|| to_i64(defaults.window_blocks)),
            retry_of: Some(failed),
            excluded: excluded.clone(),
            try_number: params.try_number.saturating_add(1),
        },
    )
    .await?;
    db::append_failure(
        conn,
        failed,
        &format!(
            "re-attempted without {} as session {session}",
            excluded.join(", ")
        ),
    )
    .await?;
    metrics::counter!(service::metrics::KEYGEN_REATTEMPTS, "outcome" => "started").increment(1);
    info!(
        failed,
        session,
        excluded = %excluded.join(", "),
        threshold = params.threshold,
        n = remaining.len(),
        "key generation re-attempted without the faulty participants"
    );
    Ok(Reattempt::Started(to_u64(session)))
}

/// Participants are numbered from 1 in the order they are listed.
fn participant_index(position: usize) -> u32 {
    u32::try_from(position + 1).unwrap_or(u32::MAX)
}

/// Locks the session (serializing every handler of it: the last to arrive
/// sees everyone's submissions) and finds the sender's index.
async fn lock_session(
    conn: &mut PgConnection,
    session: u64,
    processor: &str,
) -> Result<(SessionRow, i32), HandleError> {
    let session = i64_of(session)?;
    let s = db::lock_session(conn, session)
        .await?
        .ok_or_else(|| HandleError::Rejected(format!("no key generation session {session}")))?;
    let index = db::index_of(conn, session, processor)
        .await?
        .ok_or_else(|| {
            HandleError::Rejected(format!(
                "{processor} is not a participant of session {session}"
            ))
        })?;
    Ok((s, index))
}

fn expect_status(s: &SessionRow, status: SessionStatus, attempt: u32) -> Result<(), HandleError> {
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
    expect_status(&s, SessionStatus::Round1, m.attempt)?;
    if !db::store_round1(conn, s.session, index, &m.package).await? {
        return Err(HandleError::Rejected(format!(
            "{processor} sent round 1 of session {} twice",
            s.session
        )));
    }
    let rows = db::round1_packages(conn, s.session).await?;
    let n = rows.len();
    let packages: HashMap<u32, Vec<u8>> = rows
        .into_iter()
        .filter_map(|r| Some((to_u32(r.idx), r.bytes?)))
        .collect();
    if packages.len() < n {
        return Ok(());
    }
    db::advance(conn, s.session, SessionStatus::Round2).await?;
    let message = Kind::KeyGenRound1(KeyGenRound1Packages {
        session: m.session,
        attempt: m.attempt,
        packages,
    });
    for p in db::participant_links(conn, s.session, None).await? {
        link::enqueue(
            conn,
            &p.processor,
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
    expect_status(&s, SessionStatus::Round2, m.attempt)?;
    let n = db::participant_count(conn, s.session).await?;
    let mut expected: Vec<i64> = (1..=n).filter(|&i| i != i64::from(index)).collect();
    let mut got: Vec<i64> = m.packages.keys().map(|&k| i64::from(k)).collect();
    expected.sort_unstable();
    got.sort_unstable();
    if got != expected {
        return Err(HandleError::Rejected(format!(
            "{processor} sent round-2 packages for {got:?}, expected {expected:?}"
        )));
    }
    if !db::mark_round2_done(conn, s.session, index).await? {
        return Err(HandleError::Rejected(format!(
            "{processor} sent round 2 of session {} twice",
            s.session
        )));
    }
    let packages: Vec<(i32, &[u8])> = m
        .packages
        .iter()
        .map(|(to, ciphertext)| (to_i32(*to), ciphertext.as_slice()))
        .collect();
    db::insert_round2(conn, s.session, index, &packages).await?;
    if db::round2_pending(conn, s.session).await? > 0 {
        return Ok(());
    }
    db::advance(conn, s.session, SessionStatus::Generating).await?;
    for p in db::participant_links(conn, s.session, None).await? {
        let packages = db::round2_for(conn, s.session, p.idx)
            .await?
            .into_iter()
            .map(|r| (to_u32(r.idx), r.bytes.unwrap_or_default()))
            .collect();
        let message = Kind::KeyGenRound2(KeyGenRound2Packages {
            session: m.session,
            attempt: m.attempt,
            packages,
        });
        link::enqueue(
            conn,
            &p.processor,
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
    if s.status != SessionStatus::Generating {
        return Err(HandleError::Rejected(format!(
            "session {} is in status {}, not generating",
            s.session, s.status
        )));
    }
    db::store_generated(conn, s.session, index, &m.group_key, &m.monero_address).await?;
    let reports = db::key_reports(conn, s.session).await?;
    if reports.iter().any(|r| r.group_key.is_none()) {
        return Ok(());
    }
    let Some(first) = reports.first().cloned() else {
        // The sender's own report was just stored: there is at least one.
        return Ok(());
    };
    if let Some(odd) = reports
        .iter()
        .find(|r| r.group_key != first.group_key || r.monero_address != first.monero_address)
    {
        let failure = format!(
            "participants disagree on the key: {} reported {}, {} reported {}",
            first.processor,
            hex::encode(first.group_key.as_deref().unwrap_or_default()),
            odd.processor,
            hex::encode(odd.group_key.as_deref().unwrap_or_default())
        );
        warn!(session = s.session, "{failure}");
        db::fail(conn, s.session, &failure).await?;
        return Ok(());
    }
    let group_key = first.group_key.unwrap_or_default();
    let seconds = db::age_seconds(conn, s.session).await?;
    metrics::counter!(service::metrics::KEYGEN_COMPLETED).increment(1);
    if let Some(seconds) = seconds {
        metrics::histogram!(service::metrics::KEYGEN_SECONDS).record(seconds);
    }
    db::confirm(conn, s.session, &group_key, first.monero_address.as_deref()).await?;
    // KeyConfirmed leaves with the next settlement block, which fixes the
    // Monero height the key is scanned from (see `activate`).
    info!(session = s.session, group_key = %hex::encode(&group_key), address = first.monero_address.as_deref().unwrap_or(""), "key confirmed by every participant");
    Ok(())
}

/// Gives every confirmed key still without one its activation height
/// (`monero_horizon + 1` of the settlement block being produced) and sends
/// `KeyConfirmed` to its participants, after that block on every link: no
/// processor can have scanned the activation block before it learns of the
/// key. Runs in the settlement block's transaction.
pub async fn activate(
    conn: &mut PgConnection,
    monero_horizon: u64,
    links: &[String],
) -> Result<(), sqlx::Error> {
    let activation = monero_horizon.saturating_add(1);
    for (session, group_key) in db::activate(conn, to_i64(activation)).await? {
        let message = Kind::KeyConfirmed(KeyConfirmed {
            session: to_u64(session),
            group_key,
            activation_height: activation,
        });
        // Every processor learns every key of the group, in one order with
        // the settlement blocks: its participants to scan it, the others to
        // know it (a leaving set's keys forward to it; a joining processor
        // learns which keys came before its own, and so which burns are not
        // its to pay).
        let mut to: Vec<String> = links.to_vec();
        for p in db::participant_links(conn, session, None).await? {
            if !to.contains(&p.processor) {
                to.push(p.processor);
            }
        }
        to.sort();
        for processor in to {
            link::enqueue(
                conn,
                &processor,
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
            "key confirmed to every processor, scanned by its participants from its activation height"
        );
    }
    Ok(())
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
    let Some(db::Accused {
        processor: accused,
        round1: accused_round1,
    }) = db::accused(conn, s.session, accused_index).await?
    else {
        return Err(HandleError::Rejected(format!(
            "{processor} blamed participant {}, who is not in session {}",
            m.accused, s.session
        )));
    };
    let threshold = db::threshold(conn, s.session).await?;
    let identities: std::collections::BTreeMap<u16, [u8; 32]> =
        db::participant_identities(conn, s.session)
            .await?
            .into_iter()
            .filter_map(|p| {
                // Sessions started before the key was kept per session: the latest.
                let key: [u8; 32] = p.at_start.or(p.latest)?.try_into().ok()?;
                Some((u16::try_from(p.idx).ok()?, key))
            })
            .collect();
    let ciphertext = db::round2_ciphertext(conn, s.session, accused_index, index).await?;
    let small = |v: i32| u16::try_from(v).unwrap_or(0);
    let finding = if accused_index == index {
        keystore::dkg::Finding::Accuser("it accused itself".into())
    } else {
        keystore::dkg::judge_blame(&keystore::dkg::BlameCase {
            session: to_u64(s.session),
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
    let (culprit, culprit_name, failure) = match &finding {
        keystore::dkg::Finding::Accused(why) => (
            accused_index,
            accused.clone(),
            format!("{processor} blamed {accused}, proven: {why} ({})", m.reason),
        ),
        keystore::dkg::Finding::Accuser(why) => (
            index,
            processor.to_owned(),
            format!(
                "{processor} blamed {accused} falsely: {why}; {processor} is at fault ({})",
                m.reason
            ),
        ),
    };
    db::insert_blame(
        conn,
        s.session,
        index,
        accused_index,
        &m.reason,
        &m.evidence,
        culprit,
    )
    .await?;
    warn!(session = s.session, "{failure}");
    db::fail_first(conn, s.session, &failure).await?;
    // The first proven culprit ends the session and is left out of the next
    // attempt; later blames of a failed session are recorded, nothing more.
    if s.status != SessionStatus::Failed {
        reattempt(conn, s.session, &[culprit_name]).await?;
    }
    Ok(())
}

/// Marks sessions whose current round outlived `timeout` as failed, naming
/// the participants that did not answer, and re-attempts each without them
/// (see `reattempt`). Returns how many it marked.
pub async fn expire(pool: &PgPool, timeout: std::time::Duration) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut marked = 0;
    for db::Stalled { session, status } in db::lock_stalled(&mut tx, timeout).await? {
        let silent = db::silent(&mut tx, session, status).await?;
        let failure = format!(
            "{status} timed out after {timeout:?}; silent: {}",
            silent.join(", ")
        );
        warn!(session, "key generation {failure}");
        db::fail_silent(&mut tx, session, &failure, &silent).await?;
        reattempt(&mut tx, session, &silent).await?;
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
    db::snapshot(&mut tx).await?;
    let sessions = db::sessions(&mut tx, session.map(to_i64)).await?;
    let mut out = Vec::with_capacity(sessions.len());
    for s in sessions {
        let participants = db::participant_views(&mut tx, s.session).await?;
        let names: HashMap<i32, String> = participants
            .iter()
            .map(|p| (p.idx, p.processor.clone()))
            .collect();
        let blames = db::blame_views(&mut tx, s.session).await?;
        let name = |i: i32| names.get(&i).cloned().unwrap_or_else(|| format!("#{i}"));
        out.push(proto::coordinator_v1::KeyGenStatus {
            session: to_u64(s.session),
            threshold: to_u32(s.threshold),
            status: s.status.as_str().to_owned(),
            group_key: s.group_key.map(hex::encode).unwrap_or_default(),
            monero_address: s.monero_address.unwrap_or_default(),
            failure: s.failure.unwrap_or_default(),
            participants: participants
                .into_iter()
                .map(|p| proto::coordinator_v1::KeyGenParticipant {
                    index: to_u32(p.idx),
                    processor: p.processor,
                    round1: p.round1,
                    round2: p.round2_done,
                    group_key: p.group_key.map(hex::encode).unwrap_or_default(),
                })
                .collect(),
            blames: blames
                .into_iter()
                .map(|b| proto::coordinator_v1::KeyGenBlameView {
                    accuser: name(b.accuser),
                    accused: name(b.accused),
                    reason: b.reason,
                })
                .collect(),
            silent: s.silent,
            retry_of: s.retry_of.map(to_u64),
            excluded: s.excluded,
            retried_by: s.retried_by.map(to_u64),
            attempt: to_u32(s.try_number),
        });
    }
    Ok(out)
}

/// The confirmed keys as the rotation schedules them, oldest first; each
/// processor's own report (`ListKeys`) says where each key retired.
pub async fn rotation(
    pool: &PgPool,
    reports: &[(String, Vec<proto::processor_v1::KeyInfo>)],
) -> Result<Vec<proto::coordinator_v1::KeyRotationView>, sqlx::Error> {
    let horizon = crate::settlement::db::monero_horizon(pool).await?;
    let activations: HashMap<i64, Option<i64>> = db::activations(pool).await?.into_iter().collect();
    let known: Vec<processor::lifecycle::KnownKey> = activations
        .iter()
        .filter_map(|(&session, &activation)| {
            Some(processor::lifecycle::KnownKey {
                session: to_u64(session),
                group_key: [0; 32],
                activation: to_u64(activation?),
                retired: None,
                own: true,
            })
        })
        .collect();
    let chain = processor::lifecycle::chain(known);
    let mut out = Vec::new();
    for s in status(pool, None).await? {
        if s.status != "confirmed" {
            continue;
        }
        let heights = chain
            .iter()
            .find(|k| k.session == s.session)
            .map(|k| k.heights);
        out.push(proto::coordinator_v1::KeyRotationView {
            session: s.session,
            threshold: s.threshold,
            participants: s.participants.into_iter().map(|p| p.processor).collect(),
            monero_address: s.monero_address,
            activation_height: heights.map(|h| h.activation),
            forwarding_height: heights.and_then(|h| h.forwarding),
            finishing_height: heights.and_then(|h| h.finishing),
            scheduled_stage: match (heights, horizon) {
                (Some(h), Some(at)) => h.stage_at(to_u64(at)).as_str().to_owned(),
                (Some(_), None) => processor::lifecycle::Stage::Pending.as_str().to_owned(),
                (None, _) => String::new(),
            },
            retired_on: reports
                .iter()
                .filter(|(_, keys)| {
                    keys.iter()
                        .any(|k| k.session == s.session && k.stage == "retired")
                })
                .map(|(name, _)| name.clone())
                .collect(),
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
