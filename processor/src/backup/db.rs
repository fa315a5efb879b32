//! The SQL of a key backup: what export reads (in one snapshot) and what
//! import writes (in one transaction, into an empty database).

use sqlx::{PgConnection, Row};

use service::db::{to_i64, to_u64};

/// A key row as the database holds it (shares still sealed under the KEK).
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// Session.
    pub session: u64,
    /// DKG attempt that produced the key.
    pub attempt: u32,
    /// t.
    pub threshold: u16,
    /// Our index.
    pub own_index: u16,
    /// Identity keys of participants 1..n.
    pub participant_keys: Vec<Vec<u8>>,
    /// Status text (`generated`, `confirmed`, or a DKG still running/failed).
    pub status: String,
    /// Everyone's round-1 packages (public).
    pub round1_packages: Option<Vec<Vec<u8>>>,
    /// The share, sealed under the KEK.
    pub sealed_key_package: Option<Vec<u8>>,
    /// Public key package.
    pub public_key_package: Option<Vec<u8>>,
    /// Group key.
    pub group_key: Option<Vec<u8>>,
    /// Address.
    pub monero_address: Option<String>,
    /// Finality depth fixed with the key.
    pub confirmations: Option<u64>,
    /// Window length fixed with the key.
    pub window_blocks: Option<u64>,
    /// First Monero block scanned for the key.
    pub activation_height: Option<u64>,
}

fn small(v: i32, what: &str) -> Result<u16, sqlx::Error> {
    u16::try_from(v).map_err(|_| sqlx::Error::Decode(format!("{what} {v} is not a u16").into()))
}

/// The identity: public key and sealed secret.
pub async fn identity(conn: &mut PgConnection) -> Result<Option<(Vec<u8>, Vec<u8>)>, sqlx::Error> {
    let row = sqlx::query("SELECT public_key, sealed_secret FROM identity")
        .fetch_optional(conn)
        .await?;
    row.map(|r| Ok((r.try_get("public_key")?, r.try_get("sealed_secret")?)))
        .transpose()
}

/// Every key row, in session order.
pub async fn keys(conn: &mut PgConnection) -> Result<Vec<StoredKey>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT session, attempt, threshold, own_index, participant_keys, status, round1_packages,
                sealed_key_package, public_key_package, group_key, monero_address,
                confirmations, window_blocks, activation_height
         FROM keys ORDER BY session",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredKey {
                session: to_u64(r.try_get("session")?),
                attempt: u32::try_from(r.try_get::<i32, _>("attempt")?)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                threshold: small(r.try_get("threshold")?, "threshold")?,
                own_index: small(r.try_get("own_index")?, "own_index")?,
                participant_keys: r.try_get("participant_keys")?,
                status: r.try_get("status")?,
                round1_packages: r.try_get("round1_packages")?,
                sealed_key_package: r.try_get("sealed_key_package")?,
                public_key_package: r.try_get("public_key_package")?,
                group_key: r.try_get("group_key")?,
                monero_address: r.try_get("monero_address")?,
                confirmations: r.try_get::<Option<i64>, _>("confirmations")?.map(to_u64),
                window_blocks: r.try_get::<Option<i64>, _>("window_blocks")?.map(to_u64),
                activation_height: r
                    .try_get::<Option<i64>, _>("activation_height")?
                    .map(to_u64),
            })
        })
        .collect()
}

/// A registered account, as a settlement block brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredAccount {
    /// The account number.
    pub account: u32,
    /// First Monero block whose outputs to it are credited.
    pub active_from: u64,
    /// The settlement block that registered it (older rows have none).
    pub settlement_block: Option<u64>,
}

/// Every registered account, ascending.
pub async fn accounts(conn: &mut PgConnection) -> Result<Vec<StoredAccount>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT account, active_from, settlement_block FROM accounts ORDER BY account")
            .fetch_all(conn)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredAccount {
                account: u32::try_from(r.try_get::<i32, _>("account")?)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                active_from: to_u64(r.try_get("active_from")?),
                settlement_block: r.try_get::<Option<i64>, _>("settlement_block")?.map(to_u64),
            })
        })
        .collect()
}

