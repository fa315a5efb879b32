//! The invariant checker: what must hold after any run, however it was
//! disturbed, read from every processor's database, the coordinator's and
//! monerod.
//!
//! - Every message in every `send_log` the receiver acknowledged was handled
//!   exactly once (`inbox` or `quarantine`), with the bytes sent; nothing was
//!   handled that was not sent. Both directions.
//! - No processor preprocessed one `(sign id, attempt)` twice, used one nonce
//!   commitment for two attempts, or sent two shares for one attempt (one
//!   nonce commitment), as its own `send_log` and `sign_attempts` show.
//! - Every burn is paid by exactly one transaction, and that transaction is
//!   in a block, pays exactly the burns its plan names (address and amount)
//!   and spends no key image another payout spends; no processor marks an
//!   output spent by a plan that did not complete.
//! - Every processor holds the same bytes for each batch and plan, the
//!   coordinator's included batches among them once scanned that far.
//! - On every processor, per key: deposits = paid + fees + unspent, exactly.
//!
//! Messages the receiver has not acknowledged yet are in flight, not
//! missing: the checker can run while the system is live.

pub mod db;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use prost::Message as _;
use proto::processor_v1::{ProcessorMessage, SignId, SignKind, processor_message::Kind};
use sqlx::PgPool;

/// Where to look.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Each processor: the name the coordinator knows it by (its link id
    /// there) and its database URL.
    pub processors: Vec<(String, String)>,
    /// The coordinator's database URL.
    pub coordinator: String,
    /// monerod's RPC URL (`http://127.0.0.1:port`).
    pub monerod: String,
}

/// The name of the coordinator on a processor's link.
const COORDINATOR: &str = "coordinator";

