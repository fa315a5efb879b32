//! The chaos runner: full custody cycles on the devnet's real parts while
//! faults drawn from a seed are injected, each run ending with the
//! invariant checker (`crate::invariants`, called by the devnet's final
//! checks).
//!
//! Faults, between key generation and the final checks:
//! - SIGKILL a random processor, restarted after a random delay;
//! - SIGKILL the coordinator, restarted after a random delay;
//! - SIGKILL monerod (it keeps its regtest chain: `--keep-fakechain`),
//!   restarted after a random delay;
//! - terminate a random processor's Postgres backends mid-transaction
//!   (`pg_terminate_backend`, what a Postgres restart does to it);
//! - sever the TCP connections between the coordinator and a random
//!   processor, through a proxy (the stream itself is never altered);
//! - SIGSTOP a random processor for longer than the peer timeout, then
//!   SIGCONT.
//!
//! The schedule (which fault, where, the delays) is a pure function of the
//! run's seed; when each lands relative to the processors' work is not.

pub mod db;
pub mod proxy;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sqlx::{Connection as _, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::devnet::{self, DevnetError, Disturb, Options, Processes};
use crate::invariants::Violation;
use proxy::Proxy;

/// The devnet's peer timeout (its processors' and coordinator's
/// `link.peer_timeout`): a pause must outlast it.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL a processor, restart it later.
    KillProcessor,
    /// SIGKILL the coordinator, restart it later.
    KillCoordinator,
    /// SIGKILL monerod, restart it later.
    KillMonerod,
    /// Terminate a processor's Postgres backends.
    TerminateBackends,
    /// Sever the coordinator's TCP connections to a processor.
    SeverLinks,
    /// SIGSTOP a processor past the peer timeout, then SIGCONT.
    PauseProcessor,
}

impl FaultKind {
    /// Every kind, in the order the schedule draws from.
    pub const ALL: [Self; 6] = [
        Self::KillProcessor,
        Self::KillCoordinator,
        Self::KillMonerod,
        Self::TerminateBackends,
        Self::SeverLinks,
        Self::PauseProcessor,
    ];

    /// Its name in progress lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::KillProcessor => "kill-processor",
            Self::KillCoordinator => "kill-coordinator",
            Self::KillMonerod => "kill-monerod",
            Self::TerminateBackends => "pg-terminate",
            Self::SeverLinks => "sever-tcp",
            Self::PauseProcessor => "pause-processor",
        }
    }
}

/// Faults injected, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults(pub BTreeMap<FaultKind, u64>);

impl Faults {
    /// Adds another run's counts.
    pub fn add(&mut self, other: &Self) {
        for (kind, n) in &other.0 {
            *self.0.entry(*kind).or_default() += n;
        }
    }

    /// All faults.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = FaultKind::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), self.0.get(k).copied().unwrap_or(0)))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The cycle completed and every invariant held.
    Passed,
    /// The cycle completed but invariants were violated.
    Violations(Vec<Violation>),
    /// The cycle did not complete (a step timed out, a check failed).
    Failed(String),
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The run's seed (`--seed S --runs 1` repeats its schedule).
    pub seed: u64,
    /// Processors.
    pub n: usize,
    /// Threshold.
    pub t: u32,
    /// Faults injected.
    pub faults: Faults,
    /// Processors restarted after they exited on their own, as a supervisor
    /// would (a processor that loses the session holding its instance lock,
    /// e.g. to pg-terminate, exits rather than risk a second instance).
    pub revived: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time.
    pub elapsed: Duration,
    /// Its files (logs, configs), kept when it did not pass.
    pub work_dir: PathBuf,
    /// Its databases' prefix (kept when it did not pass).
    pub db_prefix: String,
}

impl Report {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Passed)
    }

    /// Violations found.
    pub fn violations(&self) -> usize {
        match &self.outcome {
            Outcome::Violations(v) => v.len(),
            _ => 0,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} {}-of-{} faults [{}] revived {} ",
            self.seed, self.t, self.n, self.faults, self.revived
        )?;
        match &self.outcome {
            Outcome::Passed => write!(f, "ok, 0 violations")?,
            Outcome::Violations(v) => write!(
                f,
                "VIOLATIONS {}: {}",
                v.len(),
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )?,
            Outcome::Failed(why) => write!(f, "FAILED: {}", why.replace('\n', " "))?,
        }
        write!(f, " {:.1}s", self.elapsed.as_secs_f64())?;
        if !self.passed() {
            write!(
                f,
                " (kept {} and databases {}_*; repeat: --seed {} --runs 1)",
                self.work_dir.display(),
                self.db_prefix,
                self.seed
            )?;
        }
        Ok(())
    }
}

