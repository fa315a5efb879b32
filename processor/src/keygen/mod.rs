//! Key generation driven by the coordinator: each round's output commits in
//! the same transaction as the message that carries it, so a processor killed
//! at any point resumes the same DKG and never sends two different packages
//! for one (session, attempt). The cryptography runs in the keystore.

pub mod db;

use std::collections::BTreeMap;

use prost::Message as _;
use proto::processor_v1::{
    KeyConfirmed, KeyGenBlame, KeyGenRound1, KeyGenRound1Packages, KeyGenRound2,
    KeyGenRound2Packages, KeyGenStart, KeyGenerated, ProcessorIdentity, ProcessorMessage,
    processor_message::Kind,
};
use sqlx::PgConnection;
use tracing::{info, warn};

use crate::keystore::dkg::{DkgError, DkgParams};
use crate::keystore::{Keystore, KeystoreError};
use crate::link::{self, HandleError, OutMessage};

fn out(uid: String, kind: &'static str, message: Kind) -> OutMessage {
    OutMessage {
        uid,
        kind,
        payload: ProcessorMessage {
            kind: Some(message),
        }
        .encode_to_vec(),
    }
}

fn small(what: &str, v: u32) -> Result<u16, HandleError> {
    u16::try_from(v).map_err(|_| HandleError::Rejected(format!("{what} {v} is out of range")))
}

fn params_of(row: &db::KeyRow) -> Result<DkgParams, HandleError> {
    let mut participants = BTreeMap::new();
    for (i, key) in row.participant_keys.iter().enumerate() {
        let key: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| HandleError::Local("stored identity key is not 32 bytes".into()))?;
        participants.insert(u16::try_from(i + 1).unwrap_or(u16::MAX), key);
    }
    Ok(DkgParams {
        session: row.session,
        attempt: row.attempt,
        threshold: row.threshold,
        own_index: row.own_index,
        participants,
    })
}

fn keystore_error(e: KeystoreError) -> HandleError {
    match e {
        KeystoreError::Storage(e) => HandleError::Storage(e),
        // Our own sealed secrets or stored key material: this side's fault.
        other => HandleError::Local(other.to_string()),
    }
}

/// Enqueues this processor's identity announcement (once per identity key).
pub async fn announce_identity(
    conn: &mut PgConnection,
    link_id: &str,
    keystore: &Keystore,
) -> Result<(), sqlx::Error> {
    let key = keystore.identity_public();
    link::enqueue(
        conn,
        link_id,
        &[out(
            format!("identity/{}", hex::encode(key)),
            "identity",
            Kind::Identity(ProcessorIdentity {
                encryption_public_key: key.to_vec(),
            }),
        )],
    )
    .await?;
    Ok(())
}

/// `KeyGenStart`: round 1.
#[tracing::instrument(name = "keygen.start", skip_all, fields(session = message.session))]
pub async fn start(
    conn: &mut PgConnection,
    link_id: &str,
    keystore: &Keystore,
    message: KeyGenStart,
) -> Result<(), HandleError> {
    metrics::counter!(crate::metrics::KEYGEN_ROUNDS, "round" => "1").increment(1);
    if db::lock(conn, message.session).await?.is_some() {
        return Err(HandleError::Rejected(format!(
            "key generation for session {} was already started",
            message.session
        )));
    }
    let mut participants = BTreeMap::new();
    for p in &message.participants {
        let key: [u8; 32] = p.encryption_public_key.as_slice().try_into().map_err(|_| {
            HandleError::Rejected(format!(
                "participant {} identity key is not 32 bytes",
                p.index
            ))
        })?;
        if participants
            .insert(small("participant index", p.index)?, key)
            .is_some()
        {
            return Err(HandleError::Rejected(format!(
                "participant {} listed twice",
                p.index
            )));
        }
    }
    let params = DkgParams {
        session: message.session,
        attempt: 0,
        threshold: small("threshold", message.threshold)?,
        own_index: small("own index", message.own_index)?,
        participants,
    };
    params
        .validate(&keystore.identity_public())
        .map_err(HandleError::Rejected)?;
    if message.confirmations == 0 || message.window_blocks == 0 {
        return Err(HandleError::Rejected(format!(
            "KeyGenStart for session {} fixes confirmations = {} and window_blocks = {}; both must be \
             at least 1 (a coordinator older than this processor sends neither: upgrade it)",
            message.session, message.confirmations, message.window_blocks
        )));
    }
    let chain = db::ChainParams {
        confirmations: message.confirmations,
        window_blocks: message.window_blocks,
    };
    let round1 = keystore.dkg_round1(&params).map_err(dkg_rejection)?;
    let keys: Vec<Vec<u8>> = params.participants.values().map(|k| k.to_vec()).collect();
    db::insert_round1(
        conn,
        params.session,
        params.attempt,
        params.threshold,
        params.own_index,
        &keys,
        &round1.sealed_secret,
        chain,
    )
    .await?;
    link::enqueue(
        conn,
        link_id,
        &[out(
            format!("keygen-round1/{}/{}", params.session, params.attempt),
            "key_gen_round1",
            Kind::KeyGenRound1(KeyGenRound1 {
                session: params.session,
                attempt: params.attempt,
                package: round1.package,
            }),
        )],
    )
    .await?;
    info!(
        session = params.session,
        t = params.threshold,
        n = params.n(),
        index = params.own_index,
        "key generation round 1 sent"
    );
    Ok(())
}

