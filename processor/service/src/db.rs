//! Postgres for both ends of the link: the pool, migrations, and the
//! one-instance lock.
//!
//! Migrations: every crate that owns tables keeps its own `migrations/`
//! directory and exports it as a `sqlx::migrate::Migrator` (`link::MIGRATOR`,
//! the processor's and the coordinator's own). A program applies all the sets
//! for its database through [`migrate`], which assembles them into ONE
//! migrator: one `_sqlx_migrations` table, one advisory lock, and an applied
//! version no set knows is still an error (nothing is silently ignored).
//! sqlx applies migrations in version order, so each crate has its own
//! version range, ordered as the crates depend on each other:
//!
//! | range     | crate                                                        |
//! |-----------|--------------------------------------------------------------|
//! | 1–99      | `link` (`processor/link/migrations`), on both ends            |
//! | 100–199   | the processor (`processor/migrations`) / the coordinator-mock (`coordinator-mock/migrations`) |
//!
//! Two sets sharing a version is refused before anything is applied
//! ([`DbError::MigrationClash`]).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use sqlx::migrate::Migrator;

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
    /// Two crates' migration sets for one database share a version.
    #[error(
        "migration version {version} is used by two crates' migrations ({first:?} and {second:?}); \
         each crate numbers its migrations in its own range (see the crate `processor-service`, db.rs)"
    )]
    MigrationClash {
        /// The version both use.
        version: i64,
        /// The description of the first.
        first: String,
        /// The description of the second.
        second: String,
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

/// A count or id for a `BIGINT` column. Ids and heights are assigned from 0
/// or 1 upwards; 2^63 of them would take millennia, so the saturation is
/// unreachable in practice.
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `BIGINT` column read back as a count or id; such columns carry
/// CHECK (>= 0).
pub fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
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

/// Applies every migration set of one database (`sets`: the link's and the
/// program's own) as one migrator; see the module documentation.
pub async fn migrate(pool: &PgPool, url: &str, sets: &[&Migrator]) -> Result<(), DbError> {
    assemble(sets)?
        .run(pool)
        .await
        .map_err(|source| DbError::Migrate {
            url: redact_url(url),
            source,
        })
}

/// One migrator holding every set's migrations (sorted by version), or the
/// version two sets share.
pub fn assemble(sets: &[&Migrator]) -> Result<Migrator, DbError> {
    let migrator =
        Migrator::with_migrations(sets.iter().flat_map(|set| set.iter().cloned()).collect());
    let all: Vec<_> = migrator.iter().collect();
    if let Some(pair) = all
        .windows(2)
        .find(|pair| pair[0].version == pair[1].version)
    {
        return Err(DbError::MigrationClash {
            version: pair[0].version,
            first: pair[0].description.to_string(),
            second: pair[1].description.to_string(),
        });
    }
    Ok(migrator)
}

/// Creates database `name` on the server `admin` is connected to, unless it
/// exists. `name` must be a plain identifier (letters, digits, `_`): it is
/// spliced into the statement, as `CREATE DATABASE` takes no parameters.
pub async fn create_database_if_missing(admin: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(sqlx::Error::Protocol(format!(
            "database name {name:?}: use letters, digits and _"
        )));
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(admin)
            .await?;
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(admin)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(versions: &[i64]) -> Migrator {
        use sqlx::SqlSafeStr as _;
        use sqlx::migrate::{Migration, MigrationType};
        Migrator::with_migrations(
            versions
                .iter()
                .map(|&v| {
                    Migration::new(
                        v,
                        format!("m{v}").into(),
                        MigrationType::Simple,
                        "SELECT 1".into_sql_str(),
                        false,
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn sets_are_applied_in_version_order() {
        let migrator = assemble(&[&set(&[101, 102]), &set(&[1, 2])]).expect("disjoint versions");
        let versions: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        assert_eq!(versions, [1, 2, 101, 102]);
    }

    #[test]
    fn sets_sharing_a_version_are_refused() {
        let clash =
            assemble(&[&set(&[1, 2]), &set(&[2, 101])]).expect_err("both sets have version 2");
        assert!(
            matches!(clash, DbError::MigrationClash { version: 2, .. }),
            "{clash}"
        );
    }
}