/// What every run shares.
#[derive(Debug, Clone)]
pub struct Config {
    /// Postgres server URL.
    pub database_url: String,
    /// The executable that runs a processor as `<exe> processor --config F`
    /// and the coordinator as `<exe> coordinator --config F`.
    pub exe: PathBuf,
    /// Each run's files go to `<work_root>/run-<seed>`.
    pub work_root: PathBuf,
}

/// Most Postgres sessions one run may hold: 5 processors and the
/// coordinator, each a pool of 10 (the devnet's configurations leave the
/// default) plus its instance-lock session, and the runner's own pools.
pub const CONNECTIONS_PER_RUN: i64 = 6 * 11 + 12;

/// Whether the server takes `jobs` runs at a time; if not, what to do.
pub async fn check_capacity(database_url: &str, jobs: usize) -> Result<(), String> {
    let mut admin = PgConnection::connect(database_url)
        .await
        .map_err(|e| format!("cannot connect to Postgres at {database_url}: {e}"))?;
    let usable = db::usable_connections(&mut admin)
        .await
        .map_err(|e| format!("cannot read max_connections: {e}"))?;
    let _ = admin.close().await;
    let needed = i64::try_from(jobs)
        .unwrap_or(i64::MAX)
        .saturating_mul(CONNECTIONS_PER_RUN);
    if needed > usable {
        return Err(format!(
            "--jobs {jobs} may need {needed} Postgres sessions ({CONNECTIONS_PER_RUN} per run) and \
             the server takes {usable}: lower --jobs to {}, or raise max_connections \
             (ALTER SYSTEM SET max_connections = {}; then restart Postgres)",
            (usable / CONNECTIONS_PER_RUN).max(1),
            needed + 10
        ));
    }
    Ok(())
}

