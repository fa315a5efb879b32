//! The `keys` table: one row per key (session).

use sqlx::{PgConnection, PgPool, Row};

use service::db::{to_i64, to_u64};

/// Where a key generation is (`keys.status`, whose CHECK holds the same
/// names): `round1` -> `round2` -> `generated` (reported, awaiting the
/// coordinator) -> `confirmed`; or `failed` with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum KeyState {
    /// Round 1 sent, waiting for everyone's round-1 packages.
    Round1,
    /// Round 2 sent, waiting for the shares addressed here.
    Round2,
    /// Generated and reported, waiting for the coordinator's confirmation.
    Generated,
    /// Confirmed: scanned from its activation height and signed with.
    Confirmed,
    /// Failed (the reason and any culprit are stored).
    Failed,
}

impl KeyState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Round1 => "round1",
            Self::Round2 => "round2",
            Self::Generated => "generated",
            Self::Confirmed => "confirmed",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's stored state.
#[derive(Debug, Clone)]
pub struct KeyRow {
    /// Session.
    pub session: u64,
    /// Attempt.
    pub attempt: u32,
    /// t.
    pub threshold: u16,
    /// Our index.
    pub own_index: u16,
    /// Identity keys of participants 1..n.
    pub participant_keys: Vec<Vec<u8>>,
    /// Status.
    pub status: KeyState,
    /// Sealed round-1 secret (until round 2 is done).
    pub sealed_round1_secret: Option<Vec<u8>>,
    /// Sealed round-2 secret (until the key is generated).
    pub sealed_round2_secret: Option<Vec<u8>>,
    /// Everyone's round-1 packages, index order.
    pub round1_packages: Option<Vec<Vec<u8>>>,
    /// Sealed key package.
    pub sealed_key_package: Option<Vec<u8>>,
    /// Public key package.
    pub public_key_package: Option<Vec<u8>>,
    /// Group key.
    pub group_key: Option<Vec<u8>>,
    /// Address.
    pub monero_address: Option<String>,
    /// Failure.
    pub failure: Option<String>,
    /// Blamed participant.
    pub blamed: Option<u16>,
    /// Last update, Unix ms.
    pub updated_unix_ms: i64,
    /// Finality depth fixed with the key.
    pub confirmations: Option<u64>,
    /// Coordination window length fixed with the key.
    pub window_blocks: Option<u64>,
    /// First Monero block scanned for the key (once confirmed).
    pub activation_height: Option<u64>,
}

const COLUMNS: &str = "session, attempt, threshold, own_index, participant_keys, status, \
    sealed_round1_secret, sealed_round2_secret, round1_packages, sealed_key_package, \
    public_key_package, group_key, monero_address, failure, blamed, \
    (extract(epoch from updated_at) * 1000)::bigint AS updated_unix_ms, confirmations, window_blocks, \
    activation_height";

fn small(v: i32) -> u16 {
    u16::try_from(v).unwrap_or(0)
}

/// A `keys` row as [`COLUMNS`] selects it.
#[derive(sqlx::FromRow)]
struct KeyRecord {
    session: i64,
    attempt: i32,
    threshold: i32,
    own_index: i32,
    participant_keys: Vec<Vec<u8>>,
    status: KeyState,
    sealed_round1_secret: Option<Vec<u8>>,
    sealed_round2_secret: Option<Vec<u8>>,
    round1_packages: Option<Vec<Vec<u8>>>,
    sealed_key_package: Option<Vec<u8>>,
    public_key_package: Option<Vec<u8>>,
    group_key: Option<Vec<u8>>,
    monero_address: Option<String>,
    failure: Option<String>,
    blamed: Option<i32>,
    updated_unix_ms: i64,
    confirmations: Option<i64>,
    window_blocks: Option<i64>,
    activation_height: Option<i64>,
}

impl From<KeyRecord> for KeyRow {
    fn from(r: KeyRecord) -> Self {
        KeyRow {
            session: to_u64(r.session),
            attempt: u32::try_from(r.attempt).unwrap_or(0),
            threshold: small(r.threshold),
            own_index: small(r.own_index),
            participant_keys: r.participant_keys,
            status: r.status,
            sealed_round1_secret: r.sealed_round1_secret,
            sealed_round2_secret: r.sealed_round2_secret,
            round1_packages: r.round1_packages,
            sealed_key_package: r.sealed_key_package,
            public_key_package: r.public_key_package,
            group_key: r.group_key,
            monero_address: r.monero_address,
            failure: r.failure,
            blamed: r.blamed.map(small),
            updated_unix_ms: r.updated_unix_ms,
            confirmations: r.confirmations.map(to_u64),
            window_blocks: r.window_blocks.map(to_u64),
            activation_height: r.activation_height.map(to_u64),
        }
    }
}