/// One thing that does not hold, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The receiver acknowledged `id` but has no record of handling it.
    MessageMissing {
        /// Sender.
        from: String,
        /// Receiver.
        to: String,
        /// The message.
        id: i64,
        /// Its uid.
        uid: String,
    },
    /// One message (uid) handled more than once.
    MessageTwice {
        /// Sender.
        from: String,
        /// Receiver.
        to: String,
        /// Its uid.
        uid: String,
        /// The ids (inbox or quarantine) it was handled under.
        ids: Vec<i64>,
    },
    /// Handled bytes (or uid) differ from those sent under the id.
    MessageAltered {
        /// Sender.
        from: String,
        /// Receiver.
        to: String,
        /// The message.
        id: i64,
    },
    /// Handled, but the sender never sent it.
    MessageNeverSent {
        /// Sender.
        from: String,
        /// Receiver.
        to: String,
        /// The id handled.
        id: i64,
    },
    /// A processor sent two preprocesses for one attempt.
    PreprocessedTwice {
        /// The processor.
        processor: String,
        /// session/kind/id/attempt.
        sign_id: String,
        /// How many.
        count: usize,
    },
    /// A processor sent one nonce commitment for two attempts.
    NonceReused {
        /// The processor.
        processor: String,
        /// The attempts sharing it.
        sign_ids: Vec<String>,
    },
    /// A processor sent two shares for one attempt (one nonce commitment).
    TwoShares {
        /// The processor.
        processor: String,
        /// session/kind/id/attempt.
        sign_id: String,
        /// How many.
        count: usize,
    },
    /// A processor preprocessed an attempt it has no record of beginning
    /// (after a restart it could begin it again with fresh nonces).
    AttemptUnrecorded {
        /// The processor.
        processor: String,
        /// session/kind/id/attempt.
        sign_id: String,
    },
    /// A burn no completed plan pays.
    BurnUnpaid {
        /// The burn.
        burn_id: String,
    },
    /// A burn paid by more than one transaction.
    BurnPaidTwice {
        /// The burn.
        burn_id: String,
        /// The transactions (hex).
        txs: Vec<String>,
    },
    /// A processor holds a burn with another address or amount than the
    /// one submitted to the settlement chain.
    BurnAltered {
        /// The processor.
        processor: String,
        /// The burn.
        burn_id: String,
        /// What differs.
        detail: String,
    },
    /// A completed payout's transaction is not in a block.
    PayoutNotOnChain {
        /// The plan (hex).
        plan_id: String,
        /// Its transaction (hex).
        tx: String,
        /// What monerod said.
        detail: String,
    },
    /// A payout does not pay exactly its burns.
    PaymentWrong {
        /// The plan (hex).
        plan_id: String,
        /// What differs.
        detail: String,
    },
    /// One key image spent by two payouts.
    KeyImageTwice {
        /// The key image (hex).
        key_image: String,
        /// The transactions (hex).
        txs: Vec<String>,
    },
    /// A processor marks an output spent by a plan that did not complete
    /// there.
    OutputSpentByNothing {
        /// The processor.
        processor: String,
        /// tx:index.
        output: String,
    },
    /// Processors (or the coordinator) hold different bytes for one batch.
    BatchDiffers {
        /// The batch.
        id: i64,
        /// Who holds which version: (holder, version number).
        holders: Vec<(String, usize)>,
    },
    /// A processor scanned past an included batch's block without it.
    BatchMissing {
        /// The processor.
        processor: String,
        /// The batch.
        id: i64,
    },
    /// A processor took in the settlement block including a batch it
    /// holds, but the batch (and so its deposits) is not included there.
    BatchNotIncluded {
        /// The processor.
        processor: String,
        /// The batch.
        id: i64,
        /// Its status there.
        status: String,
    },
    /// Holders disagree about a plan (bytes, burns, window or transaction).
    PlanDiffers {
        /// The plan (hex).
        plan_id: String,
        /// What differs, per holder.
        detail: String,
    },
    /// deposits != paid + fees + unspent.
    BooksUnbalanced {
        /// The processor.
        processor: String,
        /// The key.
        session: i64,
        /// Atomic units.
        deposits: i64,
        /// Atomic units.
        paid: i64,
        /// Atomic units.
        fees: i64,
        /// Atomic units.
        unspent: i64,
        /// Atomic units.
        forwarded_in: i64,
        /// Atomic units.
        forwarded_out: i64,
    },
    /// A forward between two keys one processor holds did not arrive whole.
    ForwardShort {
        /// The processor.
        processor: String,
        /// The forward (hex).
        plan_id: String,
        /// What left the old key.
        sent: i64,
        /// What reached the new one.
        arrived: i64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MessageMissing { from, to, id, uid } => write!(
                f,
                "message {id} ({uid}) {from} -> {to}: acknowledged but in neither inbox nor quarantine of {to}"
            ),
            Self::MessageTwice { from, to, uid, ids } => write!(
                f,
                "message {uid} {from} -> {to}: handled {} times (ids {ids:?})",
                ids.len()
            ),
            Self::MessageAltered { from, to, id } => write!(
                f,
                "message {id} {from} -> {to}: {to} handled other bytes than {from} sent"
            ),
            Self::MessageNeverSent { from, to, id } => write!(
                f,
                "message {id} {from} -> {to}: {to} handled it but {from}'s send_log has no such id"
            ),
            Self::PreprocessedTwice {
                processor,
                sign_id,
                count,
            } => write!(f, "{processor} preprocessed {sign_id} {count} times"),
            Self::NonceReused {
                processor,
                sign_ids,
            } => write!(
                f,
                "{processor} sent one nonce commitment for {} attempts: {}",
                sign_ids.len(),
                sign_ids.join(", ")
            ),
            Self::TwoShares {
                processor,
                sign_id,
                count,
            } => write!(
                f,
                "{processor} sent {count} shares for {sign_id} (one nonce commitment)"
            ),
            Self::AttemptUnrecorded { processor, sign_id } => write!(
                f,
                "{processor} preprocessed {sign_id} but its sign_attempts has no row for it"
            ),
            Self::BurnUnpaid { burn_id } => {
                write!(f, "burn {burn_id}: no completed payout pays it")
            }
            Self::BurnPaidTwice { burn_id, txs } => write!(
                f,
                "burn {burn_id}: paid by {} transactions: {}",
                txs.len(),
                txs.join(", ")
            ),
            Self::BurnAltered {
                processor,
                burn_id,
                detail,
            } => write!(f, "{processor}: burn {burn_id}: {detail}"),
            Self::PayoutNotOnChain {
                plan_id,
                tx,
                detail,
            } => write!(
                f,
                "payout {plan_id}: its transaction {tx} is not in a block ({detail})"
            ),
            Self::PaymentWrong { plan_id, detail } => {
                write!(f, "payout {plan_id}: {detail}")
            }
            Self::KeyImageTwice { key_image, txs } => write!(
                f,
                "key image {key_image} spent by {} payouts: {}",
                txs.len(),
                txs.join(", ")
            ),
            Self::OutputSpentByNothing { processor, output } => write!(
                f,
                "{processor}: output {output} is spent by no completed plan"
            ),
            Self::BatchDiffers { id, holders } => {
                write!(f, "batch {id}: holders disagree on its bytes: {holders:?}")
            }
            Self::BatchMissing { processor, id } => write!(
                f,
                "{processor} scanned past included batch {id}'s block but does not hold it"
            ),
            Self::BatchNotIncluded {
                processor,
                id,
                status,
            } => write!(
                f,
                "{processor} took in the settlement block including batch {id} but holds it as {status}: \
                 its deposits are never credited there"
            ),
            Self::PlanDiffers { plan_id, detail } => write!(f, "plan {plan_id}: {detail}"),
            Self::ForwardShort {
                processor,
                plan_id,
                sent,
                arrived,
            } => write!(
                f,
                "{processor}: forward {plan_id} sent {sent} but {arrived} reached the newer key"
            ),
            Self::BooksUnbalanced {
                processor,
                session,
                deposits,
                paid,
                fees,
                unspent,
                forwarded_in,
                forwarded_out,
            } => write!(
                f,
                "{processor} key {session}: deposits {deposits} + forwarded in {forwarded_in} != paid \
                 {paid} + fees {fees} + forwarded out {forwarded_out} + unspent {unspent} (off by {})",
                i128::from(*deposits) + i128::from(*forwarded_in)
                    - i128::from(*paid)
                    - i128::from(*fees)
                    - i128::from(*forwarded_out)
                    - i128::from(*unspent)
            ),
        }
    }
}

