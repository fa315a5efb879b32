//! Throwaway databases for the benchmarks, on the server `DATABASE_URL`
//! names (default: the local Postgres).

use sqlx::{Connection, PgConnection};

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates a fresh database and returns its URL.
pub async fn fresh_db(tag: &str) -> String {
    let name = format!("bench_{tag}_{:08x}", rand::random::<u32>());
    let mut conn = PgConnection::connect(&admin_url())
        .await
        .expect("Postgres is running");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    let base = admin_url()
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .expect("DATABASE_URL has a database path");
    format!("{base}/{name}")
}

/// Drops a database made by [`fresh_db`].
pub async fn drop_db(url: &str) {
    let name = url.rsplit('/').next().expect("db name").to_owned();
    if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}
