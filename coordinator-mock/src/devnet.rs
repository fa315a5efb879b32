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

use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

pub mod db;
pub mod prerequisites;

use prerequisites::Package;

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
    /// The executable that runs a processor as `<exe> processor --config F`
    /// and the coordinator as `<exe> coordinator --config F` (each a child
    /// process, so that either can be killed with SIGKILL).
    pub exe: PathBuf,
    /// Processors (0-based) stopped after key generation and kept offline.
    pub offline: Vec<usize>,
    /// A processor (0-based) killed with SIGKILL after the deposits and
    /// restarted a few seconds later.
    pub restart: Option<usize>,
    /// Leave everything running after the checks, until Ctrl-C.
    pub keep_running: bool,
    /// After the cycle, rotate the key: one more processor joins, a
    /// `(t+1)-of-(n+1)` key is generated, the first key forwards everything
    /// to it and retires, with deposits and burns before, during and after.
    pub rotate: bool,
    /// Print progress.
    pub verbose: bool,
    /// Export traces of the coordinator and the processors to this
    /// OTLP/gRPC endpoint.
    pub otlp_endpoint: Option<String>,
    /// A fault injector (the chaos runner) disturbing the run between key
    /// generation and the final checks.
    pub disturb: Option<Arc<dyn Disturb>>,
    /// Where the run's files go (kept); by default a temporary directory,
    /// deleted after a successful run.
    pub work_dir: Option<PathBuf>,
}