fn dkg_rejection(e: DkgError) -> HandleError {
    match e {
        DkgError::Keystore(k) => keystore_error(k),
        other => HandleError::Rejected(other.to_string()),
    }
}

async fn load(
    conn: &mut PgConnection,
    session: u64,
    attempt: u32,
    status: db::KeyState,
) -> Result<db::KeyRow, HandleError> {
    let row = db::lock(conn, session)
        .await?
        .ok_or_else(|| HandleError::Rejected(format!("no key generation for session {session}")))?;
    if row.attempt != attempt {
        return Err(HandleError::Rejected(format!(
            "session {session} is at attempt {}, not {attempt}",
            row.attempt
        )));
    }
    if row.status != status {
        return Err(HandleError::Rejected(format!(
            "session {session} is in status {}, expected {status}",
            row.status
        )));
    }
    Ok(row)
}

async fn blame(
    conn: &mut PgConnection,
    link_id: &str,
    row: &db::KeyRow,
    blame: crate::keystore::dkg::Blame,
) -> Result<(), HandleError> {
    warn!(
        session = row.session,
        accused = blame.accused,
        "DKG participant blamed: {}",
        blame.reason
    );
    db::set_failed(
        conn,
        row.session,
        &format!("participant {} blamed: {}", blame.accused, blame.reason),
        Some(blame.accused),
    )
    .await?;
    link::enqueue(
        conn,
        link_id,
        &[out(
            format!("keygen-blame/{}/{}", row.session, row.attempt),
            "key_gen_blame",
            Kind::KeyGenBlame(KeyGenBlame {
                session: row.session,
                attempt: row.attempt,
                accused: u32::from(blame.accused),
                evidence: blame.evidence,
                reason: blame.reason,
                decryption_proof: blame.decryption_proof,
            }),
        )],
    )
    .await?;
    Ok(())
}

fn packages(
    map: &std::collections::HashMap<u32, Vec<u8>>,
) -> Result<BTreeMap<u16, Vec<u8>>, HandleError> {
    map.iter()
        .map(|(&i, b)| Ok((small("participant index", i)?, b.clone())))
        .collect()
}

/// `KeyGenRound1Packages`: round 2.
#[tracing::instrument(name = "keygen.round1_packages", skip_all, fields(session = message.session, attempt = message.attempt))]
pub async fn round1_packages(
    conn: &mut PgConnection,
    link_id: &str,
    keystore: &Keystore,
    message: KeyGenRound1Packages,
) -> Result<(), HandleError> {
    metrics::counter!(crate::metrics::KEYGEN_ROUNDS, "round" => "2").increment(1);
    let row = load(conn, message.session, message.attempt, db::KeyState::Round1).await?;
    let params = params_of(&row)?;
    let all = packages(&message.packages)?;
    let sealed = row
        .sealed_round1_secret
        .as_deref()
        .ok_or_else(|| HandleError::Local("round-1 secret is gone".into()))?;
    match keystore.dkg_round2(&params, sealed, &all) {
        Ok(round2) => {
            let ordered: Vec<Vec<u8>> = params
                .participants
                .keys()
                .map(|i| all.get(i).cloned().unwrap_or_default())
                .collect();
            db::set_round2(conn, row.session, &round2.sealed_secret, &ordered).await?;
            link::enqueue(
                conn,
                link_id,
                &[out(
                    format!("keygen-round2/{}/{}", row.session, row.attempt),
                    "key_gen_round2",
                    Kind::KeyGenRound2(KeyGenRound2 {
                        session: row.session,
                        attempt: row.attempt,
                        packages: round2
                            .packages
                            .into_iter()
                            .map(|(i, c)| (u32::from(i), c))
                            .collect(),
                    }),
                )],
            )
            .await?;
            info!(session = row.session, "key generation round 2 sent");
            Ok(())
        }
        Err(DkgError::Blame(b)) => blame(conn, link_id, &row, b).await,
        Err(e) => Err(dkg_rejection(e)),
    }
}

