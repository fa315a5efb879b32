//! The `identity` table: the processor's X25519 identity key, sealed.

use sqlx::PgPool;

/// The `identity` row as [`identity`] reads it.
#[derive(sqlx::FromRow)]
struct IdentityRecord {
    public_key: Vec<u8>,
    sealed_secret: Vec<u8>,
}

/// The stored identity: public key and sealed secret.
pub async fn identity(pool: &PgPool) -> Result<Option<(Vec<u8>, Vec<u8>)>, sqlx::Error> {
    let row = sqlx::query_as::<_, IdentityRecord>("SELECT public_key, sealed_secret FROM identity")
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| (r.public_key, r.sealed_secret)))
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