/// Loads a key and locks its row for the caller's transaction.
pub async fn lock(conn: &mut PgConnection, session: u64) -> Result<Option<KeyRow>, sqlx::Error> {
    let row = sqlx::query_as::<_, KeyRecord>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM keys WHERE session = $1 FOR NO KEY UPDATE"
    )))
    .bind(to_i64(session))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(KeyRow::from))
}

/// Every key, in session order.
pub async fn list(pool: &PgPool) -> Result<Vec<KeyRow>, sqlx::Error> {
    let rows = sqlx::query_as::<_, KeyRecord>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM keys ORDER BY session"
    )))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(KeyRow::from).collect())
}

/// The parameters a key fixes for everything derived from the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainParams {
    /// Finality depth.
    pub confirmations: u64,
    /// Coordination window length.
    pub window_blocks: u64,
}

/// Stores a new key in round 1.
#[allow(clippy::too_many_arguments)]
pub async fn insert_round1(
    conn: &mut PgConnection,
    session: u64,
    attempt: u32,
    threshold: u16,
    own_index: u16,
    participant_keys: &[Vec<u8>],
    sealed_round1_secret: &[u8],
    chain: ChainParams,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO keys (session, attempt, threshold, own_index, participant_keys, status, sealed_round1_secret,
                           confirmations, window_blocks)
         VALUES ($1, $2, $3, $4, $5, 'round1', $6, $7, $8)",
    )
    .bind(to_i64(session))
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .bind(i32::from(threshold))
    .bind(i32::from(own_index))
    .bind(participant_keys)
    .bind(sealed_round1_secret)
    .bind(to_i64(chain.confirmations))
    .bind(to_i64(chain.window_blocks))
    .execute(conn)
    .await?;
    Ok(())
}

/// Round 2 done: keep the round-1 packages, swap the sealed secrets.
pub async fn set_round2(
    conn: &mut PgConnection,
    session: u64,
    sealed_round2_secret: &[u8],
    round1_packages: &[Vec<u8>],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keys SET status = 'round2', sealed_round1_secret = NULL, sealed_round2_secret = $2,
                round1_packages = $3, updated_at = now()
         WHERE session = $1 AND status = 'round1'",
    )
    .bind(to_i64(session))
    .bind(sealed_round2_secret)
    .bind(round1_packages)
    .execute(conn)
    .await?;
    Ok(())
}

/// Key generated: store it, forget the round secrets.
pub async fn set_generated(
    conn: &mut PgConnection,
    session: u64,
    sealed_key_package: &[u8],
    public_key_package: &[u8],
    group_key: &[u8],
    monero_address: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keys SET status = 'generated', sealed_round2_secret = NULL, sealed_key_package = $2,
                public_key_package = $3, group_key = $4, monero_address = $5, updated_at = now()
         WHERE session = $1 AND status = 'round2'",
    )
    .bind(to_i64(session))
    .bind(sealed_key_package)
    .bind(public_key_package)
    .bind(group_key)
    .bind(monero_address)
    .execute(conn)
    .await?;
    Ok(())
}

/// The coordinator confirmed the key: it is scanned from `activation_height`.
pub async fn set_confirmed(
    conn: &mut PgConnection,
    session: u64,
    activation_height: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keys SET status = 'confirmed', activation_height = $2, updated_at = now()
         WHERE session = $1 AND status = 'generated'",
    )
    .bind(to_i64(session))
    .bind(to_i64(activation_height))
    .execute(conn)
    .await?;
    Ok(())
}

/// A confirmed key as the scanner uses it.
#[derive(Debug, Clone)]
pub struct ConfirmedKey {
    /// Session.
    pub session: u64,
    /// Group key.
    pub group_key: [u8; 32],
    /// Parameters fixed with the key.
    pub chain: ChainParams,
    /// First Monero block scanned for it.
    pub activation_height: u64,
}

/// Every confirmed key with its parameters, by activation height (then
/// session). A key confirmed before its parameters were fixed (stored
/// without them) is skipped: it cannot be scanned deterministically.
pub async fn confirmed_keys(pool: &PgPool) -> Result<Vec<ConfirmedKey>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT session, group_key, confirmations, window_blocks, activation_height FROM keys
         WHERE status = 'confirmed' AND confirmations IS NOT NULL AND window_blocks IS NOT NULL
           AND activation_height IS NOT NULL
         ORDER BY activation_height, session",
    )
    .fetch_all(pool)
    .await?;
    let mut keys = Vec::with_capacity(rows.len());
    for r in rows {
        let group_key: Option<Vec<u8>> = r.try_get("group_key")?;
        let Some(group_key) = group_key.and_then(|k| <[u8; 32]>::try_from(k).ok()) else {
            continue;
        };
        keys.push(ConfirmedKey {
            session: to_u64(r.try_get("session")?),
            group_key,
            chain: ChainParams {
                confirmations: to_u64(r.try_get("confirmations")?),
                window_blocks: to_u64(r.try_get("window_blocks")?),
            },
            activation_height: to_u64(r.try_get("activation_height")?),
        });
    }
    Ok(keys)
}

