//! A cluster for tests: n real processors (child processes) with their own
//! databases and an in-process coordinator-mock driving them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coordinator_mock::coordinator::Coordinator;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use super::*;

pub struct Cluster {
    pub dbs: Vec<TestDb>,
    pub ports: Vec<u16>,
    pub procs: Vec<Option<Proc>>,
    pub coordinator: Arc<Coordinator>,
    pub shutdown: CancellationToken,
    pub cdb: TestDb,
    // Last: fields drop in order, and the processes' logs (printed when a
    // test fails) live in this directory.
    pub dir: tempfile::TempDir,
}

pub fn name(i: usize) -> String {
    format!("validator-{}", i + 1)
}

impl Cluster {
    pub async fn start(
        tag: &str,
        n: usize,
        env: impl Fn(usize) -> Vec<(&'static str, &'static str)>,
    ) -> Self {
        Self::start_with(tag, n, env, "").await
    }

    pub async fn start_with(
        tag: &str,
        n: usize,
        env: impl Fn(usize) -> Vec<(&'static str, &'static str)>,
        coordinator_extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut dbs = Vec::new();
        let mut ports = Vec::new();
        let mut procs = Vec::new();
        for i in 0..n {
            let db = TestDb::new(&format!("{tag}{i}")).await;
            let port = free_port();
            procs.push(Some(spawn_processor(
                &name(i),
                dir.path(),
                port,
                &db.url,
                &env(i),
            )));
            dbs.push(db);
            ports.push(port);
        }
        for &port in &ports {
            wait_port(port).await;
        }
        let cdb = TestDb::new(&format!("{tag}c")).await;
        let mut text = format!(
            "listen = \"127.0.0.1:1\"\ndatabase_url = \"{}\"\n\
             [link]\nheartbeat_interval = \"200ms\"\npeer_timeout = \"1500ms\"\npoll_interval = \"100ms\"\n\
             [reconnect]\ninitial = \"50ms\"\nmax = \"500ms\"\n[tls]\ninsecure = true\n",
            cdb.url
        );
        text.push_str(coordinator_extra);
        for (i, port) in ports.iter().enumerate() {
            text.push_str(&format!(
                "[[processors]]\nname = \"{}\"\nendpoint = \"http://127.0.0.1:{port}\"\n",
                name(i)
            ));
        }
        let config = coordinator_mock::config::Config::from_toml(&text).unwrap();
        let shutdown = CancellationToken::new();
        let coordinator = Coordinator::start(&config, shutdown.clone()).await.unwrap();
        let pool = coordinator.pool.clone();
        let want = i64::try_from(n).unwrap();
        eventually(
            "every processor announced its identity",
            Duration::from_secs(30),
            || async {
                (scalar_i64(&pool, "SELECT count(*) FROM processor_identities").await == want)
                    .then_some(())
            },
        )
        .await;
        Self {
            dir,
            dbs,
            ports,
            procs,
            coordinator,
            shutdown,
            cdb,
        }
    }

    pub async fn wait_status(
        &self,
        session: u64,
        status: &str,
    ) -> proto::coordinator_v1::KeyGenStatus {
        let pool = self.coordinator.pool.clone();
        eventually(
            &format!("session {session} {status}"),
            Duration::from_secs(60),
            || async {
                let s = coordinator_mock::keygen::status(&pool, Some(session))
                    .await
                    .unwrap()
                    .pop()?;
                assert!(
                    s.status == status || s.status != "failed",
                    "session {session} failed: {}",
                    s.failure
                );
                (s.status == status).then_some(s)
            },
        )
        .await
    }

    pub fn kek(&self, i: usize) -> PathBuf {
        kek_file(self.dir.path(), &name(i))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn key_row(pool: &PgPool, session: i64) -> (String, Vec<u8>, String) {
    let r = sqlx::query("SELECT status, group_key, monero_address FROM keys WHERE session = $1")
        .bind(session)
        .fetch_one(pool)
        .await
        .unwrap();
    (
        r.get(0),
        r.get::<Option<Vec<u8>>, _>(1).unwrap_or_default(),
        r.get::<Option<String>, _>(2).unwrap_or_default(),
    )
}
