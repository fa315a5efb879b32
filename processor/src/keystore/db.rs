//! The `identity` table: the processor's X25519 identity key, sealed.

use sqlx::{PgPool, Row};

/// The stored identity: public key and sealed secret.
pub async fn identity(pool: &PgPool) -> Result<Option<(Vec<u8>, Vec<u8>)>, sqlx::Error> {
    let row = sqlx::query("SELECT public_key, sealed_secret FROM identity")
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Stores a new identity (on a pool, or in the caller's transaction: a
/// restore writes it with the rest of the backup).
pub async fn insert_identity(
    db: impl sqlx::PgExecutor<'_>,
    public: &[u8],
    sealed: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO identity (public_key, sealed_secret) VALUES ($1, $2)")
        .bind(public)
        .bind(sealed)
        .execute(db)
        .await?;
    Ok(())
}
