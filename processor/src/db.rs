//! The processor's Postgres: pool, migrations, and the one-instance lock.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::redact_url;

/// Advisory-lock key held by the running processor: "MNRPROC\0" as a
/// big-endian integer, so it is recognisable in `pg_locks`.
pub const INSTANCE_LOCK_KEY: i64 = 0x4D4E_5250_524F_4300;

/// Why the database could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("database_url {url} is not valid: {source}")]
    BadUrl {
        /// The URL, password redacted.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// Postgres could not be reached.
    #[error(
        "cannot connect to Postgres at {url}: {source}; is it running and does the database exist?"
    )]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// Another process holds the instance lock.
    #[error(
        "another {what} is already running on database {url} (it holds advisory lock {key:#x}); \
         stop it first, or give this one its own database"
    )]
    Locked {
        /// "processor" or "coordinator".
        what: &'static str,
        /// The URL, password redacted.
        url: String,
        /// The lock key.
        key: i64,
    },
    /// Migrations failed.
    #[error("applying migrations to {url} failed: {source}")]
    Migrate {
        /// The URL, password redacted.
        url: String,
        /// Why.
        source: sqlx::migrate::MigrateError,
    },
    /// Any other query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// The session that holds the instance lock; the lock goes with it.
#[derive(Debug)]
pub struct InstanceLock {
    conn: PgConnection,
}

impl InstanceLock {
    /// Takes the lock on its own connection, or fails at once if another
    /// process holds it.
    pub async fn acquire(url: &str) -> Result<Self, DbError> {
        Self::acquire_key(url, INSTANCE_LOCK_KEY, "processor").await
    }

    /// Takes the lock `key` for a program called `what` (for the message).
    pub async fn acquire_key(url: &str, key: i64, what: &'static str) -> Result<Self, DbError> {
        let options = options(url)?;
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(|source| DbError::Connect {
                url: redact_url(url),
                source,
            })?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            return Err(DbError::Locked {
                what,
                url: redact_url(url),
                key,
            });
        }
        Ok(Self { conn })
    }

    /// Checks the lock's session is still alive (Postgres restarts drop it).
    pub async fn check(&mut self) -> Result<(), sqlx::Error> {
        self.conn.ping().await
    }
}

fn options(url: &str) -> Result<PgConnectOptions, DbError> {
    url.parse::<PgConnectOptions>()
        .map_err(|source| DbError::BadUrl {
            url: redact_url(url),
            source,
        })
}

/// Opens the pool.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options = options(url)?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect {
            url: redact_url(url),
            source,
        })
}

/// Applies `migrations/`.
pub async fn migrate(pool: &PgPool, url: &str) -> Result<(), DbError> {
    sqlx::migrate!("../migrations")
        .run(pool)
        .await
        .map_err(|source| DbError::Migrate {
            url: redact_url(url),
            source,
        })
}
