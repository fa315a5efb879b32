//! A Postgres cluster of the bench's own: `initdb` into a temporary
//! directory, started with `pg_ctl` on a free port with as many connections
//! as the run needs, stopped and deleted when dropped. A deployment of many
//! validators on one host would size its server the same way; the shared
//! server's default of 100 connections cannot hold n = 67 processors' pools.
//!
//! fsync stays on: the figures are those of a processor as it runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::{Connection, PgConnection};

/// A running cluster; dropping it stops it and removes its files.
pub struct PgCluster {
    bin: PathBuf,
    data: PathBuf,
    /// Who runs the server: Postgres refuses to run as root, so as root the
    /// server runs as the `postgres` user.
    run_as: Option<String>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// Where the server binaries are: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "the bench starts its own Postgres cluster: install the server \
             (apt-get install postgresql) or set PG_BIN to its bin directory",
        )
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/<version>/bin/initdb: set PG_BIN")
}

fn is_root() -> bool {
    // `id -u` rather than a libc call: the bench needs no unsafe code and
    // nix's `user` feature is not enabled here.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn run(run_as: Option<&str>, program: &Path, args: &[&str]) {
    let mut command = match run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    };
    let out = command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgCluster {
    /// Creates and starts a cluster that accepts `max_connections`.
    pub fn start(max_connections: u32) -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let out = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .output()
                .expect("chown");
            assert!(out.status.success(), "chown {}", dir.path().display());
        }
        let data = dir.path().join("data");
        let data_arg = data.to_str().expect("temporary paths are UTF-8");
        run(
            run_as.as_deref(),
            &bin.join("initdb"),
            &[
                "-D",
                data_arg,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("bound")
            .port();
        let socket_dir = dir.path().to_str().expect("UTF-8").to_owned();
        let log = dir.path().join("server.log");
        // shared_buffers grows with the connections Postgres must hold;
        // the rest is the default, fsync included.
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c max_connections={max_connections} \
             -c unix_socket_directories={socket_dir} -c shared_buffers=256MB -c fsync=on"
        );
        run(
            run_as.as_deref(),
            &bin.join("pg_ctl"),
            &[
                "-D",
                data_arg,
                "-l",
                log.to_str().expect("UTF-8"),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Self {
            bin,
            data,
            run_as,
            port,
            _dir: dir,
        }
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates a fresh database and returns its URL.
    pub async fn fresh_db(&self, name: &str) -> String {
        let mut conn = PgConnection::connect(&self.admin_url())
            .await
            .expect("the bench's cluster is running");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Fast shutdown: the cluster is thrown away with its directory.
        let data = self.data.to_str().unwrap_or_default().to_owned();
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.bin.join("pg_ctl"));
                c
            }
            None => Command::new(self.bin.join("pg_ctl")),
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}
