//! The local devnet: the whole custody cycle on real parts, in one command.
//!
//! It starts a regtest `monerod`, a user wallet (`monero-wallet-rpc`), n
//! processors (child processes, each with its own database on the local
//! Postgres) and this coordinator, then runs key generation -> deposits to
//! two accounts -> signed batches -> burns back to the user -> a payout
//! signed with FROST-CLSAG, published and finalized -> the user's wallet
//! checked, and an exact accounting check on every processor. Each step is
//! printed with the time it took; the summary says what happened.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection, PgPool, Row as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::coordinator::Coordinator;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Processors.
    pub n: usize,
    /// Signers needed.
    pub t: u32,
    /// Postgres server URL (any database on it; devnet databases are made
    /// beside it).
    pub database_url: String,
    /// Prefix of the databases made (dropped first if they exist).
    pub db_prefix: String,
    /// The executable that runs a processor as `<exe> processor --config F`.
    pub processor_exe: PathBuf,
    /// Processors (0-based) stopped after key generation and kept offline.
    pub offline: Vec<usize>,
    /// A processor (0-based) killed with SIGKILL after the deposits and
    /// restarted a few seconds later.
    pub restart: Option<usize>,
    /// Leave everything running after the checks, until Ctrl-C.
    pub keep_running: bool,
    /// Print progress.
    pub verbose: bool,
    /// Export traces of the coordinator (in this process) and the
    /// processors to this OTLP/gRPC endpoint.
    pub otlp_endpoint: Option<String>,
}

impl Options {
    /// Environment for the processors.
    fn processor_env(&self) -> Vec<(String, String)> {
        self.otlp_endpoint
            .iter()
            .map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), e.clone()))
            .collect()
    }
}

/// What the run produced.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The group's Monero address.
    pub group_address: String,
    /// Signed and included batches: (id, total deposited).
    pub batches: Vec<(u64, u64)>,
    /// Completed payouts: (tx hash, fee).
    pub payouts: Vec<(String, u64)>,
    /// What the user's wallet received from the payouts.
    pub received: u64,
    /// What was burned.
    pub burned: u64,
    /// Per online processor: (name, deposits, paid, fees, unspent).
    pub accounting: Vec<(String, u64, u64, u64, u64)>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why the devnet failed.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    /// A tool the devnet needs is not installed.
    #[error("{0}")]
    Missing(String),
    /// A step did not finish in time or a check failed.
    #[error("{0}")]
    Failed(String),
    /// Postgres.
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// Files or processes.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

fn failed(what: impl Into<String>) -> DevnetError {
    DevnetError::Failed(what.into())
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> Result<Self, DevnetError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env_remove("RUST_LOG")
            // The processors' settings come from the files written here:
            // environment overrides (DATABASE_URL above all) would point
            // every processor at one database.
            .env_remove("DATABASE_URL");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PROCESSOR_") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().map_err(|e| {
            DevnetError::Missing(format!("cannot start {}: {e}", program.display()))
        })?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One JSON-RPC call over plain HTTP (monerod and monero-wallet-rpc).