/// The DKG failed; secrets of the attempt are dropped.
pub async fn set_failed(
    conn: &mut PgConnection,
    session: u64,
    failure: &str,
    blamed: Option<u16>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keys SET status = 'failed', failure = $2, blamed = $3,
                sealed_round1_secret = NULL, sealed_round2_secret = NULL, updated_at = now()
         WHERE session = $1 AND status IN ('round1', 'round2')",
    )
    .bind(to_i64(session))
    .bind(failure)
    .bind(blamed.map(i32::from))
    .execute(conn)
    .await?;
    Ok(())
}

/// A `keys` row as [`active`] reads it.
#[derive(sqlx::FromRow)]
struct ActiveRecord {
    session: i64,
    // Not `Option`: a confirmed key got its group key when it was generated,
    // so a NULL is a broken row (an error), not "no active key".
    group_key: Vec<u8>,
}

/// The active key: the newest confirmed session, with its group key.
pub async fn active(pool: &PgPool) -> Result<Option<(u64, [u8; 32])>, sqlx::Error> {
    let row = sqlx::query_as::<_, ActiveRecord>(
        "SELECT session, group_key FROM keys WHERE status = 'confirmed' ORDER BY session DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|r| Some((to_u64(r.session), r.group_key.try_into().ok()?))))
}

/// A confirmed key as its windows, plans and signatures need it.
#[derive(Debug, Clone)]
pub struct ActiveKey {
    /// Session.
    pub session: u64,
    /// Group key.
    pub group_key: [u8; 32],
    /// Our index.
    pub own_index: u16,
    /// Participants.
    pub n: u16,
    /// Signers needed.
    pub threshold: u16,
}

/// What the scheduler needs of a confirmed key: our index, n and t.
pub async fn participation(
    conn: impl sqlx::PgExecutor<'_>,
    session: u64,
) -> Result<Option<ActiveKey>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT session, group_key, own_index, cardinality(participant_keys) AS n, threshold FROM keys
         WHERE session = $1 AND status = 'confirmed'",
    )
    .bind(to_i64(session))
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let group_key: Option<Vec<u8>> = r.try_get("group_key")?;
    let Some(group_key) = group_key.and_then(|k| <[u8; 32]>::try_from(k).ok()) else {
        return Ok(None);
    };
    Ok(Some(ActiveKey {
        session: to_u64(r.try_get("session")?),
        group_key,
        own_index: small(r.try_get("own_index")?),
        n: small(r.try_get("n")?),
        threshold: small(r.try_get("threshold")?),
    }))
}

/// A confirmed `keys` row as [`confirmed_packages`] reads it.
#[derive(sqlx::FromRow)]
struct PackagesRecord {
    own_index: i32,
    sealed_key_package: Option<Vec<u8>>,
    public_key_package: Option<Vec<u8>>,
}

/// A confirmed key's packages for signing: our index, sealed key package,
/// public key package; `None` if session `session` has no confirmed key.
pub async fn confirmed_packages(
    conn: &mut PgConnection,
    session: u64,
) -> Result<Option<(u16, Vec<u8>, Vec<u8>)>, sqlx::Error> {
    let row = sqlx::query_as::<_, PackagesRecord>(
        "SELECT own_index, sealed_key_package, public_key_package FROM keys
         WHERE session = $1 AND status = 'confirmed'",
    )
    .bind(to_i64(session))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| {
        (
            u16::try_from(r.own_index).unwrap_or(0),
            r.sealed_key_package.unwrap_or_default(),
            r.public_key_package.unwrap_or_default(),
        )
    }))
}

/// A `keys` row as [`shape`] reads it.
#[derive(sqlx::FromRow)]
struct ShapeRecord {
    threshold: i32,
    n: i32,
    own_index: i32,
}

/// A key's shape: (threshold, participants, our index).
pub async fn shape(conn: &mut PgConnection, session: u64) -> Result<(u16, u16, u16), sqlx::Error> {
    let row = sqlx::query_as::<_, ShapeRecord>(
        "SELECT threshold, cardinality(participant_keys) AS n, own_index FROM keys WHERE session = $1",
    )
    .bind(to_i64(session))
    .fetch_one(conn)
    .await?;
    let small = |v: i32| u16::try_from(v).unwrap_or(0);
    Ok((small(row.threshold), small(row.n), small(row.own_index)))
}

/// Whether session `session` has a confirmed key.
pub async fn is_confirmed(pool: &PgPool, session: u64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM keys WHERE session = $1 AND status = 'confirmed')",
    )
    .bind(to_i64(session))
    .fetch_one(pool)
    .await
}
