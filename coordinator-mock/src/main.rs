//! The `coordinator-mock` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coordinator_mock::config::Config;

/// A coordinator for local runs, tests and demos of Monero processors.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run until SIGTERM or Ctrl-C.
    Run {
        /// The TOML configuration file (see coordinator.example.toml).
        #[arg(long, short, env = "COORDINATOR_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file and print it, secrets redacted.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short, env = "COORDINATOR_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (path, run) = match cli.command {
        Command::CheckConfig { config } => (config, false),
        Command::Run { config } => (config, true),
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if !run {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    coordinator_mock::run::start(config)
}