async fn json_rpc(
    port: u16,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, DevnetError> {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": "0", "method": method, "params": params})
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!(
        "POST /json_rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let json = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| failed(format!("{method}: no HTTP body")))?;
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| failed(format!("{method}: answer is not JSON: {e}")))?;
    if let Some(error) = value.get("error") {
        return Err(failed(format!("{method}: {error}")));
    }
    Ok(value["result"].clone())
}

/// Progress lines with the elapsed time.
struct Progress {
    started: Instant,
    verbose: bool,
}

impl Progress {
    fn step(&self, what: &str) {
        if self.verbose {
            println!(
                "[{:>6.1}s] \u{25b8} {what}",
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    fn done(&self, what: &str) {
        if self.verbose {
            println!(
                "[{:>6.1}s] \u{2713} {what}",
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Everything running, stopped in reverse order when dropped.
struct Net {
    processors: Vec<Option<Child>>,
    processor_args: Vec<Vec<String>>,
    processor_ports: Vec<u16>,
    processor_dbs: Vec<String>,
    coordinator: Option<Arc<Coordinator>>,
    coordinator_port: u16,
    shutdown: CancellationToken,
    wallet: Option<Child>,
    wallet_port: u16,
    monerod: Option<Child>,
    monerod_port: u16,
    dir: PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for p in self.processors.iter_mut().rev() {
            drop(p.take());
        }
        drop(self.wallet.take());
        drop(self.monerod.take());
    }
}

fn db_url(server: &str, db: &str) -> String {
    match server.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => format!("{server}/{db}"),
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Checks the machine has what the devnet needs; names what is missing.
pub async fn preflight(options: &Options) -> Result<(), DevnetError> {
    let missing: Vec<&str> = ["monerod", "monero-wallet-rpc"]
        .into_iter()
        .filter(|t| !which(t))
        .collect();
    if !missing.is_empty() {
        return Err(DevnetError::Missing(format!(
            "{} not found on PATH: install Debian's `monero` package (sudo apt-get install monero)",
            missing.join(" and ")
        )));
    }
    if PgConnection::connect(&options.database_url).await.is_err() {
        return Err(DevnetError::Missing(format!(
            "Postgres is not reachable at {} (set DATABASE_URL, or start it: \
             sudo pg_ctlcluster <version> main start)",
            options.database_url
        )));
    }
    if !options.processor_exe.is_file() {
        return Err(DevnetError::Missing(format!(
            "the processor executable {} does not exist",
            options.processor_exe.display()
        )));
    }
    Ok(())
}

async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    shutdown: &CancellationToken,
    mine: Option<(u16, &str)>,
    mut check: F,
) -> Result<T, DevnetError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, DevnetError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(failed(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        // Blocks come only when mined on regtest: one per poll.
        if let Some((port, address)) = mine {
            let _ = json_rpc(
                port,
                "generateblocks",
                serde_json::json!({"amount_of_blocks": 1, "wallet_address": address}),
            )
            .await;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(DevnetError::Interrupted),
            () = tokio::time::sleep(Duration::from_millis(400)) => {}
        }
    }
}

impl Net {
    async fn mine(&self, address: &str, blocks: u64) -> Result<(), DevnetError> {
        json_rpc(
            self.monerod_port,
            "generateblocks",
            serde_json::json!({"amount_of_blocks": blocks, "wallet_address": address}),
        )
        .await?;
        Ok(())
    }

    async fn wallet(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, DevnetError> {
        json_rpc(self.wallet_port, method, params).await
    }
}

/// An address nobody here scans: blocks mined while waiting pay it.
fn nobody() -> String {
    let key = curve25519_dalek::EdwardsPoint::mul_base_clamped([3; 32])
        .compress()
        .to_bytes();
    processor::keystore::dkg::monero_address(&key).unwrap_or_default()
}

/// Runs the devnet scenario; returns its summary once every check held.
pub async fn run(options: Options, interrupt: CancellationToken) -> Result<Summary, DevnetError> {
    let progress = Progress {
        started: Instant::now(),
        verbose: options.verbose,
    };
    progress.step("checking the machine (monerod, monero-wallet-rpc, Postgres)");
    preflight(&options).await?;
    let telemetry = options
        .otlp_endpoint
        .as_deref()
        .map(|e| service::telemetry::init_export_only(e, "coordinator-mock", "devnet"));
    let dir = tempfile::Builder::new().prefix("devnet-").tempdir()?;
    let keep = dir.path().to_path_buf();
    let mut net = Net {
        processors: Vec::new(),
        processor_args: Vec::new(),
        processor_ports: Vec::new(),
        processor_dbs: Vec::new(),
        coordinator: None,
        coordinator_port: free_port(),
        shutdown: CancellationToken::new(),
        wallet: None,
        wallet_port: free_port(),
        monerod: None,
        monerod_port: free_port(),
        dir: keep.clone(),
    };
    let result = scenario(&options, &progress, &mut net, &interrupt).await;
    match &result {
        Ok(summary) => {
            if options.verbose {
                print_summary(summary, &net, &options);
            }
            if options.keep_running {
                println!(
                    "\neverything keeps running (files in {}); Ctrl-C stops it all",
                    keep.display()
                );
                interrupt.cancelled().await;
            }
        }
        Err(e) => {
            if options.verbose {
                eprintln!("\ndevnet failed: {e}\nlogs:");
                for child in net
                    .processors
                    .iter()
                    .flatten()
                    .chain(&net.wallet)
                    .chain(&net.monerod)
                {
                    eprintln!("  {:<18} {}", child.name, child.log.display());
                }
                // Keep the files for inspection.
                let kept = dir.keep();
                eprintln!("(kept {})", kept.display());
            }
        }
    }
    progress.step("stopping every process");
    drop(net);
    if let Some(telemetry) = telemetry {
        // Flushing blocks until the exporter is done; not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || drop(telemetry)).await;
    }
    progress.done("stopped");
    result
}

fn print_summary(summary: &Summary, net: &Net, options: &Options) {
    println!(
        "\n== devnet summary ({} processors, {}-of-{}) ==",
        options.n, options.t, options.n
    );
    println!("group address      {}", summary.group_address);
    for (id, total) in &summary.batches {
        println!(
            "batch {id:<12} {} XMR deposited, signed and included",
            xmr(*total)
        );
    }
    for (tx, fee) in &summary.payouts {
        println!("payout tx          {tx} (fee {} XMR)", xmr(*fee));
    }
    println!(
        "user wallet        received {} XMR of {} XMR burned",
        xmr(summary.received),
        xmr(summary.burned)
    );
    for (name, deposits, paid, fees, unspent) in &summary.accounting {
        println!(
            "accounting {name:<8} deposits {} = paid {} + fees {} + unspent {}  \u{2713}",
            xmr(*deposits),
            xmr(*paid),
            xmr(*fees),
            xmr(*unspent)
        );
    }
    println!("wall time          {:.1} s", summary.elapsed.as_secs_f64());
    println!("\nendpoints:");
    println!(
        "  coordinator admin  127.0.0.1:{} (grpcurl -plaintext 127.0.0.1:{} list)",
        net.coordinator_port, net.coordinator_port
    );
    for (i, port) in net.processor_ports.iter().enumerate() {
        println!("  validator-{}        127.0.0.1:{port}", i + 1);
    }
    println!("  monerod            http://127.0.0.1:{}", net.monerod_port);
    println!(
        "  user wallet rpc    http://127.0.0.1:{}/json_rpc",
        net.wallet_port
    );
}

/// Atomic units as XMR with 12 decimals.
pub fn xmr(amount: u64) -> String {
    format!(
        "{}.{:012}",
        amount / 1_000_000_000_000,
        amount % 1_000_000_000_000
    )
}

fn monerod_args(net: &Net) -> Vec<String> {
    let p2p = std::iter::repeat_with(free_port)
        .find(|&p| p != net.monerod_port)
        .unwrap_or(0);
    [
        "--regtest",
        "--offline",
        "--fixed-difficulty",
        "1",
        "--no-igd",
        "--no-zmq",
        "--non-interactive",
        "--rpc-bind-ip",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([
        "--rpc-bind-port".to_owned(),
        net.monerod_port.to_string(),
        "--p2p-bind-port".to_owned(),
        p2p.to_string(),
        "--data-dir".to_owned(),
        net.dir.join("monerod").display().to_string(),
        "--log-file".to_owned(),
        net.dir.join("monerod.internal.log").display().to_string(),
    ])
    .collect()
}

fn wallet_args(net: &Net) -> Vec<String> {
    vec![
        "--rpc-bind-ip".into(),
        "127.0.0.1".into(),
        "--rpc-bind-port".into(),
        net.wallet_port.to_string(),
        "--disable-rpc-login".into(),
        "--non-interactive".into(),
        "--daemon-address".into(),
        format!("127.0.0.1:{}", net.monerod_port),
        "--trusted-daemon".into(),
        "--rpc-ssl".into(),
        "disabled".into(),
        "--daemon-ssl".into(),
        "disabled".into(),
        "--wallet-dir".into(),
        net.dir.join("wallets").display().to_string(),
        "--shared-ringdb-dir".into(),
        net.dir.join("ringdb").display().to_string(),
        "--log-file".into(),
        net.dir
            .join("wallet-rpc.internal.log")
            .display()
            .to_string(),
    ]
}

fn processor_config(net: &Net, i: usize, db: &str, kek: &Path) -> String {
    format!(
        r#"node_id = "validator-{n}"
listen = "127.0.0.1:{port}"
database_url = "{db}"
[tls]
# Plaintext: the devnet runs on loopback only.
insecure = true
[keystore]
kek_file = "{kek}"
[monero]
daemon_url = "http://127.0.0.1:{monerod}"
poll_interval = "250ms"
[scheduler]
republish_interval = "3s"
[link]
heartbeat_interval = "1s"
peer_timeout = "5s"
[log]
filter = "info"
"#,
        n = i + 1,
        port = net.processor_ports[i],
        kek = kek.display(),
        monerod = net.monerod_port,
    )
}

async fn create_databases(options: &Options, names: &[String]) -> Result<(), DevnetError> {
    let mut admin = PgConnection::connect(&options.database_url).await?;
    for name in names {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(failed(format!(
                "database name {name:?} must be [A-Za-z0-9_]"
            )));
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
    }
    Ok(())
}

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

#[allow(clippy::too_many_lines)]
async fn scenario(
    options: &Options,
    progress: &Progress,
    net: &mut Net,
    interrupt: &CancellationToken,
) -> Result<Summary, DevnetError> {
    let started = Instant::now();
    let n = options.n;
    let stop = interrupt.clone();

    // Databases: one per processor, one for the coordinator.
    let mut names: Vec<String> = (1..=n)
        .map(|i| format!("{}_processor_{i}", options.db_prefix))
        .collect();
    names.push(format!("{}_coordinator", options.db_prefix));
    progress.step(&format!(
        "creating databases {}_processor_1..{n} and {}_coordinator (files in {})",
        options.db_prefix,
        options.db_prefix,
        net.dir.display()
    ));
    create_databases(options, &names).await?;
    net.processor_dbs = names[..n]
        .iter()
        .map(|d| db_url(&options.database_url, d))
        .collect();

    // monerod and the user's wallet.
    progress.step("starting monerod --regtest");
    net.monerod = Some(Child::spawn(
        "monerod",
        Path::new("monerod"),
        &monerod_args(net),
        &[],
        net.dir.join("monerod.log"),
    )?);
    let daemon = processor::monero::Daemon::new(format!("http://127.0.0.1:{}", net.monerod_port));
    wait_for(
        "monerod to answer",
        Duration::from_secs(60),
        &stop,
        None,
        || async { Ok(daemon.tip().await.ok()) },
    )
    .await?;
    progress.step("starting the user's wallet (monero-wallet-rpc)");
    std::fs::create_dir_all(net.dir.join("wallets"))?;
    net.wallet = Some(Child::spawn(
        "monero-wallet-rpc",
        Path::new("monero-wallet-rpc"),
        &wallet_args(net),
        &[],
        net.dir.join("wallet-rpc.log"),
    )?);
    let wallet_port = net.wallet_port;
    wait_for(
        "monero-wallet-rpc to answer",
        Duration::from_secs(60),
        &stop,
        None,
        || async {
            Ok(json_rpc(wallet_port, "get_version", serde_json::json!({}))
                .await
                .ok())
        },
    )
    .await?;
    net.wallet(
        "create_wallet",
        serde_json::json!({"filename": "user", "language": "English"}),
    )
    .await?;
    let user = net
        .wallet("get_address", serde_json::json!({"account_index": 0}))
        .await?["address"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    progress.done(&format!(
        "monerod and the user's wallet are up; user address {}",
        short(&user)
    ));

    // Processors (child processes) and the coordinator (here).
    progress.step(&format!(
        "starting {n} processors, each with its own database"
    ));
    net.processor_ports = (0..n).map(|_| free_port()).collect();
    for i in 0..n {
        let kek = net.dir.join(format!("kek-{}.hex", i + 1));
        std::fs::write(
            &kek,
            processor::keystore::Kek::generate().to_hex().as_bytes(),
        )?;
        let config = net.dir.join(format!("processor-{}.toml", i + 1));
        std::fs::write(
            &config,
            processor_config(net, i, &net.processor_dbs[i], &kek),
        )?;
        let args = vec![
            "processor".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        net.processors.push(Some(Child::spawn(
            &format!("validator-{}", i + 1),
            &options.processor_exe,
            &args,
            &options.processor_env(),
            net.dir.join(format!("validator-{}.log", i + 1)),
        )?));
        net.processor_args.push(args);
    }
    for (i, &port) in net.processor_ports.clone().iter().enumerate() {
        wait_for(
            &format!("validator-{} to listen", i + 1),
            Duration::from_secs(60),
            &stop,
            None,
            || async { Ok(port_open(port).await.then_some(())) },
        )
        .await?;
    }
    let processors: String = (0..n)
        .map(|i| {
            format!(
                "[[processors]]\nname = \"validator-{}\"\nendpoint = \"http://127.0.0.1:{}\"\n",
                i + 1,
                net.processor_ports[i]
            )
        })
        .collect();
    let config = crate::config::Config::from_toml(&format!(
        r#"listen = "127.0.0.1:{port}"
database_url = "{db}"
{processors}
[tls]
insecure = true
[keygen]
round_timeout = "30s"
# Fixed with the key for every processor: 4 confirmations, 4-block windows.
confirmations = 4
window_blocks = 4
[settlement]
block_interval = "1s"
monero_daemon_url = "http://127.0.0.1:{monerod}"
[signing]
round_timeout = "10s"
[link]
heartbeat_interval = "1s"
peer_timeout = "5s"
"#,
        port = net.coordinator_port,
        db = db_url(&options.database_url, &names[n]),
        monerod = net.monerod_port,
    ))
    .map_err(|e| failed(format!("coordinator config: {e}")))?;
    let coordinator = Coordinator::start(&config, net.shutdown.clone())
        .await
        .map_err(|e| failed(format!("starting the coordinator: {e}")))?;
    net.coordinator = Some(coordinator.clone());
    {
        let coordinator = coordinator.clone();
        let shutdown = net.shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::run::serve(coordinator, &config, shutdown).await {
                tracing::error!("coordinator admin API: {e}");
            }
        });
    }
    progress.done(&format!(
        "{n} processors and the coordinator are up (admin API on 127.0.0.1:{})",
        net.coordinator_port
    ));

    // Key generation.
    progress.step(&format!(
        "key generation: FROST DKG {}-of-{n} through the coordinator",
        options.t
    ));
    let pool = coordinator.pool.clone();
    wait_for(
        "every processor to connect and announce its identity key",
        Duration::from_secs(60),
        &stop,
        None,
        || async {
            let known: i64 = sqlx::query_scalar("SELECT count(*) FROM processor_identities")
                .fetch_one(&pool)
                .await?;
            Ok((usize::try_from(known).unwrap_or(0) >= n).then_some(()))
        },
    )
    .await?;
    let session = coordinator
        .start_keygen(options.t, &[])
        .await
        .map_err(|e| failed(format!("starting key generation: {e}")))?;
    let key = wait_for(
        "the group key",
        Duration::from_secs(120),
        &stop,
        None,
        || async {
            let status = crate::keygen::status(&pool, Some(session)).await?;
            match status.first() {
                Some(s) if s.status == "confirmed" => Ok(Some(s.clone())),
                Some(s) if s.status == "failed" => {
                    Err(failed(format!("key generation failed: {}", s.failure)))
                }
                _ => Ok(None),
            }
        },
    )
    .await?;
    let group_key: [u8; 32] = hex::decode(&key.group_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| failed("the group key is not 32 bytes"))?;
    progress.done(&format!(
        "group key confirmed; Monero address {}",
        short(&key.monero_address)
    ));
    for &i in &options.offline {
        if let Some(mut p) = net.processors.get_mut(i).and_then(Option::take) {
            p.stop();
            progress.done(&format!(
                "validator-{} stopped; it stays offline from here on",
                i + 1
            ));
        }
    }

    // Funds for the user, accounts, deposits.
    progress.step("mining 130 blocks to the user (coinbase matures after 60)");
    net.mine(&user, 130).await?;
    net.mine(&nobody(), 10).await?;
    wait_for(
        "the user's wallet to see its coins",
        Duration::from_secs(120),
        &stop,
        None,
        || async {
            let _ = net.wallet("refresh", serde_json::json!({})).await;
            let balance = net
                .wallet("get_balance", serde_json::json!({"account_index": 0}))
                .await?;
            Ok(
                (balance["unlocked_balance"].as_u64().unwrap_or(0) > 10_000_000_000_000)
                    .then_some(()),
            )
        },
    )
    .await?;
    for account in [1, 2] {
        coordinator
            .register_account(account)
            .await
            .map_err(|e| failed(format!("registering account {account}: {e}")))?;
    }
    let one = processor::accounts::deposit_address(&group_key, 1).unwrap_or_default();
    let two = processor::accounts::deposit_address(&group_key, 2).unwrap_or_default();
    let (d1, d2) = (3_000_000_000_000_u64, 2_000_000_000_000_u64);
    progress.step(&format!(
        "the user deposits {} XMR to account 1 and {} XMR to account 2",
        xmr(d1),
        xmr(d2)
    ));
    net.wallet(
        "transfer",
        serde_json::json!({"destinations": [{"amount": d1, "address": one}, {"amount": d2, "address": two}]}),
    )
    .await?;
    net.mine(&nobody(), 1).await?;
    if let Some(r) = options.restart {
        if let Some(p) = net.processors.get_mut(r).and_then(Option::as_mut) {
            p.kill9();
            progress.done(&format!("validator-{} killed with SIGKILL mid-scan", r + 1));
        }
        net.mine(&nobody(), 2).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        net.processors[r] = Some(Child::spawn(
            &format!("validator-{}", r + 1),
            &options.processor_exe,
            &net.processor_args[r],
            &options.processor_env(),
            net.dir.join(format!("validator-{}.log", r + 1)),
        )?);
        progress.done(&format!("validator-{} restarted", r + 1));
    }
    let nobody = nobody();
    let mine_one = Some((net.monerod_port, nobody.as_str()));
    progress.step("mining until the deposit block is final and its batch signed and included");
    let batches = wait_for(
        "the batch to be included",
        Duration::from_secs(240),
        &stop,
        mine_one,
        || async {
            let rows = sqlx::query(
                "SELECT id, encoded FROM batches WHERE status = 'included' ORDER BY id",
            )
            .fetch_all(&pool)
            .await?;
            let batches: Vec<(u64, u64)> = rows
                .iter()
                .filter_map(|r| {
                    let batch = <proto::processor_v1::Batch as prost::Message>::decode(
                        r.get::<Vec<u8>, _>(1).as_slice(),
                    )
                    .ok()?;
                    Some((batch.id, batch.instructions.iter().map(|i| i.amount).sum()))
                })
                .collect();
            Ok((!batches.is_empty()).then_some(batches))
        },
    )
    .await?;
    progress.done(&format!(
        "batch {} signed (FROST Ed25519 {}-of-{n}), verified by the coordinator and included",
        batches[0].0, options.t
    ));

    // Burns back to the user.
    let mut destinations = Vec::new();
    for _ in 0..2 {
        let made = net
            .wallet("create_address", serde_json::json!({"account_index": 0}))
            .await?;
        destinations.push((
            made["address"].as_str().unwrap_or_default().to_owned(),
            made["address_index"].as_u64().unwrap_or(0),
        ));
    }
    let burns = [
        (1_250_000_000_000_u64, &destinations[0]),
        (750_000_000_000_u64, &destinations[1]),
    ];
    for (i, (amount, (address, _))) in burns.iter().enumerate() {
        crate::payouts::submit_burn(&pool, &format!("devnet-burn-{}", i + 1), address, *amount)
            .await
            .map_err(|e| failed(format!("submitting a burn: {e}")))?;
    }
    let burned: u64 = burns.iter().map(|b| b.0).sum();
    progress.step(&format!(
        "burns of {} and {} XMR back to the user; mining until a window's leader plans, \
         the signers sign (FROST-CLSAG) and the payout is final",
        xmr(burns[0].0),
        xmr(burns[1].0)
    ));
    let online = n - options.offline.len();
    let (tx_hash, reporters) = wait_for(
        "the payout to be final",
        Duration::from_secs(300),
        &stop,
        mine_one,
        || async {
            let row = sqlx::query(
            "SELECT p.tx_hash, (SELECT count(*) FROM plan_completions c WHERE c.plan_id = p.plan_id)
             FROM plans p WHERE p.status = 'completed' ORDER BY p.seq LIMIT 1",
        )
        .fetch_optional(&pool)
        .await?;
            Ok(row.and_then(|r| {
                let reporters: i64 = r.get(1);
                (usize::try_from(reporters).unwrap_or(0) >= online)
                    .then(|| (hex::encode(r.get::<Vec<u8>, _>(0)), reporters))
            }))
        },
    )
    .await?;
    progress.done(&format!(
        "payout {} final; {reporters} processors report it completed",
        short(&tx_hash)
    ));

    // The user's wallet, and the books of every online processor.
    progress.step("checking the user's wallet and every processor's accounting");
    let mut received = 0;
    for (amount, (_, minor)) in &burns {
        let got = wait_for(
            "the user's wallet to see the payout",
            Duration::from_secs(60),
            &stop,
            None,
            || async {
                let _ = net.wallet("refresh", serde_json::json!({})).await;
                let transfers = net
                .wallet(
                    "get_transfers",
                    serde_json::json!({"in": true, "account_index": 0, "subaddr_indices": [minor]}),
                )
                .await?;
                let got: Vec<(String, u64)> = transfers["in"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|e| {
                                (
                                    e["txid"].as_str().unwrap_or_default().to_owned(),
                                    e["amount"].as_u64().unwrap_or(0),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((!got.is_empty()).then_some(got))
            },
        )
        .await?;
        if got != vec![(tx_hash.clone(), *amount)] {
            return Err(failed(format!(
                "the user's subaddress {minor} received {got:?}, expected {} in {tx_hash}",
                xmr(*amount)
            )));
        }
        received += amount;
    }
    let mut accounting = Vec::new();
    for i in 0..n {
        if options.offline.contains(&i) {
            continue;
        }
        let p = PgPool::connect(&net.processor_dbs[i]).await?;
        let books = wait_for("the processor's books to settle", Duration::from_secs(60), &stop, None, || async {
            let sum = |sql: &'static str| {
                let p = p.clone();
                async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&p).await }
            };
            let deposits = sum("SELECT COALESCE(sum(amount), 0)::bigint FROM outputs WHERE account > 0 AND status <> 'received'").await?;
            let paid = sum("SELECT COALESCE(sum(amount), 0)::bigint FROM burns WHERE status = 'paid'").await?;
            let fees = sum("SELECT COALESCE(sum(fee), 0)::bigint FROM plans WHERE status = 'completed'").await?;
            let unspent = sum(
                "SELECT COALESCE(sum(amount), 0)::bigint FROM outputs
                 WHERE status IN ('included', 'reserved') AND (account > 0 OR subaddress_minor = 1)",
            )
            .await?;
            let as_u64 = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok((deposits == paid + fees + unspent && as_u64(paid) == burned)
                .then(|| (as_u64(deposits), as_u64(paid), as_u64(fees), as_u64(unspent))))
        })
        .await?;
        p.close().await;
        if books.0 != d1 + d2 {
            return Err(failed(format!(
                "validator-{} counts {} XMR of deposits, expected {}",
                i + 1,
                xmr(books.0),
                xmr(d1 + d2)
            )));
        }
        accounting.push((
            format!("validator-{}", i + 1),
            books.0,
            books.1,
            books.2,
            books.3,
        ));
    }
    progress.done("the user received exactly the burned amounts; deposits = payouts + fees + unspent on every processor");
    let fee = accounting.first().map_or(0, |a| a.3);
    Ok(Summary {
        group_address: key.monero_address,
        batches,
        payouts: vec![(tx_hash, fee)],
        received,
        burned,
        accounting,
        elapsed: started.elapsed(),
    })
}

/// The start and end of a long hex string or address.
fn short(s: &str) -> String {
    if s.len() <= 20 {
        return s.to_owned();
    }
    let head = s.get(..10).unwrap_or(s);
    let tail = s.get(s.len() - 6..).unwrap_or("");
    format!("{head}..{tail}")
}
