//! Signing rounds as the coordinator runs them, for batches (FROST Ed25519)
//! and plans (FROST-CLSAG) alike: collect preprocesses, choose the first t
//! signers to preprocess (never two who disputed one another), relay their
//! commitments and then their shares.
//! An attempt that stalls is abandoned and re-attempted (attempt + 1, fresh
//! nonces); whoever stays silent is simply not chosen, and a participant
//! proven at fault (an invalid share, or a false accusation) is never
//! chosen again for that key. Blame is checked before it counts.

pub mod db;

use std::collections::HashMap;
use std::time::Duration;

use proto::processor_v1::{
    SignBlame, SignId, SignKind, SignPreprocess, SignPreprocesses, SignReattempt, SignShare,
    SignShares, coordinator_message::Kind,
};
use sqlx::{PgConnection, PgPool};
use tracing::{info, warn};

use link::HandleError;

use crate::common::{out, to_i32, to_i64, to_u32, to_u64};
use db::{AttemptStatus, VerdictKind};
pub use db::{Procedure, ProcedureKind};

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
                kind: ProcedureKind::Batch,
                key: to_i64(u64::from_be_bytes(bytes)),
            })
        }
        Ok(SignKind::Plan) => {
            let seq = crate::payouts::db::seq_of(conn, &id.id).await?;
            let key = seq.ok_or_else(|| {
                HandleError::Rejected(format!(
                    "signing message for unknown plan {}",
                    hex::encode(&id.id)
                ))
            })?;
            Ok(Procedure {
                kind: ProcedureKind::Plan,
                key,
            })
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
    crate::keygen::db::index_and_threshold(conn, session, processor)
        .await?
        .ok_or_else(|| {
            HandleError::Rejected(format!("{processor} holds no share of key {session}"))
        })
}

fn uid(what: &str, kind: ProcedureKind, id: &SignId) -> String {
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
) -> Result<Option<db::AttemptRow>, sqlx::Error> {
    if !db::procedure_exists(conn, procedure).await? {
        return Ok(None);
    }
    if db::insert_attempt(conn, procedure, attempt).await? {
        metrics::counter!(service::metrics::SIGN_ATTEMPTS, "kind" => procedure.kind.as_str())
            .increment(1);
    }
    db::lock_attempt(conn, procedure, attempt).await
}

