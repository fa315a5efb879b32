//! The processor's Postgres: the shared pool, lock and errors
//! (`service::db`), and the migration sets of the processor's database.

pub use service::db::{DbError, INSTANCE_LOCK_KEY, InstanceLock, connect};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// The processor's own migrations (`processor/migrations`, versions 100–199).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Applies every migration of the processor's database: the link's, then
/// the processor's own (`service::db` says how versions are shared out).
pub async fn migrate(pool: &PgPool, url: &str) -> Result<(), DbError> {
    service::db::migrate(pool, url, &[&link::MIGRATOR, &MIGRATOR]).await
}
