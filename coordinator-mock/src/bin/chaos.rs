//! `chaos`: full custody cycles on the devnet while faults drawn from a
//! seed are injected; the invariant checker runs after every run (see
//! `coordinator_mock::chaos`).
//!
//!     cargo run -p coordinator-mock --bin chaos -- --runs 10 --seed 1

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use coordinator_mock::chaos::{self, Config, Faults};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(version, about = "Run disturbed custody cycles and check every invariant", long_about = None)]
struct Cli {
    /// Runs.
    #[arg(long, default_value_t = 10)]
    runs: u64,
    /// Runs at a time. Each has its own monerod, processors, coordinator and
    /// databases; the faults of one do not reach another (Postgres is
    /// shared, each run terminating only its own processors' sessions).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// The first run's seed; run k uses seed + k. Default: from the clock
    /// (printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Postgres server (each run's databases are created on it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Where each run's files go (`run-<seed>`, kept when a run fails).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("custody-chaos"))]
    work_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one processor (each run starts its processors this way).
    #[command(hide = true)]
    Processor {
        #[arg(long)]
        config: PathBuf,
    },
    /// Runs the coordinator (each run starts it this way).
    #[command(hide = true)]
    Coordinator {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Processor { config }) => return processor::run::main(&config),
        Some(Command::Coordinator { config }) => return coordinator_mock::run::main(&config),
        None => {}
    }
    if cli.runs == 0 {
        eprintln!("error: --runs must be at least 1");
        return ExitCode::from(2);
    }
    if cli.jobs == 0 {
        eprintln!("error: --jobs must be at least 1");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot locate this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let config = Config {
        database_url: cli.database_url,
        exe,
        work_root: cli.work_dir,
    };
    if let Err(e) = runtime.block_on(chaos::check_capacity(&config.database_url, cli.jobs)) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    println!(
        "chaos: {} run(s) from seed {seed}, {} at a time; files under {}",
        cli.runs,
        cli.jobs,
        config.work_root.display()
    );
    let ok = runtime.block_on(async move {
        let interrupt = CancellationToken::new();
        {
            let interrupt = interrupt.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("\ninterrupted: stopping every process");
                    interrupt.cancel();
                }
            });
        }
        let started = Instant::now();
        let (mut faults, mut violations, mut failed, mut done, mut revived) =
            (Faults::default(), 0, 0, 0, 0);
        let runs = futures::stream::iter(0..cli.runs)
            .take_while(|_| std::future::ready(!interrupt.is_cancelled()))
            .map(|k| chaos::run_once(&config, seed.wrapping_add(k), interrupt.clone()))
            .buffer_unordered(cli.jobs);
        let mut runs = std::pin::pin!(runs);
        while let Some(report) = runs.next().await {
            println!("run {}/{} {report}", done + 1, cli.runs);
            faults.add(&report.faults);
            revived += report.revived;
            violations += report.violations();
            failed += u64::from(!report.passed());
            done += 1;
        }
        println!(
            "\n== chaos: {done} runs, {failed} not passed, {} faults [{faults}], {revived} processors revived, {violations} violations, {:.1} s ==",
            faults.total(),
            started.elapsed().as_secs_f64()
        );
        failed == 0 && !interrupt.is_cancelled()
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