/// Runs one disturbed custody cycle; its seed picks n/t and the schedule.
pub async fn run_once(config: &Config, seed: u64, interrupt: CancellationToken) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let (n, t) = if rng.gen_bool(0.5) { (3, 2) } else { (5, 3) };
    let work_dir = config.work_root.join(format!("run-{seed}"));
    let db_prefix = format!("chaos_{seed}");
    let injector = Arc::new(Injector::new(rng.r#gen()));
    let options = Options {
        n,
        t,
        database_url: config.database_url.clone(),
        db_prefix: db_prefix.clone(),
        exe: config.exe.clone(),
        offline: Vec::new(),
        restart: None,
        keep_running: false,
        rotate: false,
        verbose: false,
        otlp_endpoint: None,
        disturb: Some(injector.clone()),
        work_dir: Some(work_dir.clone()),
    };
    let started = Instant::now();
    let result = devnet::run(options, interrupt).await;
    injector.shutdown.cancel();
    let outcome = match result {
        Ok(_) => Outcome::Passed,
        Err(DevnetError::Violations(v)) => Outcome::Violations(v),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    let report = Report {
        seed,
        n,
        t,
        faults: injector.faults(),
        revived: *injector
            .revived
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
        outcome,
        elapsed: started.elapsed(),
        work_dir,
        db_prefix,
    };
    if report.passed() {
        // Nothing to reproduce: give the disk and the server back.
        let _ = std::fs::remove_dir_all(&report.work_dir);
        let mut names: Vec<String> = (1..=n)
            .map(|i| format!("{}_processor_{i}", report.db_prefix))
            .collect();
        names.push(format!("{}_coordinator", report.db_prefix));
        if let Ok(mut admin) = PgConnection::connect(&config.database_url).await {
            for name in names {
                if let Err(e) = db::drop_database(&mut admin, &name).await {
                    tracing::warn!("dropping {name}: {e}");
                }
            }
        }
    }
    report
}

/// The fault injector of one run.
#[derive(Debug)]
struct Injector {
    seed: u64,
    proxies: Mutex<Vec<Proxy>>,
    calm: Arc<tokio::sync::Mutex<()>>,
    /// Stops the schedule (settle).
    stop: CancellationToken,
    /// Stops the proxies (the run is over).
    shutdown: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    faults: Arc<Mutex<Faults>>,
    revived: Arc<Mutex<u64>>,
}

impl Injector {
    fn new(seed: u64) -> Self {
        Self {
            seed,
            proxies: Mutex::new(Vec::new()),
            calm: Arc::new(tokio::sync::Mutex::new(())),
            stop: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            task: Mutex::new(None),
            faults: Arc::new(Mutex::new(Faults::default())),
            revived: Arc::new(Mutex::new(0)),
        }
    }

    fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Disturb for Injector {
    fn dial_port(&self, index: usize, port: u16) -> Result<u16, DevnetError> {
        let proxy = Proxy::start(port, self.shutdown.clone())?;
        let dial = proxy.port();
        let mut proxies = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
        if proxies.len() != index {
            return Err(DevnetError::Failed(format!(
                "proxies are made in processor order: asked for {index} after {}",
                proxies.len()
            )));
        }
        proxies.push(proxy);
        Ok(dial)
    }

    fn start(&self, processes: Processes) {
        let schedule = Schedule {
            rng: StdRng::seed_from_u64(self.seed),
            processes,
            proxies: self
                .proxies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            calm: self.calm.clone(),
            stop: self.stop.clone(),
            faults: self.faults.clone(),
            revived: self.revived.clone(),
        };
        let task = tokio::spawn(schedule.run());
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    fn calm(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.calm.clone()
    }

    fn settle(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.stop.cancel();
            let task = self
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(task) = task {
                // Each fault ends with its target running again.
                let _ = task.await;
            }
        })
    }
}

/// The fault schedule of one run, drawn from its seed.
struct Schedule {
    rng: StdRng,
    processes: Processes,
    proxies: Vec<Proxy>,
    calm: Arc<tokio::sync::Mutex<()>>,
    stop: CancellationToken,
    faults: Arc<Mutex<Faults>>,
    revived: Arc<Mutex<u64>>,
}

impl Schedule {
    async fn run(mut self) {
        loop {
            let wait = Duration::from_millis(self.rng.gen_range(1_500..6_000));
            tokio::select! {
                () = self.stop.cancelled() => return self.revive(),
                () = tokio::time::sleep(wait) => {}
            }
            let calm = self.calm.clone();
            let _calm = calm.lock().await;
            self.revive();
            if self.stop.is_cancelled() {
                return;
            }
            let kind = FaultKind::ALL[self.rng.gen_range(0..FaultKind::ALL.len())];
            match self.inject(kind).await {
                Ok(()) => {
                    let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
                    *faults.0.entry(kind).or_default() += 1;
                }
                Err(e) => tracing::warn!("injecting {}: {e}", kind.name()),
            }
        }
    }

    /// Restarts every processor (and the coordinator) that exited on its
    /// own, as its supervisor (systemd, Kubernetes) would.
    fn revive(&self) {
        let processors = self.processes.processors.iter().flatten();
        for p in processors.chain([&self.processes.coordinator]) {
            if p.exited() {
                match p.restart() {
                    Ok(()) => {
                        *self.revived.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                    }
                    Err(e) => tracing::warn!("restarting {}: {e}", p.name()),
                }
            }
        }
    }

    /// A random online processor: its index.
    fn pick(&mut self) -> Option<usize> {
        let online: Vec<usize> = self
            .processes
            .processors
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|_| i))
            .collect();
        if online.is_empty() {
            return None;
        }
        online.get(self.rng.gen_range(0..online.len())).copied()
    }

    async fn sleep_ms(&mut self, range: std::ops::Range<u64>) {
        tokio::time::sleep(Duration::from_millis(self.rng.gen_range(range))).await;
    }

    async fn inject(&mut self, kind: FaultKind) -> Result<(), DevnetError> {
        let Some(i) = self.pick() else {
            return Ok(());
        };
        let Some(processor) = self.processes.processors[i].clone() else {
            return Ok(());
        };
        match kind {
            FaultKind::KillProcessor => {
                processor.kill9();
                self.sleep_ms(500..4_000).await;
                processor.restart()?;
            }
            FaultKind::KillCoordinator => {
                let coordinator = self.processes.coordinator.clone();
                coordinator.kill9();
                self.sleep_ms(500..4_000).await;
                coordinator.restart()?;
            }
            FaultKind::KillMonerod => {
                let monerod = self.processes.monerod.clone();
                monerod.kill9();
                self.sleep_ms(500..3_000).await;
                monerod.restart()?;
                // Back with its chain before anything else is disturbed.
                let daemon = processor::monero::Daemon::new(self.processes.monerod_url.clone());
                let deadline = Instant::now() + Duration::from_secs(60);
                while daemon.tip().await.is_err() {
                    if Instant::now() > deadline {
                        return Err(DevnetError::Failed(
                            "monerod did not answer within 60 s of its restart".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            FaultKind::TerminateBackends => {
                let url = &self.processes.processor_dbs[i];
                let database = url.rsplit('/').next().unwrap_or_default();
                let mut admin = PgConnection::connect(&self.processes.database_url).await?;
                db::terminate_backends(&mut admin, database).await?;
                let _ = admin.close().await;
            }
            FaultKind::SeverLinks => {
                if let Some(proxy) = self.proxies.get(i) {
                    proxy.sever();
                }
            }
            FaultKind::PauseProcessor => {
                processor.signal(nix::sys::signal::Signal::SIGSTOP);
                let extra = self.rng.gen_range(1_000..4_000);
                tokio::time::sleep(PEER_TIMEOUT + Duration::from_millis(extra)).await;
                processor.signal(nix::sys::signal::Signal::SIGCONT);
            }
        }
        Ok(())
    }
}