/// Why the checker could not check (not a violation: nothing was decided).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A database did not answer.
    #[error("reading {what}: {source}")]
    Db {
        /// Which database.
        what: String,
        /// Postgres.
        source: sqlx::Error,
    },
    /// monerod did not answer.
    #[error("asking monerod at {url}: {detail}")]
    Daemon {
        /// Where.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

fn db_error(what: &str) -> impl FnOnce(sqlx::Error) -> CheckError + '_ {
    move |source| CheckError::Db {
        what: what.to_owned(),
        source,
    }
}

/// Checks every invariant; returns every violation found (empty: all hold).
pub async fn check(targets: &Targets) -> Result<Vec<Violation>, CheckError> {
    let coordinator = db::reader_pool(&targets.coordinator)
        .await
        .map_err(db_error("the coordinator's database"))?;
    let mut processors = Vec::new();
    for (name, url) in &targets.processors {
        let pool = db::reader_pool(url)
            .await
            .map_err(db_error(name.as_str()))?;
        processors.push((name.clone(), pool));
    }
    let result = check_pools(&coordinator, &processors, Some(&targets.monerod)).await;
    coordinator.close().await;
    for (_, pool) in processors {
        pool.close().await;
    }
    result
}

/// [`check`] over open pools. Without `monerod`, payouts are checked in
/// the databases only (not that their transactions are in blocks, pay what
/// their plans pay and spend distinct key images).
pub async fn check_pools(
    coordinator: &PgPool,
    processors: &[(String, PgPool)],
    monerod: Option<&str>,
) -> Result<Vec<Violation>, CheckError> {
    let mut found = Vec::new();
    for (name, pool) in processors {
        let read = db_error(name.as_str());
        // Coordinator -> processor, then processor -> coordinator.
        links(
            ("coordinator", coordinator, name),
            (name, pool, COORDINATOR),
            &mut found,
        )
        .await
        .map_err(read)?;
        links(
            (name, pool, COORDINATOR),
            ("coordinator", coordinator, name),
            &mut found,
        )
        .await
        .map_err(db_error(name.as_str()))?;
        signing(name, pool, &mut found)
            .await
            .map_err(db_error(name.as_str()))?;
        books(name, pool, &mut found)
            .await
            .map_err(db_error(name.as_str()))?;
    }
    batches(coordinator, processors, &mut found).await?;
    payouts(coordinator, processors, monerod, &mut found).await?;
    Ok(found)
}

