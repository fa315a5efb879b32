//! `devnet`: the whole custody cycle on a local regtest chain, in one
//! command (see `coordinator_mock::devnet`).
//!
//!     cargo run -p coordinator-mock --bin devnet [-- --keep-running]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coordinator_mock::devnet::{DevnetError, Options};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(version, about = "Run the custody cycle on a local regtest devnet", long_about = None)]
struct Cli {
    /// Leave everything running after the checks (for grpcurl), until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Processors.
    #[arg(long, default_value_t = 3)]
    processors: usize,
    /// Signers needed (t).
    #[arg(long, default_value_t = 2)]
    threshold: u32,
    /// After the cycle, rotate the key: one more processor joins, a
    /// (t+1)-of-(n+1) key takes over and the first key forwards everything
    /// to it and retires, with deposits and burns before, during and after.
    #[arg(long)]
    rotate: bool,
    /// Postgres server (devnet databases are created on it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Prefix of the databases made (`<prefix>_processor_1`.., `<prefix>_coordinator`;
    /// dropped first if they exist), so that two devnets can share a server.
    #[arg(long, default_value = "devnet")]
    db_prefix: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one processor (the devnet starts its processors this way).
    #[command(hide = true)]
    Processor {
        #[arg(long)]
        config: PathBuf,
    },
    /// Runs the coordinator (the devnet starts it this way).
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
    let options = Options {
        n: cli.processors,
        t: cli.threshold,
        database_url: cli.database_url,
        db_prefix: cli.db_prefix,
        exe,
        offline: Vec::new(),
        restart: None,
        keep_running: cli.keep_running,
        rotate: cli.rotate,
        verbose: true,
        // The processors (children) read it from the environment too.
        otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty()),
        disturb: None,
        work_dir: None,
    };
    let result = runtime.block_on(async move {
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
        coordinator_mock::devnet::run(options, interrupt).await
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(DevnetError::Missing(what)) => {
            eprintln!("error: {what}");
            ExitCode::from(2)
        }
        Err(DevnetError::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
