//! The `processor` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use processor::config::Config;

/// A validator's Monero threshold-custody processor.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the processor until SIGTERM or Ctrl-C.
    Run {
        /// The TOML configuration file (see processor.example.toml).
        #[arg(long, short, env = "PROCESSOR_CONFIG")]
        config: PathBuf,
    },
    /// Write a new random key-encryption key (64 hex characters) to a file
    /// readable only by its owner. Refuses to overwrite an existing file.
    GenerateKek {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a configuration file (with environment overrides) and print it,
    /// secrets redacted.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short, env = "PROCESSOR_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::GenerateKek { out } => match write_kek(&out) {
            Ok(()) => {
                println!("wrote a new key-encryption key to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", out.display());
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(config) => {
                println!("{config:#?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => processor::run::main(&config),
    }
}

fn write_kek(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let kek = processor::keystore::Kek::generate();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(kek.to_hex().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}