/// Every message `sender` sent on its link `sender_link` that the receiver
/// acknowledged is in the receiver's inbox or quarantine (link
/// `receiver_link`) exactly once, with the same uid and bytes.
async fn links(
    (sender, sender_pool, sender_link): (&str, &PgPool, &str),
    (receiver, receiver_pool, receiver_link): (&str, &PgPool, &str),
    found: &mut Vec<Violation>,
) -> Result<(), sqlx::Error> {
    // The acknowledgement first: whatever it covers was committed by the
    // receiver before it was sent, so the inbox read after holds it.
    let Some(state) = db::links(sender_pool)
        .await?
        .into_iter()
        .find(|l| l.link_id == sender_link)
    else {
        return Ok(());
    };
    let receiver_state = db::links(receiver_pool)
        .await?
        .into_iter()
        .find(|l| l.link_id == receiver_link);
    let mut handled = db::inbox(receiver_pool, receiver_link).await?;
    handled.extend(db::quarantine(receiver_pool, receiver_link).await?);
    // The send log last: anything handled was logged before it was sent.
    let sent: BTreeMap<i64, db::Message> = db::send_log(sender_pool, sender_link)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    let (from, to) = (sender.to_owned(), receiver.to_owned());
    let mut by_id: BTreeMap<i64, usize> = BTreeMap::new();
    let mut by_uid: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for m in &handled {
        *by_id.entry(m.id).or_default() += 1;
        by_uid.entry(m.uid.as_str()).or_default().push(m.id);
        match sent.get(&m.id) {
            Some(s) if s.uid == m.uid && s.payload == m.payload => {}
            Some(_) => found.push(Violation::MessageAltered {
                from: from.clone(),
                to: to.clone(),
                id: m.id,
            }),
            None => found.push(Violation::MessageNeverSent {
                from: from.clone(),
                to: to.clone(),
                id: m.id,
            }),
        }
    }
    for (uid, ids) in by_uid {
        if ids.len() > 1 {
            found.push(Violation::MessageTwice {
                from: from.clone(),
                to: to.clone(),
                uid: uid.to_owned(),
                ids,
            });
        }
    }
    // A pruned inbox proves nothing about what it held.
    if receiver_state.is_some_and(|s| s.pruned_inbox > 0) {
        return Ok(());
    }
    for (id, m) in sent.range(..=state.acked_out) {
        if !by_id.contains_key(id) {
            found.push(Violation::MessageMissing {
                from: from.clone(),
                to: to.clone(),
                id: *id,
                uid: m.uid.clone(),
            });
        }
    }
    Ok(())
}

/// session/kind/id/attempt, as the processor names attempts.
fn sign_id_name(id: &SignId) -> String {
    let kind = match SignKind::try_from(id.kind) {
        Ok(SignKind::Batch) => "batch",
        Ok(SignKind::Plan) => "plan",
        _ => "unknown",
    };
    format!(
        "{}/{kind}/{}/{}",
        id.session,
        hex::encode(&id.id),
        id.attempt
    )
}

