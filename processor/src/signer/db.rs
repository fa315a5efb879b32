//! The `sign_attempts` table: every signing attempt this processor began,
//! and the preprocesses relayed when it was chosen (evidence for a blame).

use sqlx::PgConnection;

use service::db::to_i64;

/// An attempt's key columns: session, kind (`batch` or `plan`), the signed
/// thing's id, attempt number.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// Key session.
    pub session: u64,
    /// `batch` or `plan`.
    pub kind: &'a str,
    /// The batch's or plan's id.
    pub id: &'a [u8],
    /// Attempt number.
    pub attempt: u32,
}

impl Attempt<'_> {
    fn attempt_column(&self) -> i32 {
        i32::try_from(self.attempt).unwrap_or(i32::MAX)
    }
}

/// Records that an attempt begins; false if it already had (a second
/// preprocess must never be made).
pub async fn record(conn: &mut PgConnection, a: Attempt<'_>) -> Result<bool, sqlx::Error> {
    let recorded = sqlx::query(
        "INSERT INTO sign_attempts (session, kind, id, attempt) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(to_i64(a.session))
    .bind(a.kind)
    .bind(a.id)
    .bind(a.attempt_column())
    .execute(conn)
    .await?;
    Ok(recorded.rows_affected() == 1)
}

/// This signer was chosen: stores the relayed preprocesses; false if the
/// attempt was never begun here.
pub async fn choose(
    conn: &mut PgConnection,
    a: Attempt<'_>,
    commitments: &[u8],
) -> Result<bool, sqlx::Error> {
    let chosen = sqlx::query(
        "UPDATE sign_attempts SET commitments = $5, status = 'chosen'
         WHERE session = $1 AND kind = $2 AND id = $3 AND attempt = $4",
    )
    .bind(to_i64(a.session))
    .bind(a.kind)
    .bind(a.id)
    .bind(a.attempt_column())
    .bind(commitments)
    .execute(conn)
    .await?;
    Ok(chosen.rows_affected() == 1)
}

/// The preprocesses stored when this signer was chosen: `None` if the
/// attempt is unknown here, `Some(None)` if it was begun but not chosen.
pub async fn commitments(
    conn: &mut PgConnection,
    a: Attempt<'_>,
) -> Result<Option<Option<Vec<u8>>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT commitments FROM sign_attempts WHERE session = $1 AND kind = $2 AND id = $3 AND attempt = $4",
    )
    .bind(to_i64(a.session))
    .bind(a.kind)
    .bind(a.id)
    .bind(a.attempt_column())
    .fetch_optional(conn)
    .await
}