/// A signing attempt as a message from `processor` refers to it.
struct Attempt {
    procedure: Procedure,
    session: i64,
    index: i32,
    threshold: i32,
    attempt: i32,
    status: AttemptStatus,
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
    let session = to_i64(id.session);
    let (index, threshold) = index_of(conn, session, processor).await?;
    let attempt = to_i32(id.attempt);
    let db::AttemptRow { status, signers } = lock_attempt(conn, procedure, attempt)
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

/// How many subsets [`choose_signers`] may try before it waits for more
/// preprocesses instead: disputes are few (each costs a faulty participant
/// an attempt), so real searches end in a handful of steps; the bound only
/// keeps a pathological dispute graph from stalling the handler.
const MAX_SIGNER_SEARCH_STEPS: usize = 100_000;

/// The first `t` of `arrived` (in arrival order, earliest preferred) of which
/// no two form a disputed pair; `None` while no such set has arrived.
pub fn choose_signers(arrived: &[i32], t: usize, disputes: &[(i32, i32)]) -> Option<Vec<i32>> {
    fn search(
        arrived: &[i32],
        t: usize,
        disputed: &dyn Fn(i32, i32) -> bool,
        chosen: &mut Vec<i32>,
        steps: &mut usize,
    ) -> bool {
        if chosen.len() == t {
            return true;
        }
        for (i, &candidate) in arrived.iter().enumerate() {
            // Not enough left to reach t: no set down this branch.
            if arrived.len() - i < t - chosen.len() || *steps >= MAX_SIGNER_SEARCH_STEPS {
                return false;
            }
            *steps += 1;
            if chosen.iter().any(|&c| disputed(c, candidate)) {
                continue;
            }
            chosen.push(candidate);
            if search(&arrived[i + 1..], t, disputed, chosen, steps) {
                return true;
            }
            chosen.pop();
        }
        false
    }
    if t == 0 {
        return None;
    }
    let disputed = |a: i32, b: i32| disputes.contains(&(a, b)) || disputes.contains(&(b, a));
    let mut chosen = Vec::with_capacity(t);
    let mut steps = 0;
    search(arrived, t, &disputed, &mut chosen, &mut steps).then_some(chosen)
}

/// `SignPreprocess`: collect; the first t to arrive of whom no two are a
/// disputed pair become the signers (see [`choose_signers`]).
#[tracing::instrument(name = "sign.preprocess", skip_all, fields(processor = %processor, session = m.sign_id.as_ref().map(|i| i.session), attempt = m.sign_id.as_ref().map(|i| i.attempt)))]
pub async fn preprocess(
    conn: &mut PgConnection,
    processor: &str,
    m: SignPreprocess,
) -> Result<(), HandleError> {
    let (id, a) = open_attempt(conn, processor, m.sign_id).await?;
    let Procedure { kind, key } = a.procedure;
    db::insert_preprocess(conn, a.procedure, a.attempt, a.index, &m.preprocess).await?;
    if a.status != AttemptStatus::Collecting {
        return Ok(());
    }
    // A participant proven at fault in any signing of this key (its share
    // was invalid, or it accused falsely) is never chosen again.
    let rows = db::eligible_preprocesses(conn, a.procedure, a.attempt, a.session).await?;
    let arrived: Vec<i32> = rows.iter().map(|r| r.idx).collect();
    let disputes = db::disputed_pairs(conn, a.session).await?;
    let t = usize::try_from(a.threshold).unwrap_or(usize::MAX);
    let Some(signers) = choose_signers(&arrived, t, &disputes) else {
        if arrived.len() >= t {
            info!(
                kind = kind.as_str(),
                key,
                attempt = a.attempt,
                ?arrived,
                ?disputes,
                "no t signers without a disputed pair yet: waiting for more preprocesses"
            );
        }
        return Ok(());
    };
    let chosen: HashMap<u32, Vec<u8>> = rows
        .into_iter()
        .filter(|r| signers.contains(&r.idx))
        .map(|r| (to_u32(r.idx), r.bytes))
        .collect();
    db::choose(conn, a.procedure, a.attempt, &signers).await?;
    let message = Kind::SignPreprocesses(SignPreprocesses {
        sign_id: Some(id.clone()),
        preprocesses: chosen,
    });
    for p in crate::keygen::db::participant_links(conn, a.session, Some(&signers)).await? {
        link::enqueue(
            conn,
            &p.processor,
            &[out(
                uid("sign-preprocesses", kind, &id),
                "sign_preprocesses",
                message.clone(),
            )],
        )
        .await?;
    }
    info!(
        kind = kind.as_str(),
        key,
        attempt = a.attempt,
        ?signers,
        "signers chosen"
    );
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
    let kind = a.procedure.kind;
    if a.status != AttemptStatus::Sharing || !a.signers.contains(&a.index) {
        return Ok(());
    }
    db::insert_share(conn, a.procedure, a.attempt, a.index, &m.share).await?;
    let rows = db::shares(conn, a.procedure, a.attempt).await?;
    if rows.len() < a.signers.len() {
        return Ok(());
    }
    let shares: HashMap<u32, Vec<u8>> =
        rows.into_iter().map(|r| (to_u32(r.idx), r.bytes)).collect();
    db::set_status(conn, a.procedure, a.attempt, AttemptStatus::Aggregating).await?;
    let message = Kind::SignShares(SignShares {
        sign_id: Some(id.clone()),
        shares,
    });
    for p in crate::keygen::db::participant_links(conn, a.session, Some(&a.signers)).await? {
        link::enqueue(
            conn,
            &p.processor,
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
    /// at fault by this blame, and the two are never chosen together again
    /// for this key.
    Disputed,
    /// A CLSAG share, which the coordinator cannot check: nobody is banned,
    /// and the two are never chosen together again for this key.
    Unverified,
}

impl Verdict {
    /// Its column value.
    pub fn kind(&self) -> VerdictKind {
        match self {
            Self::Proven => VerdictKind::Proven,
            Self::False => VerdictKind::False,
            Self::Refused(_) => VerdictKind::Refused,
            Self::Disputed => VerdictKind::Disputed,
            Self::Unverified => VerdictKind::Unverified,
        }
    }
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
    let attempt = to_i32(id.attempt);
    // Empty until the signers are chosen.
    let Some(signers) = db::lock_signers(conn, procedure, attempt).await? else {
        return Ok(Verdict::Refused("no such attempt".into()));
    };
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
    let preprocesses = db::preprocesses_of(conn, procedure, attempt, &signers).await?;
    // Shares are relayed exactly when every signer's is in.
    let mut shares = db::shares_of(conn, procedure, attempt, &signers).await?;
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
    if procedure.kind == ProcedureKind::Plan {
        return Ok(Verdict::Unverified);
    }
    // The batch as each of them proposed it; the canonical (first) one for
    // a signer that proposed none.
    let proposals = crate::batches::db::proposals(conn, procedure.key).await?;
    let canonical = crate::batches::db::encoded_of(conn, procedure.key).await?;
    let session = to_i64(id.session);
    let accused_name = crate::keygen::db::participant_name(conn, session, accused).await?;
    let signed = proposals.get(accuser.0).unwrap_or(&canonical);
    let theirs = accused_name
        .and_then(|n| proposals.get(&n))
        .unwrap_or(signed);
    if signed != theirs {
        return Ok(Verdict::Disputed);
    }
    let round1: std::collections::BTreeMap<u16, Vec<u8>> =
        crate::keygen::db::round1_packages(conn, session)
            .await?
            .into_iter()
            .filter_map(|r| Some((u16::try_from(r.idx).ok()?, r.bytes?)))
            .collect();
    let unverifiable = |e: keystore::sign::SignError| {
        HandleError::Rejected(format!(
            "the blame cannot be checked against key {}: {e}",
            id.session
        ))
    };
    // The key's public package is rebuilt from this coordinator's own rows:
    // if that fails, the fault is here, not the accuser's (retried, never
    // acknowledged without a verdict).
    let public = keystore::sign::public_key_package_from_round1(&round1).map_err(|e| {
        HandleError::Local(format!(
            "key {}'s public package does not rebuild from the stored round-1 packages: {e}",
            id.session
        ))
    })?;
    let at_fault = keystore::sign::signer_at_fault(
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
    let session = to_i64(id.session);
    let (accuser_index, _) = index_of(conn, session, processor).await?;
    let accused_index = i32::try_from(m.accused).unwrap_or(0);
    let accused: String = crate::keygen::db::participant_name(conn, session, accused_index)
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
            format!(
                "{processor} and {accused} proposed different batches: nobody is banned for it; the two are never chosen together again for this key"
            )
        }
        Verdict::Unverified => {
            format!(
                "a CLSAG share cannot be checked by the coordinator: nobody is banned for it; {processor} and {accused} are never chosen together again for this key"
            )
        }
    };
    warn!(kind = kind.as_str(), key, attempt = id.attempt, accuser = processor, %accused, verdict = verdict.kind().as_str(), "signer blamed: {}; {detail}", m.reason);
    metrics::counter!(service::metrics::SIGN_BLAMES, "kind" => kind.as_str()).increment(1);
    db::insert_blame(
        conn,
        &db::NewBlame {
            procedure,
            attempt: to_i32(id.attempt),
            accuser: processor,
            accused: accused_index,
            reason: &m.reason,
            verdict: verdict.kind(),
            culprit,
            detail: &detail,
        },
    )
    .await?;
    Ok(())
}

/// Marks a procedure's attempts done (it completed).
pub async fn finish(conn: &mut PgConnection, procedure: Procedure) -> Result<(), sqlx::Error> {
    let seconds = db::seconds_since_start(conn, procedure).await?;
    // Counted once: a second report of the same signature finds it done.
    if db::finish(conn, procedure).await? > 0 {
        let kind = procedure.kind.as_str();
        metrics::counter!(service::metrics::SIGN_COMPLETED, "kind" => kind).increment(1);
        if let Some(seconds) = seconds {
            metrics::histogram!(service::metrics::SIGN_SECONDS, "kind" => kind).record(seconds);
        }
    }
    Ok(())
}

/// Abandons attempts older than `timeout` whose procedure is still open and
/// asks every participant for the next attempt. Returns how many it
/// re-attempted.
pub async fn reattempt_stalled(pool: &PgPool, timeout: Duration) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut count = 0;
    for stalled in db::lock_stalled(&mut tx, timeout).await? {
        let db::Stalled {
            kind,
            id: key,
            attempt,
            session,
            plan_id,
        } = stalled;
        let procedure = Procedure { kind, key };
        db::set_status(&mut tx, procedure, attempt, AttemptStatus::Abandoned).await?;
        db::insert_attempt(&mut tx, procedure, attempt + 1).await?;
        let (sign_kind, id_bytes) = match kind {
            ProcedureKind::Plan => (SignKind::Plan, plan_id.unwrap_or_default()),
            ProcedureKind::Batch => (SignKind::Batch, to_u64(key).to_be_bytes().to_vec()),
        };
        let id = SignId {
            session: to_u64(session),
            kind: sign_kind.into(),
            id: id_bytes,
            attempt: to_u32(attempt),
        };
        let message = Kind::SignReattempt(SignReattempt {
            sign_id: Some(id.clone()),
        });
        for p in crate::keygen::db::participant_links(&mut tx, session, None).await? {
            link::enqueue(
                &mut tx,
                &p.processor,
                &[out(
                    uid("sign-reattempt", kind, &id),
                    "sign_reattempt",
                    message.clone(),
                )],
            )
            .await?;
        }
        warn!(
            kind = kind.as_str(),
            key, attempt, "signing attempt stalled; re-attempting"
        );
        metrics::counter!(service::metrics::SIGN_REATTEMPTS, "kind" => kind.as_str()).increment(1);
        count += 1;
    }
    tx.commit().await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::choose_signers;

    #[test]
    fn without_disputes_the_first_t_to_arrive_sign() {
        assert_eq!(choose_signers(&[3, 1, 2], 2, &[]), Some(vec![3, 1]));
        assert_eq!(choose_signers(&[3], 2, &[]), None);
        assert_eq!(choose_signers(&[3, 1], 0, &[]), None);
    }

    #[test]
    fn a_disputed_pair_is_never_chosen_together() {
        // 1 is faulty and always first: disputed with 2, the next arrival
        // goes in its place; disputed with both, the honest pair signs.
        assert_eq!(choose_signers(&[1, 2, 3], 2, &[(2, 1)]), Some(vec![1, 3]));
        assert_eq!(
            choose_signers(&[1, 2, 3], 2, &[(2, 1), (1, 3)]),
            Some(vec![2, 3])
        );
        // Only the disputed pair has arrived: wait for more.
        assert_eq!(choose_signers(&[1, 2], 2, &[(1, 2)]), None);
    }

    #[test]
    fn the_search_backtracks_past_an_early_choice() {
        // Greedy would take 1 and 2 and then find nothing compatible with
        // both; 1, 3, 4 is the earliest valid set.
        let disputes = [(2, 3), (2, 4)];
        assert_eq!(
            choose_signers(&[1, 2, 3, 4], 3, &disputes),
            Some(vec![1, 3, 4])
        );
        // Every honest member of a large set stays compatible however many
        // disputes the faulty ones (1..=33) caused among themselves and with
        // them.
        let arrived: Vec<i32> = (1..=100).collect();
        let mut disputes = Vec::new();
        for f in 1..=33 {
            for other in 1..=100 {
                if other != f && other % 7 == 0 {
                    disputes.push((f, other));
                }
            }
        }
        let chosen = choose_signers(&arrived, 67, &disputes).expect("67 compatible exist");
        assert_eq!(chosen.len(), 67);
        for (i, a) in chosen.iter().enumerate() {
            for b in &chosen[i + 1..] {
                assert!(!disputes.contains(&(*a, *b)) && !disputes.contains(&(*b, *a)));
            }
        }
    }
}