/// A fault injector hooked into a devnet run.
pub trait Disturb: Send + Sync + std::fmt::Debug {
    /// The port the coordinator dials for processor `index` (0-based),
    /// which listens on `port`: a proxy's, to sever connections through.
    /// Called before the coordinator starts.
    fn dial_port(&self, index: usize, port: u16) -> Result<u16, DevnetError>;
    /// Every process is up and the key confirmed: start disturbing them.
    fn start(&self, processes: Processes);
    /// Held by the scenario around steps a fault must not interrupt (the
    /// user's wallet sending a transfer: a retry after a lost answer could
    /// pay twice); the injector holds it while a fault is in progress.
    fn calm(&self) -> Arc<tokio::sync::Mutex<()>>;
    /// Stop disturbing: wait for the fault in progress to end and leave
    /// every process running. Called before the final checks.
    fn settle(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// The devnet's processes and databases, for a fault injector.
#[derive(Debug, Clone)]
pub struct Processes {
    /// Each processor (0-based; `None`: offline for good).
    pub processors: Vec<Option<ChildHandle>>,
    /// The coordinator.
    pub coordinator: ChildHandle,
    /// Each processor's database URL.
    pub processor_dbs: Vec<String>,
    /// The regtest monerod (started with `--keep-fakechain`, so a restart
    /// keeps the chain).
    pub monerod: ChildHandle,
    /// monerod's RPC URL.
    pub monerod_url: String,
    /// The Postgres server URL the databases were made on.
    pub database_url: String,
}

impl Options {
    /// Environment for the processors and the coordinator.
    fn child_env(&self) -> Vec<(String, String)> {
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
    /// The payout's latency: its window opening (on the first processor to
    /// see its first block final) to its publication (by the first
    /// processor to publish it), every hop through the coordinator
    /// included. `None` if no processor recorded both.
    pub payout_latency: Option<Duration>,
    /// The rotation, with `--rotate`.
    pub rotation: Option<RotationSummary>,
    /// Wall time.
    pub elapsed: Duration,
}

/// What `--rotate` did.
#[derive(Debug, Clone, Default)]
pub struct RotationSummary {
    /// The new key's session and shape: (session, t, n).
    pub new_key: (u64, u32, usize),
    /// The new group address.
    pub new_address: String,
    /// The block the new key was activated at (the old key forwards from it).
    pub activation: u64,
    /// Forwards completed: (tx hash, amount moved, fee).
    pub forwards: Vec<(String, u64, u64)>,
    /// The deposit to the old address during the rotation, credited once.
    pub late_deposit: u64,
    /// Burns paid across the rotation: (id, amount, the key that paid).
    pub burns: Vec<(String, u64, u64)>,
    /// Per processor holding the old key: the block after which it retired.
    pub retired: Vec<(String, u64)>,
    /// Per processor: (name, deposits + forwarded in = paid + fees +
    /// forwarded out + unspent), summed over its keys.
    pub accounting: Vec<(String, i64, i64, i64, i64, i64, i64)>,
    /// Wall time of the rotation step.
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
    /// The invariant checker found violations.
    #[error("{} invariant violation(s):\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Violations(Vec<crate::invariants::Violation>),
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

/// How a child process is started, kept to start it again after a kill.
#[derive(Debug, Clone)]
struct Spec {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Spec {
    fn spawn(&self) -> Result<std::process::Child, DevnetError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = std::process::Command::new(&self.program);
        command
            .args(&self.args)
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
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.spawn().map_err(|e| {
            DevnetError::Missing(format!("cannot start {}: {e}", self.program.display()))
        })
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
/// The process itself is shared with [`ChildHandle`]s, so a fault injector
/// can kill, pause and restart it while the devnet keeps owning it.
struct Child {
    name: String,
    log: PathBuf,
    handle: ChildHandle,
}

/// A handle on a devnet child process: signal it, kill it, start it again
/// with the same command line (its log continues).
#[derive(Debug, Clone)]
pub struct ChildHandle {
    name: String,
    spec: Spec,
    child: Arc<std::sync::Mutex<std::process::Child>>,
}

impl Child {
    fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> Result<Self, DevnetError> {
        let spec = Spec {
            program: program.to_path_buf(),
            args: args.to_vec(),
            env: env.to_vec(),
            log: log.clone(),
        };
        let child = spec.spawn()?;
        Ok(Self {
            name: name.to_owned(),
            log,
            handle: ChildHandle {
                name: name.to_owned(),
                spec,
                child: Arc::new(std::sync::Mutex::new(child)),
            },
        })
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop(&mut self) {
        self.handle.stop();
    }

    fn kill9(&mut self) {
        self.handle.kill9();
    }
}

impl ChildHandle {
    /// The process's name in the devnet (`validator-2`, `monerod`).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::process::Child> {
        // A panic while holding this lock leaves a process handle that is
        // still valid: keep using it.
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `signal` to the current process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Ok(pid) = i32::try_from(self.lock().id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// SIGTERM, then SIGKILL after 10 s. A stopped (SIGSTOP) process is
    /// continued first, or it could not act on the SIGTERM.
    pub fn stop(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.lock().try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill9(&self) {
        let mut child = self.lock();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the process has exited.
    pub fn exited(&self) -> bool {
        !matches!(self.lock().try_wait(), Ok(None))
    }

    /// Starts the same command line again (after [`Self::kill9`]); its
    /// output goes on in the same log.
    pub fn restart(&self) -> Result<(), DevnetError> {
        let fresh = self.spec.spawn()?;
        let mut child = self.lock();
        let _ = child.kill();
        let _ = child.wait();
        *child = fresh;
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The user's wallet (monero-wallet-rpc) and monerod's regtest calls, through
/// monero-rpc.
struct Rpc {
    wallet: monero_rpc::WalletClient,
    monerod: monero_rpc::RegtestDaemonJsonRpcClient,
}

impl Rpc {
    fn new(wallet_port: u16, monerod_port: u16) -> Result<Self, DevnetError> {
        let client = |port: u16| {
            monero_rpc::RpcClientBuilder::new()
                // A wallet refresh over the devnet's few hundred blocks is quick.
                .timeout(Duration::from_secs(120))
                .build(format!("http://127.0.0.1:{port}"))
                .map_err(|e| failed(format!("an RPC client for port {port}: {e:#}")))
        };
        Ok(Self {
            wallet: client(wallet_port)?.wallet(),
            monerod: client(monerod_port)?.daemon().regtest(),
        })
    }
}

/// A wallet or monerod call that failed, naming the call.
fn rpc_failed(call: &'static str) -> impl FnOnce(anyhow::Error) -> DevnetError {
    move |e| failed(format!("{call}: {e:#}"))
}

/// monero-wallet-rpc refused a transfer because it could not reach its
/// daemon: checked before any transaction is made, so nothing was sent.
fn refused_for_the_daemon(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    [
        "Failed to get earliest fork height",
        "No connection to daemon",
    ]
    .iter()
    .any(|m| text.contains(m))
}

fn parse_address(address: &str) -> Result<monero_rpc::monero::Address, DevnetError> {
    address
        .parse()
        .map_err(|e| failed(format!("{address} is not a Monero address: {e}")))
}

/// Progress lines with the elapsed time.
#[derive(Debug, Clone, Copy)]
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
    /// The ports the coordinator dials (a proxy's under a fault injector).
    dial_ports: Vec<u16>,
    coordinator: Option<Child>,
    coordinator_port: u16,
    shutdown: CancellationToken,
    wallet: Option<Child>,
    wallet_port: u16,
    monerod: Option<Child>,
    monerod_port: u16,
    rpc: Rpc,
    dir: PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        self.shutdown.cancel();
        drop(self.coordinator.take());
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

/// Checks the machine has what the devnet needs; names what is missing.
/// Debian's `monero` package is installed here if it is missing and this
/// runs as root with apt-get (a progress line says so); otherwise the error
/// names the command to run.
async fn preflight(options: &Options, progress: Progress) -> Result<(), DevnetError> {
    // apt-get takes a while and blocks: not on a runtime worker.
    tokio::task::spawn_blocking(move || {
        prerequisites::ensure(&[Package::Monero], &mut |line| progress.step(line))
    })
    .await
    .map_err(|e| failed(format!("checking for the monero package: {e}")))?
    .map_err(DevnetError::Missing)?;
    if PgConnection::connect(&options.database_url).await.is_err() {
        return Err(DevnetError::Missing(format!(
            "Postgres is not reachable at {} (set DATABASE_URL, or start it: \
             sudo pg_ctlcluster <version> main start)",
            options.database_url
        )));
    }
    if !options.exe.is_file() {
        return Err(DevnetError::Missing(format!(
            "the executable for the processors and the coordinator {} does not exist",
            options.exe.display()
        )));
    }
    Ok(())
}

/// A Monero binary the preflight found (`MONERO_BIN_DIR` or PATH).
fn monero_tool(name: &str) -> Result<PathBuf, DevnetError> {
    prerequisites::monero_tool(name).ok_or_else(|| {
        DevnetError::Missing(format!(
            "{name} disappeared after the check; install Debian's `monero` package again"
        ))
    })
}

async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    shutdown: &CancellationToken,
    mine: Option<(
        &monero_rpc::RegtestDaemonJsonRpcClient,
        monero_rpc::monero::Address,
    )>,
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
        if let Some((monerod, address)) = mine {
            let _ = monerod.generate_blocks(1, address).await;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(DevnetError::Interrupted),
            () = tokio::time::sleep(Duration::from_millis(400)) => {}
        }
    }
}

impl Net {
    /// Mines `blocks` to `address`, a few per call. A failed call is tried
    /// again until calls have failed for a minute in a row: a fault
    /// injector may have killed monerod (it comes back with its chain).
    /// Short calls keep that minute about monerod being down: one long call
    /// cut by each of several kills in a row would use it up while monerod
    /// was mostly up. A cut call may have mined some of its blocks, so a
    /// few more than asked may be mined.
    async fn mine(&self, address: &str, blocks: u64) -> Result<(), DevnetError> {
        const PER_CALL: u64 = 10;
        let address = parse_address(address)?;
        let mut left = blocks;
        let mut failing_since: Option<Instant> = None;
        while left > 0 {
            let now = left.min(PER_CALL);
            match self.rpc.monerod.generate_blocks(now, address).await {
                Ok(_) => {
                    left -= now;
                    failing_since = None;
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(60) {
                        return Err(rpc_failed("generateblocks")(e));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Ok(())
    }

    /// What a fault injector may disturb.
    fn processes(&self, options: &Options) -> Option<Processes> {
        Some(Processes {
            processors: self
                .processors
                .iter()
                .map(|p| p.as_ref().map(|c| c.handle.clone()))
                .collect(),
            processor_dbs: self.processor_dbs.clone(),
            coordinator: self.coordinator.as_ref()?.handle.clone(),
            monerod: self.monerod.as_ref()?.handle.clone(),
            monerod_url: format!("http://127.0.0.1:{}", self.monerod_port),
            database_url: options.database_url.clone(),
        })
    }
}

/// An address nobody here scans: blocks mined while waiting pay it.
fn nobody() -> String {
    let key = curve25519_dalek::EdwardsPoint::mul_base_clamped([3; 32])
        .compress()
        .to_bytes();
    keystore::dkg::monero_address(&key).unwrap_or_default()
}

/// Runs the devnet scenario; returns its summary once every check held.
pub async fn run(options: Options, interrupt: CancellationToken) -> Result<Summary, DevnetError> {
    let progress = Progress {
        started: Instant::now(),
        verbose: options.verbose,
    };
    progress.step("checking the machine (monerod, monero-wallet-rpc, Postgres)");
    preflight(&options, progress).await?;
    let telemetry = options
        .otlp_endpoint
        .as_deref()
        .map(|e| service::telemetry::init_export_only(e, "coordinator-mock", "devnet"));
    let (dir, keep) = match &options.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new().prefix("devnet-").tempdir()?;
            let keep = t.path().to_path_buf();
            (Some(t), keep)
        }
    };
    let (wallet_port, monerod_port) = (free_port(), free_port());
    let mut net = Net {
        processors: Vec::new(),
        processor_args: Vec::new(),
        processor_ports: Vec::new(),
        processor_dbs: Vec::new(),
        dial_ports: Vec::new(),
        coordinator: None,
        coordinator_port: free_port(),
        shutdown: CancellationToken::new(),
        wallet: None,
        wallet_port,
        monerod: None,
        monerod_port,
        rpc: Rpc::new(wallet_port, monerod_port)?,
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
                    .chain(&net.coordinator)
                    .chain(&net.wallet)
                    .chain(&net.monerod)
                {
                    eprintln!("  {:<18} {}", child.name, child.log.display());
                }
                eprintln!("(kept {})", keep.display());
            }
            // Keep the files for inspection.
            if let Some(dir) = dir {
                let _ = dir.keep();
            }
        }
    }
    // A fault injector must not restart anything once the devnet stops.
    if let Some(disturb) = &options.disturb {
        disturb.settle().await;
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
    if let Some(latency) = summary.payout_latency {
        println!(
            "payout latency     published {:.2} s after its window opened (through the coordinator, every hop persisted)",
            latency.as_secs_f64()
        );
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
    if let Some(r) = &summary.rotation {
        let (session, t, n) = r.new_key;
        println!(
            "rotation           key 0 ({}-of-{}) -> key {session} ({t}-of-{n}), active from block {}",
            options.t, options.n, r.activation
        );
        println!("new group address  {}", r.new_address);
        for (tx, moved, fee) in &r.forwards {
            println!(
                "forward tx         {tx} ({} XMR to key {session}, fee {} XMR)",
                xmr(*moved),
                xmr(*fee)
            );
        }
        println!(
            "late deposit       {} XMR to the old address while it forwarded: credited once, to key 0",
            xmr(r.late_deposit)
        );
        for (id, amount, payer) in &r.burns {
            println!("burn {id:<13} {} XMR paid by key {payer}", xmr(*amount));
        }
        for (name, at) in &r.retired {
            println!("retired {name:<10} key 0 after block {at}");
        }
        for (name, deposits, fwd_in, paid, fees, fwd_out, unspent) in &r.accounting {
            let x = |v: &i64| xmr(u64::try_from(*v).unwrap_or(0));
            println!(
                "accounting {name:<8} deposits {} + forwarded in {} = paid {} + fees {} + forwarded out {} + unspent {}  \u{2713}",
                x(deposits),
                x(fwd_in),
                x(paid),
                x(fees),
                x(fwd_out),
                x(unspent)
            );
        }
        println!("rotation time      {:.1} s", r.elapsed.as_secs_f64());
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
        // A restart after SIGKILL (the chaos runner) keeps the regtest chain.
        "--keep-fakechain",
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
        db::recreate_database(&mut admin, name).await?;
    }
    Ok(())
}

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// The coordinator's settings: every processor, the chain, fast rounds; key
/// generation starts by itself once every processor has announced itself.
fn coordinator_config(
    net: &Net,
    db: &str,
    t: u32,
    first_key: usize,
) -> Result<String, DevnetError> {
    let processors: String = net
        .processor_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let port = net.dial_ports.get(i).unwrap_or(port);
            format!(
                "[[processors]]\nname = \"validator-{}\"\nendpoint = \"http://127.0.0.1:{port}\"\n",
                i + 1,
            )
        })
        .collect();
    let text = format!(
        r#"listen = "127.0.0.1:{port}"
database_url = "{db}"
{processors}
[tls]
insecure = true
[keygen]
round_timeout = "30s"
auto_start_threshold = {t}
auto_start_processors = [{first}]
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
[log]
filter = "info"
"#,
        port = net.coordinator_port,
        monerod = net.monerod_port,
        first = (1..=first_key)
            .map(|i| format!("\"validator-{i}\""))
            .collect::<Vec<_>>()
            .join(", "),
    );
    // Refused here, with the reason, rather than by a child that exits.
    crate::config::Config::from_toml(&text)
        .map_err(|e| failed(format!("coordinator config: {e}")))?;
    Ok(text)
}

/// The scenario's steps, in the README's order; each one prints its lines.
async fn scenario(
    options: &Options,
    progress: &Progress,
    net: &mut Net,
    interrupt: &CancellationToken,
) -> Result<Summary, DevnetError> {
    let mut s = Scenario {
        started: Instant::now(),
        options,
        progress,
        net,
        stop: interrupt.clone(),
        coordinator_db: String::new(),
    };
    let coordinator_db = s.create_databases().await?;
    s.coordinator_db.clone_from(&coordinator_db);
    let user = s.start_monerod_and_the_wallet().await?;
    let coordinator = s.start_processors_and_coordinator(&coordinator_db).await?;
    let key = s.generate_the_key(&coordinator).await?;
    if let (Some(disturb), Some(processes)) = (&options.disturb, s.net.processes(options)) {
        disturb.start(processes);
    }
    s.fund_the_user(&user).await?;
    s.register_accounts(&coordinator).await?;
    let deposited = s.deposit(&key.group_key).await?;
    let batches = s.sign_and_include_the_batch(&coordinator).await?;
    let burns = s.burn_back_to_the_user(&coordinator).await?;
    let payout = s.pay_out(&coordinator, &burns).await?;
    if let Some(disturb) = &options.disturb {
        disturb.settle().await;
    }
    let checked = s.final_checks(deposited, &burns, &payout).await?;
    let rotation = if options.rotate {
        Some(s.rotate(&coordinator).await?)
    } else {
        None
    };
    coordinator.close().await;
    let mut summary = s.summary(key, batches, &burns, payout, checked);
    summary.rotation = rotation;
    Ok(summary)
}

/// What one run of the scenario shares between its steps.
struct Scenario<'a> {
    started: Instant,
    options: &'a Options,
    progress: &'a Progress,
    net: &'a mut Net,
    stop: CancellationToken,
    /// The coordinator's database URL.
    coordinator_db: String,
}

/// The confirmed key.
struct GroupKey {
    group_key: [u8; 32],
    monero_address: String,
}

/// A burn back to the user: amount, and the user's subaddress (address,
/// minor index) it pays.
struct Burn {
    amount: u64,
    address: String,
    minor: u32,
}

/// The final payout's transaction.
struct Payout {
    tx_hash: String,
    latency: Option<Duration>,
}

/// What the final checks found.
struct Checked {
    received: u64,
    accounting: Vec<(String, u64, u64, u64, u64)>,
}

/// The user's deposits: 3 XMR to account 1 and 2 XMR to account 2.
const DEPOSITS: [(u32, u64); 2] = [(1, 3_000_000_000_000), (2, 2_000_000_000_000)];
/// The burns back to the user.
const BURNS: [u64; 2] = [1_250_000_000_000, 750_000_000_000];

impl Scenario<'_> {
    fn n(&self) -> usize {
        self.options.n
    }

    /// Every processor run: the first key's, and with `--rotate` the one
    /// that joins at the rotation.
    fn total(&self) -> usize {
        self.options.n + usize::from(self.options.rotate)
    }

    /// Databases: one per processor, one for the coordinator (dropped first
    /// if they exist). Returns the coordinator's URL.
    async fn create_databases(&mut self) -> Result<String, DevnetError> {
        let (options, n) = (self.options, self.total());
        let mut names: Vec<String> = (1..=n)
            .map(|i| format!("{}_processor_{i}", options.db_prefix))
            .collect();
        names.push(format!("{}_coordinator", options.db_prefix));
        self.progress.step(&format!(
            "creating databases {}_processor_1..{n} and {}_coordinator (files in {})",
            options.db_prefix,
            options.db_prefix,
            self.net.dir.display()
        ));
        create_databases(options, &names).await?;
        self.net.processor_dbs = names[..n]
            .iter()
            .map(|d| db_url(&options.database_url, d))
            .collect();
        Ok(db_url(&options.database_url, &names[n]))
    }

    /// A regtest monerod and the user's wallet; returns the user's address.
    async fn start_monerod_and_the_wallet(&mut self) -> Result<String, DevnetError> {
        let (progress, net) = (self.progress, &mut *self.net);
        progress.step("starting monerod --regtest");
        net.monerod = Some(Child::spawn(
            "monerod",
            &monero_tool("monerod")?,
            &monerod_args(net),
            &[],
            net.dir.join("monerod.log"),
        )?);
        let daemon =
            processor::monero::Daemon::new(format!("http://127.0.0.1:{}", net.monerod_port));
        wait_for(
            "monerod to answer",
            Duration::from_secs(60),
            &self.stop,
            None,
            || async { Ok(daemon.tip().await.ok()) },
        )
        .await?;
        progress.step("starting the user's wallet (monero-wallet-rpc)");
        std::fs::create_dir_all(net.dir.join("wallets"))?;
        net.wallet = Some(Child::spawn(
            "monero-wallet-rpc",
            &monero_tool("monero-wallet-rpc")?,
            &wallet_args(net),
            &[],
            net.dir.join("wallet-rpc.log"),
        )?);
        let wallet = &net.rpc.wallet;
        wait_for(
            "monero-wallet-rpc to answer",
            Duration::from_secs(60),
            &self.stop,
            None,
            || async { Ok(wallet.get_version().await.ok()) },
        )
        .await?;
        wallet
            .create_wallet("user".to_owned(), None, "English".to_owned())
            .await
            .map_err(rpc_failed("create_wallet"))?;
        let user = wallet
            .get_address(0, None)
            .await
            .map_err(rpc_failed("get_address"))?
            .address
            .to_string();
        progress.done(&format!(
            "monerod and the user's wallet are up; user address {}",
            short(&user)
        ));
        Ok(user)
    }

    /// The processors and the coordinator (child processes). Returns a pool
    /// on the coordinator's database, through which the scenario drives it
    /// (as its settlement chain and operator would).
    async fn start_processors_and_coordinator(
        &mut self,
        coordinator_db: &str,
    ) -> Result<PgPool, DevnetError> {
        let (options, progress, n) = (self.options, self.progress, self.total());
        let net = &mut *self.net;
        progress.step(&format!(
            "starting {n} processors, each with its own database"
        ));
        net.processor_ports = (0..n).map(|_| free_port()).collect();
        for i in 0..n {
            let kek = net.dir.join(format!("kek-{}.hex", i + 1));
            std::fs::write(&kek, keystore::Kek::generate().to_hex().as_bytes())?;
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
                &options.exe,
                &args,
                &options.child_env(),
                net.dir.join(format!("validator-{}.log", i + 1)),
            )?));
            net.processor_args.push(args);
        }
        for (i, &port) in net.processor_ports.iter().enumerate() {
            wait_for(
                &format!("validator-{} to listen", i + 1),
                Duration::from_secs(60),
                &self.stop,
                None,
                || async { Ok(port_open(port).await.then_some(())) },
            )
            .await?;
        }
        net.dial_ports = match &options.disturb {
            Some(d) => net
                .processor_ports
                .iter()
                .enumerate()
                .map(|(i, &port)| d.dial_port(i, port))
                .collect::<Result<_, _>>()?,
            None => net.processor_ports.clone(),
        };
        let config = net.dir.join("coordinator.toml");
        std::fs::write(
            &config,
            coordinator_config(net, coordinator_db, options.t, options.n)?,
        )?;
        net.coordinator = Some(Child::spawn(
            "coordinator",
            &options.exe,
            &[
                "coordinator".to_owned(),
                "--config".to_owned(),
                config.display().to_string(),
            ],
            &options.child_env(),
            net.dir.join("coordinator.log"),
        )?);
        let port = net.coordinator_port;
        let (child, log) = net
            .coordinator
            .as_ref()
            .map(|c| (c.handle.clone(), c.log.clone()))
            .ok_or_else(|| failed("the coordinator was just started"))?;
        wait_for(
            "the coordinator to listen",
            Duration::from_secs(60),
            &self.stop,
            None,
            || async {
                if port_open(port).await {
                    return Ok(Some(()));
                }
                if child.exited() {
                    return Err(failed(format!(
                        "the coordinator exited before listening; its log: {}",
                        log.display()
                    )));
                }
                Ok(None)
            },
        )
        .await?;
        let pool = crate::invariants::db::reader_pool(coordinator_db).await?;
        progress.done(&format!(
            "{n} processors and the coordinator are up (admin API on 127.0.0.1:{port})"
        ));
        Ok(pool)
    }

    /// FROST DKG through the coordinator; then the processors meant to be
    /// offline are stopped.
    async fn generate_the_key(&mut self, pool: &PgPool) -> Result<GroupKey, DevnetError> {
        let (options, progress, n) = (self.options, self.progress, self.n());
        progress.step(&format!(
            "key generation: FROST DKG {}-of-{n} through the coordinator",
            options.t
        ));
        let total = self.total();
        // Generous: five processors migrating and dialled through fault
        // proxies on a loaded two-core machine can take most of a minute.
        wait_for(
            "every processor to connect and announce its identity key",
            Duration::from_secs(120),
            &self.stop,
            None,
            || async {
                let known = db::identities(pool).await?;
                Ok((usize::try_from(known).unwrap_or(0) >= total).then_some(()))
            },
        )
        .await?;
        // The coordinator starts it (keygen.auto_start_threshold) once every
        // processor has announced itself.
        let key = wait_for(
            "the group key",
            Duration::from_secs(120),
            &self.stop,
            None,
            || async {
                // The coordinator re-attempts a failed session as a new one.
                let status = crate::keygen::status(pool, None).await?;
                if let Some(s) = status.iter().find(|s| s.status == "confirmed") {
                    return Ok(Some(s.clone()));
                }
                match status.iter().max_by_key(|s| s.session) {
                    Some(s) if s.status == "failed" && s.failure.contains("not re-attempted") => {
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
            if let Some(mut p) = self.net.processors.get_mut(i).and_then(Option::take) {
                p.stop();
                progress.done(&format!(
                    "validator-{} stopped; it stays offline from here on",
                    i + 1
                ));
            }
        }
        Ok(GroupKey {
            group_key,
            monero_address: key.monero_address,
        })
    }

    /// Coinbase for the user, matured until the wallet can spend it.
    async fn fund_the_user(&mut self, user: &str) -> Result<(), DevnetError> {
        self.progress
            .step("mining 130 blocks to the user (coinbase matures after 60)");
        self.net.mine(user, 130).await?;
        self.net.mine(&nobody(), 10).await?;
        let wallet = &self.net.rpc.wallet;
        wait_for(
            "the user's wallet to see its coins",
            Duration::from_secs(120),
            &self.stop,
            None,
            || async {
                let _ = wallet.refresh(None).await;
                let balance = wallet
                    .get_balance(0, None)
                    .await
                    .map_err(rpc_failed("get_balance"))?;
                Ok((balance.unlocked_balance.as_pico() > 10_000_000_000_000).then_some(()))
            },
        )
        .await
    }

    /// Accounts 1 and 2, registered in the next settlement block.
    /// The coordinator produces the settlement block that carries them as
    /// soon as it sees them.
    async fn register_accounts(&mut self, pool: &PgPool) -> Result<(), DevnetError> {
        for (account, _) in DEPOSITS {
            let account = i32::try_from(account).map_err(|e| failed(e.to_string()))?;
            crate::settlement::db::insert_account(pool, account).await?;
        }
        Ok(())
    }

    /// The user pays both accounts in one transaction; with `--restart`, a
    /// processor is killed mid-scan and restarted. Returns the total.
    async fn deposit(&mut self, group_key: &[u8; 32]) -> Result<u64, DevnetError> {
        let (options, progress) = (self.options, self.progress);
        let net = &mut *self.net;
        let [(_, d1), (_, d2)] = DEPOSITS;
        progress.step(&format!(
            "the user deposits {} XMR to account 1 and {} XMR to account 2",
            xmr(d1),
            xmr(d2)
        ));
        let mut destinations = std::collections::HashMap::new();
        for (account, amount) in DEPOSITS {
            let address =
                processor::accounts::deposit_address(group_key, account).unwrap_or_default();
            destinations.insert(
                parse_address(&address)?,
                monero_rpc::monero::Amount::from_pico(amount),
            );
        }
        // No fault while the wallet sends: a retry after a lost answer
        // could pay twice.
        let calm = options.disturb.as_ref().map(|d| d.calm());
        let _calm = match &calm {
            Some(c) => Some(c.lock().await),
            None => None,
        };
        // A fault that just ended may have restarted monerod: the wallet
        // then refuses before making any transaction, and only such a
        // refusal is tried again (a retry after anything else could pay
        // twice).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let _ = net.rpc.wallet.refresh(None).await;
            match net
                .rpc
                .wallet
                .transfer(
                    destinations.clone(),
                    monero_rpc::TransferPriority::Default,
                    monero_rpc::TransferOptions::default(),
                )
                .await
            {
                Ok(_) => break,
                Err(e) if refused_for_the_daemon(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(rpc_failed("transfer")(e)),
            }
        }
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
                &options.exe,
                &net.processor_args[r],
                &options.child_env(),
                net.dir.join(format!("validator-{}.log", r + 1)),
            )?);
            progress.done(&format!("validator-{} restarted", r + 1));
        }
        Ok(d1 + d2)
    }

    /// Blocks are mined (one per poll, to an address nobody scans) until
    /// what `check` waits for holds.
    fn mine_while_waiting(
        &self,
    ) -> Result<
        Option<(
            &monero_rpc::RegtestDaemonJsonRpcClient,
            monero_rpc::monero::Address,
        )>,
        DevnetError,
    > {
        Ok(Some((&self.net.rpc.monerod, parse_address(&nobody())?)))
    }

    /// Mining until the deposit block is final and its batch signed,
    /// verified and included. Returns the included batches: (id, total).
    async fn sign_and_include_the_batch(
        &mut self,
        pool: &PgPool,
    ) -> Result<Vec<(u64, u64)>, DevnetError> {
        let (options, progress) = (self.options, self.progress);
        progress.step("mining until the deposit block is final and its batch signed and included");
        let batches = wait_for(
            "the batch to be included",
            Duration::from_secs(240),
            &self.stop,
            self.mine_while_waiting()?,
            || async {
                let encoded = db::included_batches(pool).await?;
                let batches: Vec<(u64, u64)> = encoded
                    .iter()
                    .filter_map(|e| {
                        let batch =
                            <proto::processor_v1::Batch as prost::Message>::decode(e.as_slice())
                                .ok()?;
                        Some((batch.id, batch.instructions.iter().map(|i| i.amount).sum()))
                    })
                    .collect();
                Ok((!batches.is_empty()).then_some(batches))
            },
        )
        .await?;
        progress.done(&format!(
            "batch {} signed (FROST Ed25519 {}-of-{}), verified by the coordinator and included",
            batches[0].0,
            options.t,
            self.n()
        ));
        Ok(batches)
    }

    /// Burns to two fresh subaddresses of the user, submitted to the
    /// settlement chain.
    async fn burn_back_to_the_user(&mut self, pool: &PgPool) -> Result<Vec<Burn>, DevnetError> {
        let mut burns = Vec::new();
        for amount in BURNS {
            let (address, minor) = self
                .net
                .rpc
                .wallet
                .create_address(0, None)
                .await
                .map_err(rpc_failed("create_address"))?;
            burns.push(Burn {
                amount,
                address: address.to_string(),
                minor,
            });
        }
        for (i, burn) in burns.iter().enumerate() {
            crate::payouts::submit_burn(
                pool,
                &format!("devnet-burn-{}", i + 1),
                &burn.address,
                burn.amount,
            )
            .await
            .map_err(|e| failed(format!("submitting a burn: {e}")))?;
        }
        Ok(burns)
    }

    /// Mining until a window's leader plans the payout, the signers sign it
    /// (FROST-CLSAG), it is published and every online processor reports it
    /// final.
    async fn pay_out(&mut self, pool: &PgPool, burns: &[Burn]) -> Result<Payout, DevnetError> {
        let (options, progress) = (self.options, self.progress);
        progress.step(&format!(
            "burns of {} and {} XMR back to the user; mining until a window's leader plans, \
             the signers sign (FROST-CLSAG) and the payout is final",
            xmr(burns[0].amount),
            xmr(burns[1].amount)
        ));
        let online = self.n() - options.offline.len();
        let ((tx_hash, plan_id), reporters) = wait_for(
            "the payout to be final",
            Duration::from_secs(300),
            &self.stop,
            self.mine_while_waiting()?,
            || async {
                let row = db::first_completed_plan(pool).await?;
                Ok(row.and_then(|(tx_hash, plan_id, reporters)| {
                    (usize::try_from(reporters).unwrap_or(0) >= online)
                        .then(|| ((hex::encode(tx_hash), plan_id), reporters))
                }))
            },
        )
        .await?;
        let latency = self.payout_latency(&plan_id).await?;
        progress.done(&format!(
            "payout {} final; {reporters} processors report it completed{}",
            short(&tx_hash),
            latency.map_or_else(String::new, |l| format!(
                "; published {:.2} s after its window opened",
                l.as_secs_f64()
            ))
        ));
        Ok(Payout { tx_hash, latency })
    }

    /// From the plan's window opening on the first processor to see it to
    /// the plan's publication by the first processor to publish it, from
    /// the processors' own records.
    async fn payout_latency(&self, plan_id: &[u8]) -> Result<Option<Duration>, DevnetError> {
        let (mut opened, mut published) = (f64::INFINITY, f64::INFINITY);
        for url in &self.net.processor_dbs {
            let Ok(p) = crate::invariants::db::reader_pool(url).await else {
                continue; // an offline processor's database may be gone
            };
            let row = db::plan_times(&p, plan_id).await?;
            p.close().await;
            if let Some((at, window)) = row {
                opened = opened.min(window);
                published = published.min(at.unwrap_or(f64::INFINITY));
            }
        }
        Ok((published.is_finite() && opened.is_finite())
            .then(|| Duration::from_secs_f64((published - opened).max(0.0))))
    }

    /// The user's wallet received exactly the burned amounts, in the
    /// payout; on every online processor deposits = payouts + fees +
    /// unspent.
    async fn final_checks(
        &mut self,
        deposited: u64,
        burns: &[Burn],
        payout: &Payout,
    ) -> Result<Checked, DevnetError> {
        let (options, progress) = (self.options, self.progress);
        progress.step("checking the user's wallet and every processor's accounting");
        let received = self.check_the_wallet(burns, payout).await?;
        let burned: u64 = burns.iter().map(|b| b.amount).sum();
        let mut accounting = Vec::new();
        for i in 0..self.n() {
            if options.offline.contains(&i) {
                continue;
            }
            let books = self.check_the_books(i, burned).await?;
            if books.0 != deposited {
                return Err(failed(format!(
                    "validator-{} counts {} XMR of deposits, expected {}",
                    i + 1,
                    xmr(books.0),
                    xmr(deposited)
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
        progress.step("checking every invariant (links, nonces, payouts, batches, plans, books)");
        let violations = crate::invariants::check(&self.targets())
            .await
            .map_err(|e| failed(format!("the invariant checker could not check: {e}")))?;
        if !violations.is_empty() {
            return Err(DevnetError::Violations(violations));
        }
        progress.done("every invariant holds");
        Ok(Checked {
            received,
            accounting,
        })
    }

    /// What the invariant checker reads: every processor and the
    /// coordinator.
    fn targets(&self) -> crate::invariants::Targets {
        crate::invariants::Targets {
            processors: (0..self.total())
                .map(|i| {
                    (
                        format!("validator-{}", i + 1),
                        self.net.processor_dbs[i].clone(),
                    )
                })
                .collect(),
            coordinator: self.coordinator_db.clone(),
            monerod: format!("http://127.0.0.1:{}", self.net.monerod_port),
        }
    }

    /// The user pays `amount` to `address` (mined into the next block).
    async fn pay(&self, address: &str, amount: u64) -> Result<(), DevnetError> {
        let wallet = &self.net.rpc.wallet;
        let _ = wallet.refresh(None).await;
        let destinations = [(
            parse_address(address)?,
            monero_rpc::monero::Amount::from_pico(amount),
        )]
        .into_iter()
        .collect();
        wallet
            .transfer(
                destinations,
                monero_rpc::TransferPriority::Default,
                monero_rpc::TransferOptions::default(),
            )
            .await
            .map_err(rpc_failed("transfer"))?;
        self.net.mine(&nobody(), 1).await
    }

    /// A fresh subaddress of the user and a burn paying it, submitted.
    async fn burn_to_the_user(
        &self,
        pool: &PgPool,
        id: &str,
        amount: u64,
    ) -> Result<Burn, DevnetError> {
        let (address, minor) = self
            .net
            .rpc
            .wallet
            .create_address(0, None)
            .await
            .map_err(rpc_failed("create_address"))?;
        crate::payouts::submit_burn(pool, id, &address.to_string(), amount)
            .await
            .map_err(|e| failed(format!("submitting a burn: {e}")))?;
        Ok(Burn {
            amount,
            address: address.to_string(),
            minor,
        })
    }

    /// `--rotate`: the processor that joins (the last) and the first key's
    /// holders generate a `(t+1)`-of-`(n+1)` key through the coordinator
    /// (StartKeyGen on its admin API, as an operator would). The first key
    /// forwards everything to it and retires; a deposit to the old address
    /// while it forwards is credited once; burns before (the cycle's),
    /// during and after the rotation are paid; the books balance on every
    /// processor and every invariant holds.
    async fn rotate(&mut self, pool: &PgPool) -> Result<RotationSummary, DevnetError> {
        let started = Instant::now();
        let (options, progress) = (self.options, self.progress);
        let (t, n) = (options.t + 1, self.total());
        progress.step(&format!(
            "rotation: validator-{n} joins; FROST DKG {t}-of-{n} through the coordinator's StartKeyGen"
        ));
        let endpoint = format!("http://127.0.0.1:{}", self.net.coordinator_port);
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|e| failed(format!("the coordinator's admin endpoint {endpoint}: {e}")))?
            .connect()
            .await
            .map_err(|e| {
                failed(format!(
                    "connecting to the coordinator's admin API at {endpoint}: {e}"
                ))
            })?;
        let mut admin =
            proto::coordinator_v1::coordinator_admin_client::CoordinatorAdminClient::new(channel);
        let started_keygen = admin
            .start_key_gen(proto::coordinator_v1::StartKeyGenRequest {
                threshold: t,
                processors: Vec::new(),
            })
            .await
            .map_err(|e| failed(format!("StartKeyGen: {}", e.message())))?
            .into_inner();
        let session = started_keygen.session;
        let key = wait_for(
            "the new key",
            Duration::from_secs(120),
            &self.stop,
            None,
            || async {
                let status = crate::keygen::status(pool, Some(session)).await?;
                match status.into_iter().next() {
                    Some(s) if s.status == "confirmed" => Ok(Some(s)),
                    Some(s) if s.status == "failed" => Err(failed(format!(
                        "the rotation's key generation failed: {}",
                        s.failure
                    ))),
                    _ => Ok(None),
                }
            },
        )
        .await?;
        let new_key: [u8; 32] = hex::decode(&key.group_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| failed("the new group key is not 32 bytes"))?;
        let activation = wait_for(
            "the new key's activation height",
            Duration::from_secs(60),
            &self.stop,
            None,
            || async { Ok(db::activation_height(pool, session).await?) },
        )
        .await?;
        let activation = u64::try_from(activation).unwrap_or(0);
        progress.done(&format!(
            "key {session} confirmed ({t}-of-{n}); address {}; active from block {activation}, \
             where key 0 starts forwarding",
            short(&key.monero_address)
        ));

        progress.step(
            "mining to the activation; the user deposits to the OLD address and a burn arrives \
             while key 0 forwards",
        );
        let monerod =
            processor::monero::Daemon::new(format!("http://127.0.0.1:{}", self.net.monerod_port));
        while monerod
            .tip()
            .await
            .map_err(|e| failed(format!("monerod: {e}")))?
            <= activation
        {
            self.net.mine(&nobody(), 1).await?;
        }
        let old_address = self.first_address(pool).await?;
        let late_deposit = 1_000_000_000_000;
        let old_one = processor::accounts::deposit_address(&old_address, 1).unwrap_or_default();
        self.pay(&old_one, late_deposit).await?;
        let during = self
            .burn_to_the_user(pool, "devnet-burn-during-rotation", 900_000_000_000)
            .await?;

        progress.step("mining until key 0 has forwarded everything and retired on each holder");
        let holders: Vec<usize> = (0..options.n).collect();
        let mut retired = Vec::new();
        for &i in &holders {
            let p = crate::invariants::db::reader_pool(&self.net.processor_dbs[i]).await?;
            let at = wait_for(
                &format!("key 0 to retire on validator-{}", i + 1),
                Duration::from_secs(300),
                &self.stop,
                self.mine_while_waiting()?,
                || async { Ok(db::retired_height(&p, 0).await?) },
            )
            .await?;
            p.close().await;
            retired.push((
                format!("validator-{}", i + 1),
                u64::try_from(at).unwrap_or(0),
            ));
        }
        let forwards = {
            let p = crate::invariants::db::reader_pool(&self.net.processor_dbs[0]).await?;
            let f = db::forwards(&p, 0).await?;
            p.close().await;
            f.into_iter()
                .map(|(tx, moved, fee)| {
                    (
                        hex::encode(tx),
                        u64::try_from(moved).unwrap_or(0),
                        u64::try_from(fee).unwrap_or(0),
                    )
                })
                .collect::<Vec<_>>()
        };
        if forwards.is_empty() {
            return Err(failed("key 0 retired without a forward"));
        }
        progress.done(&format!(
            "key 0 forwarded {} XMR in {} transaction(s) and retired at block{}",
            xmr(forwards.iter().map(|f| f.1).sum()),
            forwards.len(),
            retired
                .iter()
                .map(|(name, at)| format!(" {at} ({name})"))
                .collect::<String>()
        ));

        progress.step("after the rotation: the user deposits to the NEW address, and a burn");
        let new_one = processor::accounts::deposit_address(&new_key, 1).unwrap_or_default();
        self.pay(&new_one, 1_500_000_000_000).await?;
        let after = self
            .burn_to_the_user(pool, "devnet-burn-after-rotation", 600_000_000_000)
            .await?;
        let mut burns = Vec::new();
        for (id, burn) in [
            ("devnet-burn-during-rotation", &during),
            ("devnet-burn-after-rotation", &after),
        ] {
            let (tx, payer) = wait_for(
                &format!("burn {id} paid"),
                Duration::from_secs(300),
                &self.stop,
                self.mine_while_waiting()?,
                || async { Ok(db::plan_paying(pool, id).await?) },
            )
            .await?;
            self.check_the_wallet(
                std::slice::from_ref(burn),
                &Payout {
                    tx_hash: hex::encode(tx),
                    latency: None,
                },
            )
            .await?;
            burns.push((
                id.to_owned(),
                burn.amount,
                u64::try_from(payer).unwrap_or(0),
            ));
        }
        progress.done("both burns paid by the new key, each received exactly once");

        progress.step("checking the late deposit, every processor's books and every invariant");
        let credited = {
            let p = crate::invariants::db::reader_pool(&self.net.processor_dbs[0]).await?;
            let c = db::credited(&p, late_deposit).await?;
            p.close().await;
            c
        };
        if credited != vec![(0, i64::try_from(late_deposit).unwrap_or(0))] {
            return Err(failed(format!(
                "the deposit of {} XMR to the old address was credited as {credited:?} (session, \
                 amount), expected once to key 0",
                xmr(late_deposit)
            )));
        }
        let accounting = wait_for(
            "every processor's books to balance over its keys",
            Duration::from_secs(60),
            &self.stop,
            None,
            || async {
                let mut all = Vec::new();
                for i in 0..n {
                    let p = crate::invariants::db::reader_pool(&self.net.processor_dbs[i]).await?;
                    let books = crate::invariants::db::books(&p).await?;
                    p.close().await;
                    let sum = |f: fn(&crate::invariants::db::Books) -> i64| {
                        books.iter().map(f).sum::<i64>()
                    };
                    let row = (
                        format!("validator-{}", i + 1),
                        sum(|b| b.deposits),
                        sum(|b| b.forwarded_in),
                        sum(|b| b.paid),
                        sum(|b| b.fees),
                        sum(|b| b.forwarded_out),
                        sum(|b| b.unspent),
                    );
                    if row.1 + row.2 != row.3 + row.4 + row.5 + row.6 {
                        return Ok(None);
                    }
                    all.push(row);
                }
                Ok(Some(all))
            },
        )
        .await?;
        let violations = crate::invariants::check(&self.targets())
            .await
            .map_err(|e| failed(format!("the invariant checker could not check: {e}")))?;
        if !violations.is_empty() {
            return Err(DevnetError::Violations(violations));
        }
        progress.done(
            "the late deposit was credited once, to key 0; books balance on every processor; \
             every invariant holds",
        );
        Ok(RotationSummary {
            new_key: (session, t, n),
            new_address: key.monero_address,
            activation,
            forwards,
            late_deposit,
            burns,
            retired,
            accounting,
            elapsed: started.elapsed(),
        })
    }

    /// The first key's group key.
    async fn first_address(&self, pool: &PgPool) -> Result<[u8; 32], DevnetError> {
        let status = crate::keygen::status(pool, None).await?;
        status
            .iter()
            .filter(|s| s.status == "confirmed")
            .min_by_key(|s| s.session)
            .and_then(|s| hex::decode(&s.group_key).ok())
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| failed("no first key"))
    }

    /// Each burn's subaddress received exactly its amount in the payout.
    async fn check_the_wallet(&self, burns: &[Burn], payout: &Payout) -> Result<u64, DevnetError> {
        let wallet = &self.net.rpc.wallet;
        let tx_hash = &payout.tx_hash;
        let mut received = 0;
        for burn in burns {
            let minor = burn.minor;
            let got = wait_for(
                "the user's wallet to see the payout",
                Duration::from_secs(60),
                &self.stop,
                None,
                || async {
                    let _ = wallet.refresh(None).await;
                    let mut transfers = wallet
                        .get_transfers(monero_rpc::GetTransfersSelector {
                            category_selector: [(monero_rpc::GetTransfersCategory::In, true)]
                                .into(),
                            account_index: Some(0),
                            subaddr_indices: Some(vec![minor]),
                            block_height_filter: None,
                        })
                        .await
                        .map_err(rpc_failed("get_transfers"))?;
                    let got: Vec<(String, u64)> = transfers
                        .remove(&monero_rpc::GetTransfersCategory::In)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|e| (hex::encode(e.txid.0), e.amount.as_pico()))
                        .collect();
                    Ok((!got.is_empty()).then_some(got))
                },
            )
            .await?;
            if got != vec![(tx_hash.clone(), burn.amount)] {
                return Err(failed(format!(
                    "the user's subaddress {minor} received {got:?}, expected {} in {tx_hash}",
                    xmr(burn.amount)
                )));
            }
            received += burn.amount;
        }
        Ok(received)
    }

    /// Processor `i`'s books once they settle: (deposits, paid, fees,
    /// unspent), with deposits = paid + fees + unspent and paid = `burned`.
    async fn check_the_books(
        &self,
        i: usize,
        burned: u64,
    ) -> Result<(u64, u64, u64, u64), DevnetError> {
        let p = crate::invariants::db::reader_pool(&self.net.processor_dbs[i]).await?;
        let books = wait_for(
            "the processor's books to settle",
            Duration::from_secs(60),
            &self.stop,
            None,
            || async {
                let db::Books {
                    deposits,
                    paid,
                    fees,
                    unspent,
                } = db::books(&p).await?;
                let as_u64 = |v: i64| u64::try_from(v).unwrap_or(0);
                Ok(
                    (deposits == paid + fees + unspent && as_u64(paid) == burned).then(|| {
                        (
                            as_u64(deposits),
                            as_u64(paid),
                            as_u64(fees),
                            as_u64(unspent),
                        )
                    }),
                )
            },
        )
        .await;
        p.close().await;
        books
    }

    /// What the run produced.
    fn summary(
        &self,
        key: GroupKey,
        batches: Vec<(u64, u64)>,
        burns: &[Burn],
        payout: Payout,
        checked: Checked,
    ) -> Summary {
        let fee = checked.accounting.first().map_or(0, |a| a.3);
        Summary {
            group_address: key.monero_address,
            batches,
            payouts: vec![(payout.tx_hash, fee)],
            payout_latency: payout.latency,
            received: checked.received,
            burned: burns.iter().map(|b| b.amount).sum(),
            accounting: checked.accounting,
            rotation: None,
            elapsed: self.started.elapsed(),
        }
    }
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