/// Nonce safety, from what the processor actually sent: one preprocess per
/// attempt, each recorded in `sign_attempts`, no commitment for two
/// attempts, at most one share per attempt.
async fn signing(name: &str, pool: &PgPool, found: &mut Vec<Violation>) -> Result<(), sqlx::Error> {
    let recorded: BTreeSet<String> = db::sign_attempts(pool)
        .await?
        .into_iter()
        .map(|a| {
            let kind = match a.kind.as_str() {
                "batch" => SignKind::Batch,
                "plan" => SignKind::Plan,
                _ => SignKind::Unspecified,
            };
            sign_id_name(&SignId {
                session: u64::try_from(a.session).unwrap_or(u64::MAX),
                kind: kind.into(),
                id: a.id,
                attempt: u32::try_from(a.attempt).unwrap_or(u32::MAX),
            })
        })
        .collect();
    let mut preprocesses: BTreeMap<String, usize> = BTreeMap::new();
    let mut commitments: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    let mut shares: BTreeMap<String, usize> = BTreeMap::new();
    for m in db::send_log(pool, COORDINATOR).await? {
        // Messages that do not decode are not signing messages of this
        // contract; the link's own checks cover them.
        let Ok(message) = ProcessorMessage::decode(m.payload.as_slice()) else {
            continue;
        };
        match message.kind {
            Some(Kind::SignPreprocess(p)) => {
                let id = sign_id_name(&p.sign_id.unwrap_or_default());
                *preprocesses.entry(id.clone()).or_default() += 1;
                commitments.entry(p.preprocess).or_default().push(id);
            }
            Some(Kind::SignShare(s)) => {
                let id = sign_id_name(&s.sign_id.unwrap_or_default());
                *shares.entry(id).or_default() += 1;
            }
            _ => {}
        }
    }
    for (sign_id, count) in preprocesses {
        if !recorded.contains(&sign_id) {
            found.push(Violation::AttemptUnrecorded {
                processor: name.to_owned(),
                sign_id: sign_id.clone(),
            });
        }
        if count > 1 {
            found.push(Violation::PreprocessedTwice {
                processor: name.to_owned(),
                sign_id,
                count,
            });
        }
    }
    for (_, mut sign_ids) in commitments {
        sign_ids.dedup();
        if sign_ids.len() > 1 {
            found.push(Violation::NonceReused {
                processor: name.to_owned(),
                sign_ids,
            });
        }
    }
    for (sign_id, count) in shares {
        if count > 1 {
            found.push(Violation::TwoShares {
                processor: name.to_owned(),
                sign_id,
                count,
            });
        }
    }
    Ok(())
}

/// deposits + forwarded in = paid + fees + forwarded out + unspent, per key.
async fn books(name: &str, pool: &PgPool, found: &mut Vec<Violation>) -> Result<(), sqlx::Error> {
    for b in db::books(pool).await? {
        if i128::from(b.deposits) + i128::from(b.forwarded_in)
            != i128::from(b.paid)
                + i128::from(b.fees)
                + i128::from(b.forwarded_out)
                + i128::from(b.unspent)
        {
            found.push(Violation::BooksUnbalanced {
                processor: name.to_owned(),
                session: b.session,
                deposits: b.deposits,
                paid: b.paid,
                fees: b.fees,
                unspent: b.unspent,
                forwarded_in: b.forwarded_in,
                forwarded_out: b.forwarded_out,
            });
        }
    }
    for f in db::forwards(pool).await? {
        if f.sent != f.arrived {
            found.push(Violation::ForwardShort {
                processor: name.to_owned(),
                plan_id: hex::encode(&f.plan_id),
                sent: f.sent,
                arrived: f.arrived,
            });
        }
    }
    Ok(())
}

/// One version number per distinct byte string, in order of appearance.
fn versions<'a>(holders: impl Iterator<Item = (String, &'a [u8])>) -> Vec<(String, usize)> {
    let mut seen: Vec<&[u8]> = Vec::new();
    holders
        .map(|(holder, bytes)| {
            let v = seen.iter().position(|s| *s == bytes).unwrap_or_else(|| {
                seen.push(bytes);
                seen.len() - 1
            });
            (holder, v)
        })
        .collect()
}

/// Identical batches everywhere; every included batch on each processor
/// that scanned past its block.
async fn batches(
    coordinator: &PgPool,
    processors: &[(String, PgPool)],
    found: &mut Vec<Violation>,
) -> Result<(), CheckError> {
    let mut held: BTreeMap<i64, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let included = db::included_batches(coordinator)
        .await
        .map_err(db_error("the coordinator's database"))?;
    for b in &included {
        held.entry(b.id)
            .or_default()
            .push(("coordinator".to_owned(), b.encoded.clone()));
    }
    for (name, pool) in processors {
        let read = || db_error(name.as_str());
        let own = db::processor_batches(pool).await.map_err(read())?;
        let next = db::scan_next_height(pool).await.map_err(read())?;
        let sessions = db::held_sessions(pool).await.map_err(read())?;
        for b in &included {
            // Only a key's holders report its batches (a processor that
            // joined with a later key never scanned an earlier one).
            let (session, _) = processor::batch::batch_parts(u64::try_from(b.id).unwrap_or(0));
            let holds = sessions
                .iter()
                .any(|&h| u64::try_from(h).is_ok_and(|h| h == session));
            if holds && b.block_height < next && !own.iter().any(|o| o.id == b.id) {
                found.push(Violation::BatchMissing {
                    processor: name.clone(),
                    id: b.id,
                });
            }
        }
        for b in own {
            if b.status != "included"
                && db::taken_in_as_included(pool, b.id).await.map_err(read())?
            {
                found.push(Violation::BatchNotIncluded {
                    processor: name.clone(),
                    id: b.id,
                    status: b.status.clone(),
                });
            }
            held.entry(b.id)
                .or_default()
                .push((name.clone(), b.encoded));
        }
    }
    for (id, holders) in held {
        let v = versions(holders.iter().map(|(h, b)| (h.clone(), b.as_slice())));
        if v.iter().any(|(_, n)| *n > 0) {
            found.push(Violation::BatchDiffers { id, holders: v });
        }
    }
    Ok(())
}