/// A settlement block as far as a restore needs it: which batches it
/// included (a rescanned batch found there is included at once) and how far
/// it let Monero be scanned. Its burns are not carried (README "Backup and
/// restore" says why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSettlementBlock {
    /// Block number.
    pub number: u64,
    /// Batches it included.
    pub included_batch_ids: Vec<u64>,
    /// The Monero horizon it carried.
    pub monero_horizon: u64,
}

/// Every settlement block taken in, ascending.
pub async fn settlement_blocks(
    conn: &mut PgConnection,
) -> Result<Vec<StoredSettlementBlock>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT number, included_batch_ids, monero_horizon FROM settlement_blocks ORDER BY number",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredSettlementBlock {
                number: to_u64(r.try_get("number")?),
                included_batch_ids: r
                    .try_get::<Vec<i64>, _>("included_batch_ids")?
                    .into_iter()
                    .map(to_u64)
                    .collect(),
                monero_horizon: to_u64(r.try_get("monero_horizon")?),
            })
        })
        .collect()
}

/// What an import would overwrite, if anything: a description for the
/// refusal, or `None` when the database is empty.
pub async fn occupant(conn: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM keys")
        .fetch_one(&mut *conn)
        .await?;
    if keys > 0 {
        return Ok(Some(format!("{keys} key(s)")));
    }
    let identity: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM identity)")
        .fetch_one(&mut *conn)
        .await?;
    if identity {
        return Ok(Some(
            "an identity key (a processor was already started on it)".into(),
        ));
    }
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&mut *conn)
        .await?;
    if accounts > 0 {
        return Ok(Some(format!("{accounts} registered account(s)")));
    }
    let blocks: i64 = sqlx::query_scalar("SELECT count(*) FROM settlement_blocks")
        .fetch_one(&mut *conn)
        .await?;
    if blocks > 0 {
        return Ok(Some(format!("{blocks} settlement block(s)")));
    }
    if link::db::any_link(conn).await? {
        return Ok(Some("a link to a coordinator".into()));
    }
    Ok(None)
}

/// Stores a finished key (its share already sealed under this KEK).
pub async fn insert_key(conn: &mut PgConnection, key: &StoredKey) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO keys (session, attempt, threshold, own_index, participant_keys, status,
                           round1_packages, sealed_key_package, public_key_package, group_key,
                           monero_address, confirmations, window_blocks, activation_height)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(to_i64(key.session))
    .bind(i32::try_from(key.attempt).unwrap_or(i32::MAX))
    .bind(i32::from(key.threshold))
    .bind(i32::from(key.own_index))
    .bind(&key.participant_keys)
    .bind(&key.status)
    .bind(&key.round1_packages)
    .bind(&key.sealed_key_package)
    .bind(&key.public_key_package)
    .bind(&key.group_key)
    .bind(&key.monero_address)
    .bind(key.confirmations.map(to_i64))
    .bind(key.window_blocks.map(to_i64))
    .bind(key.activation_height.map(to_i64))
    .execute(conn)
    .await?;
    Ok(())
}

/// Registers an account.
pub async fn insert_account(
    conn: &mut PgConnection,
    account: &StoredAccount,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO accounts (account, active_from, settlement_block) VALUES ($1, $2, $3)",
    )
    .bind(i32::try_from(account.account).unwrap_or(i32::MAX))
    .bind(to_i64(account.active_from))
    .bind(account.settlement_block.map(to_i64))
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores a settlement block (without burns).
pub async fn insert_settlement_block(
    conn: &mut PgConnection,
    block: &StoredSettlementBlock,
) -> Result<(), sqlx::Error> {
    let included: Vec<i64> = block
        .included_batch_ids
        .iter()
        .map(|&i| to_i64(i))
        .collect();
    sqlx::query(
        "INSERT INTO settlement_blocks (number, included_batch_ids, monero_horizon) VALUES ($1, $2, $3)",
    )
    .bind(to_i64(block.number))
    .bind(&included)
    .bind(to_i64(block.monero_horizon))
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes the caller's fresh transaction one read-only snapshot, so every
/// part of a backup taken from a running processor agrees with the others.
pub async fn snapshot(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(conn)
        .await?;
    Ok(())
}