/// `KeyGenRound2Packages`: round 3, the key.
#[tracing::instrument(name = "keygen.round2_packages", skip_all, fields(session = message.session, attempt = message.attempt))]
pub async fn round2_packages(
    conn: &mut PgConnection,
    link_id: &str,
    keystore: &Keystore,
    message: KeyGenRound2Packages,
) -> Result<(), HandleError> {
    let row = load(conn, message.session, message.attempt, db::KeyState::Round2).await?;
    let params = params_of(&row)?;
    let round1: BTreeMap<u16, Vec<u8>> = row
        .round1_packages
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, p)| (u16::try_from(i + 1).unwrap_or(u16::MAX), p))
        .collect();
    let sealed = row
        .sealed_round2_secret
        .as_deref()
        .ok_or_else(|| HandleError::Local("round-2 secret is gone".into()))?;
    match keystore.dkg_round3(&params, sealed, &round1, &packages(&message.packages)?) {
        Ok(key) => {
            db::set_generated(
                conn,
                row.session,
                &key.sealed_key_package,
                &key.public_key_package,
                &key.group_key,
                &key.monero_address,
            )
            .await?;
            link::enqueue(
                conn,
                link_id,
                &[out(
                    format!("keygen-generated/{}", row.session),
                    "key_generated",
                    Kind::KeyGenerated(KeyGenerated {
                        session: row.session,
                        group_key: key.group_key.to_vec(),
                        monero_address: key.monero_address.clone(),
                    }),
                )],
            )
            .await?;
            info!(session = row.session, group_key = %hex::encode(key.group_key), address = %key.monero_address, "key generated");
            Ok(())
        }
        Err(DkgError::Blame(b)) => blame(conn, link_id, &row, b).await,
        Err(e) => Err(dkg_rejection(e)),
    }
}

/// `KeyConfirmed`: the key becomes active.
pub async fn confirmed(conn: &mut PgConnection, message: KeyConfirmed) -> Result<(), HandleError> {
    let Some(row) = db::lock(conn, message.session).await? else {
        return foreign_confirmed(conn, message).await;
    };
    if row.status != db::KeyState::Generated {
        return Err(HandleError::Rejected(format!(
            "session {} is in status {}, not generated",
            row.session, row.status
        )));
    }
    if row.group_key.as_deref() != Some(message.group_key.as_slice()) {
        return Err(HandleError::Rejected(format!(
            "the coordinator confirmed group key {} for session {}, but this processor generated {}",
            hex::encode(&message.group_key),
            row.session,
            hex::encode(row.group_key.unwrap_or_default())
        )));
    }
    // The key must not reach back below what this processor may already
    // have scanned, or it would report those blocks differently from a
    // processor that learnt of the key sooner.
    let horizon = crate::settlement::db::horizon(&mut *conn).await?;
    if horizon.is_some_and(|h| message.activation_height <= h) {
        return Err(HandleError::Rejected(format!(
            "the coordinator activates key {} at Monero block {}, at or below the horizon {} of a \
             settlement block it sent before: processors may have scanned that block already",
            row.session,
            message.activation_height,
            horizon.unwrap_or_default()
        )));
    }
    db::set_confirmed(conn, row.session, message.activation_height).await?;
    info!(
        session = row.session,
        activation_height = message.activation_height,
        "key confirmed: scanned from its activation height"
    );
    Ok(())
}

/// `KeyConfirmed` for a key this processor holds no share of: every
/// processor learns every key of the group. A leaving validator set's keys
/// forward to it; a joining processor learns which keys came before its
/// own (burns named for none are the first key's).
async fn foreign_confirmed(
    conn: &mut PgConnection,
    message: KeyConfirmed,
) -> Result<(), HandleError> {
    if message.group_key.len() != 32
        || crate::accounts::view_pair(
            &<[u8; 32]>::try_from(message.group_key.as_slice()).unwrap_or_default(),
        )
        .is_none()
    {
        return Err(HandleError::Rejected(format!(
            "the coordinator confirmed key {}, of which this processor holds no share, but its group \
             key is not a valid point",
            message.session
        )));
    }
    let horizon = crate::settlement::db::horizon(&mut *conn).await?;
    if horizon.is_some_and(|h| message.activation_height <= h) {
        return Err(HandleError::Rejected(format!(
            "the coordinator activates key {} at Monero block {}, at or below the horizon \
             {} of a settlement block it sent before: this processor's keys may have scanned past it",
            message.session,
            message.activation_height,
            horizon.unwrap_or_default()
        )));
    }
    if crate::lifecycle::db::insert_foreign(
        conn,
        message.session,
        &message.group_key,
        message.activation_height,
    )
    .await?
    {
        info!(
            session = message.session,
            activation_height = message.activation_height,
            "a key of which this processor holds no share was confirmed: known for the rotation \
             (its own keys forward to a newer one)"
        );
    }
    Ok(())
}