/// A plan's identity as every holder must see it.
fn plan_view(p: &db::Plan) -> String {
    format!(
        "session {} window {} burns {:?} signable {}",
        p.session,
        p.window,
        p.burn_ids,
        hex::encode(processor::scheduler::plan::plan_id(&p.signable))
    )
}

/// Burns paid once, by transactions on chain that pay exactly them;
/// identical plans; no key image twice; no output spent by nothing.
async fn payouts(
    coordinator: &PgPool,
    processors: &[(String, PgPool)],
    monerod: Option<&str>,
    found: &mut Vec<Violation>,
) -> Result<(), CheckError> {
    let coordinator_read = || db_error("the coordinator's database");
    let burns = db::coordinator_burns(coordinator)
        .await
        .map_err(coordinator_read())?;
    let keys: BTreeMap<i64, Vec<u8>> = db::confirmed_keys(coordinator)
        .await
        .map_err(coordinator_read())?
        .into_iter()
        .map(|k| (k.session, k.group_key))
        .collect();
    // Every holder's plans: plan id -> (holder, plan).
    let mut plans: BTreeMap<Vec<u8>, Vec<(String, db::Plan)>> = BTreeMap::new();
    for p in db::coordinator_plans(coordinator)
        .await
        .map_err(coordinator_read())?
    {
        plans
            .entry(p.plan_id.clone())
            .or_default()
            .push(("coordinator".to_owned(), p));
    }
    for (name, pool) in processors {
        let read = || db_error(name.as_str());
        let own = db::processor_plans(pool).await.map_err(read())?;
        let completed: BTreeSet<Vec<u8>> = own
            .iter()
            .filter(|p| p.status == "completed")
            .map(|p| p.plan_id.clone())
            .collect();
        for o in db::spent_outputs(pool).await.map_err(read())? {
            if !o.plan_id.as_ref().is_some_and(|p| completed.contains(p)) {
                found.push(Violation::OutputSpentByNothing {
                    processor: name.clone(),
                    output: format!("{}:{}", hex::encode(&o.tx_hash), o.index_in_tx),
                });
            }
        }
        // A processor's burn is the coordinator's burn, to the letter.
        for b in db::processor_burns(pool).await.map_err(read())? {
            if let Some(c) = burns.iter().find(|c| c.burn_id == b.burn_id)
                && (c.monero_address != b.monero_address || c.amount != b.amount)
            {
                found.push(Violation::BurnAltered {
                    processor: name.clone(),
                    burn_id: b.burn_id.clone(),
                    detail: format!(
                        "held as {} to {}, submitted as {} to {}",
                        b.amount, b.monero_address, c.amount, c.monero_address
                    ),
                });
            }
        }
        for p in own {
            plans
                .entry(p.plan_id.clone())
                .or_default()
                .push((name.clone(), p));
        }
    }
    // Plans agree; completed ones on one transaction.
    let mut paid_by: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut on_chain: BTreeMap<Vec<u8>, db::Plan> = BTreeMap::new();
    for (plan_id, holders) in &plans {
        let hex_id = hex::encode(plan_id);
        let views: BTreeSet<String> = holders.iter().map(|(_, p)| plan_view(p)).collect();
        if views.len() > 1
            || plan_id.as_slice() != processor::scheduler::plan::plan_id(&holders[0].1.signable)
        {
            found.push(Violation::PlanDiffers {
                plan_id: hex_id.clone(),
                detail: holders
                    .iter()
                    .map(|(h, p)| format!("{h}: {}", plan_view(p)))
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        let completed: Vec<&(String, db::Plan)> = holders
            .iter()
            .filter(|(_, p)| p.status == "completed")
            .collect();
        let txs: BTreeSet<Vec<u8>> = completed
            .iter()
            .filter_map(|(_, p)| p.tx_hash.clone())
            .collect();
        if txs.len() > 1 {
            found.push(Violation::PlanDiffers {
                plan_id: hex_id.clone(),
                detail: format!(
                    "completed by different transactions: {}",
                    completed
                        .iter()
                        .map(|(h, p)| format!(
                            "{h}: {}",
                            p.tx_hash.as_deref().map(hex::encode).unwrap_or_default()
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if let Some((_, plan)) = completed.first() {
            for burn in &plan.burn_ids {
                paid_by
                    .entry(burn.clone())
                    .or_default()
                    .extend(txs.iter().cloned());
            }
            if let Some(tx) = txs.first() {
                on_chain.insert(tx.clone(), plan.clone());
            }
        }
    }
    for burn in &burns {
        match paid_by.get(&burn.burn_id) {
            None => found.push(Violation::BurnUnpaid {
                burn_id: burn.burn_id.clone(),
            }),
            Some(txs) if txs.len() > 1 => found.push(Violation::BurnPaidTwice {
                burn_id: burn.burn_id.clone(),
                txs: txs.iter().map(hex::encode).collect(),
            }),
            Some(_) => {}
        }
    }
    for plan in on_chain.values() {
        if let Some(detail) = pays_exactly(plan, &burns, keys.get(&plan.session), &keys) {
            found.push(Violation::PaymentWrong {
                plan_id: hex::encode(&plan.plan_id),
                detail,
            });
        }
    }
    match monerod {
        Some(url) => chain(url, &on_chain, found).await,
        None => Ok(()),
    }
}

/// Whether the plan's transaction is the one its burns (in order, at their
/// addresses and amounts) and its inputs make, as every follower rebuilds
/// it; `Some(what differs)` if not.
fn pays_exactly(
    plan: &db::Plan,
    burns: &[db::Burn],
    group_key: Option<&Vec<u8>>,
    keys: &BTreeMap<i64, Vec<u8>>,
) -> Option<String> {
    use monero_wallet::send::SignableTransaction;
    use processor::scheduler::plan as p;
    let Some(group_key) = group_key.and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok()) else {
        return Some(format!("no confirmed key for session {}", plan.session));
    };
    let signable = match SignableTransaction::read(&mut plan.signable.as_slice()) {
        Ok(s) => s,
        Err(e) => return Some(format!("its transaction does not parse: {e}")),
    };
    let inputs = match p::inputs_of(&plan.signable) {
        Ok(i) => i,
        Err(e) => return Some(format!("its inputs do not parse: {e}")),
    };
    let Some(pair) = processor::accounts::view_pair(&group_key) else {
        return Some("the group key is not a point".into());
    };
    if plan.burn_ids.is_empty() {
        return moves_only_within_the_group(&group_key, &pair, &signable, inputs, keys);
    }
    let mut payments = Vec::new();
    for burn_id in &plan.burn_ids {
        let Some(burn) = burns.iter().find(|b| &b.burn_id == burn_id) else {
            return Some(format!("it pays burn {burn_id}, which was never submitted"));
        };
        let Ok(address) = p::parse_address(&burn.monero_address) else {
            return Some(format!("burn {burn_id}'s address does not parse"));
        };
        payments.push((address, u64::try_from(burn.amount).unwrap_or(0)));
    }
    match p::build(&group_key, &pair, inputs, payments, signable.fee_rate()) {
        Ok(expected) if expected == signable => None,
        Ok(_) => Some(
            "its transaction is not the one its burns' addresses and amounts make \
             (an extra, missing or altered payment)"
                .into(),
        ),
        Err(e) => Some(format!("its burns cannot be paid from its inputs: {e}")),
    }
}

/// A plan paying no burn must keep the money in the group: the
/// consolidation of its inputs into its own key's change, or their forward
/// to another key of the group. `Some(what is wrong)` otherwise.
fn moves_only_within_the_group(
    group_key: &[u8; 32],
    pair: &monero_wallet::ViewPair,
    signable: &monero_wallet::send::SignableTransaction,
    inputs: Vec<monero_wallet::OutputWithDecoys>,
    keys: &BTreeMap<i64, Vec<u8>>,
) -> Option<String> {
    use processor::scheduler::plan as p;
    let fee_rate = signable.fee_rate();
    if p::build_consolidation(group_key, pair, inputs.clone(), fee_rate)
        .is_ok_and(|expected| &expected == signable)
    {
        return None;
    }
    let forwards_within = keys.values().any(|other| {
        <[u8; 32]>::try_from(other.as_slice())
            .ok()
            .filter(|other| other != group_key)
            .and_then(|other| processor::accounts::view_pair(&other))
            .and_then(|target| p::build_forward(group_key, &target, inputs.clone(), fee_rate).ok())
            .is_some_and(|expected| &expected == signable)
    });
    if forwards_within {
        return None;
    }
    Some(
        "it pays no burn, yet it is neither the consolidation of its inputs into the group's \
         change nor their forward to another key of the group"
            .into(),
    )
}

/// Each completed payout's transaction is in a block and matches its plan's
/// eventuality (outputs to the burns' addresses, amounts); no key image is
/// spent by two payouts.
async fn chain(
    monerod: &str,
    on_chain: &BTreeMap<Vec<u8>, db::Plan>,
    found: &mut Vec<Violation>,
) -> Result<(), CheckError> {
    use monero_wallet::transaction::{NotPruned, Pruned, Transaction};
    if on_chain.is_empty() {
        return Ok(());
    }
    let daemon_error = |detail: String| CheckError::Daemon {
        url: monerod.to_owned(),
        detail,
    };
    let client = monero_rpc::RpcClientBuilder::new()
        .build(monerod)
        .map_err(|e| daemon_error(format!("{e:#}")))?
        .daemon_rpc();
    let hashes = on_chain
        .keys()
        .map(|h| monero_rpc::monero::Hash::from_slice(h))
        .collect();
    let answer = client
        .get_transactions(hashes, Some(false), Some(false))
        .await
        .map_err(|e| daemon_error(format!("get_transactions: {e:#}")))?;
    let mut by_hash = BTreeMap::new();
    for tx in answer.txs.unwrap_or_default() {
        by_hash.insert(tx.tx_hash.0.as_bytes().to_vec(), tx);
    }
    let mut key_images: BTreeMap<[u8; 32], Vec<String>> = BTreeMap::new();
    for (hash, plan) in on_chain {
        let (plan_id, tx_hex) = (hex::encode(&plan.plan_id), hex::encode(hash));
        let Some(tx) = by_hash.get(hash) else {
            found.push(Violation::PayoutNotOnChain {
                plan_id,
                tx: tx_hex,
                detail: "monerod does not know it".into(),
            });
            continue;
        };
        if tx.in_pool || tx.block_height.is_none() {
            found.push(Violation::PayoutNotOnChain {
                plan_id,
                tx: tx_hex,
                detail: "only in the pool".into(),
            });
            continue;
        }
        let parsed = hex::decode(&tx.as_hex)
            .ok()
            .and_then(|b| Transaction::<NotPruned>::read(&mut b.as_slice()).ok());
        let Some(parsed) = parsed else {
            found.push(Violation::PaymentWrong {
                plan_id,
                detail: format!("its transaction {tx_hex} from monerod does not parse"),
            });
            continue;
        };
        for input in &parsed.prefix().inputs {
            if let monero_wallet::transaction::Input::ToKey { key_image, .. } = input {
                key_images
                    .entry(key_image.to_bytes())
                    .or_default()
                    .push(tx_hex.clone());
            }
        }
        let eventuality =
            monero_wallet::send::SignableTransaction::read(&mut plan.signable.as_slice())
                .map(monero_wallet::send::Eventuality::from);
        let pruned = Transaction::<Pruned>::from(parsed);
        if !eventuality.is_ok_and(|e| e.matches(&pruned)) {
            found.push(Violation::PaymentWrong {
                plan_id,
                detail: format!(
                    "transaction {tx_hex} on chain does not pay what the plan's transaction pays"
                ),
            });
        }
    }
    for (image, txs) in key_images {
        if txs.len() > 1 {
            found.push(Violation::KeyImageTwice {
                key_image: hex::encode(image),
                txs,
            });
        }
    }
    Ok(())
}
