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
    /// Back up or restore this processor's key shares and identity
    /// (README "Backup and restore").
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Write the key shares, identity and what is needed to sign again to a
    /// new file sealed under a passphrase. Refuses to overwrite a file. The
    /// processor may keep running.
    Export {
        /// The processor's TOML configuration file.
        #[arg(long, short, env = "PROCESSOR_CONFIG")]
        config: PathBuf,
        /// The backup file to create.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Restore a backup into an empty database (the processor stopped); the
    /// processor then rescans from each key's activation height.
    Import {
        /// The processor's TOML configuration file.
        #[arg(long, short, env = "PROCESSOR_CONFIG")]
        config: PathBuf,
        /// The backup file `keys export` wrote.
        #[arg(long = "in")]
        input: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

/// Where the backup passphrase comes from: this file, else the
/// PROCESSOR_BACKUP_PASSPHRASE environment variable, else a prompt on the
/// terminal (not echoed).
#[derive(Debug, clap::Args)]
struct PassphraseArgs {
    /// A file holding the passphrase (one line; the line ending is not part
    /// of it).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
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
        Command::Keys { command } => keys::main(command),
    }
}

/// `processor keys export|import`.
mod keys {
    use std::io::IsTerminal as _;
    use std::path::Path;
    use std::process::ExitCode;

    use processor::backup::{self, BackupError, Contents, KdfParams};
    use processor::config::Config;
    use processor::keystore::Kek;
    use zeroize::Zeroizing;

    use super::{KeysCommand, PassphraseArgs};

    /// The environment variable a passphrase may come from (automation).
    const PASSPHRASE_ENV: &str = "PROCESSOR_BACKUP_PASSPHRASE";

    pub fn main(command: KeysCommand) -> ExitCode {
        let (config_path, result) = match command {
            KeysCommand::Export {
                config,
                out,
                passphrase,
            } => {
                let r = load(&config).map(|c| export(&c, &out, &passphrase));
                (config, r)
            }
            KeysCommand::Import {
                config,
                input,
                passphrase,
            } => {
                let r = load(&config).map(|c| import(&c, &input, &passphrase));
                (config, r)
            }
        };
        match result {
            Err(e) => {
                eprintln!("error: {}: {e}", config_path.display());
                ExitCode::from(2)
            }
            Ok(Err(e)) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
            Ok(Ok(())) => ExitCode::SUCCESS,
        }
    }

    fn load(path: &Path) -> Result<Config, processor::config::ConfigError> {
        Config::load(path)
    }

    fn runtime() -> Result<tokio::runtime::Runtime, BackupError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| BackupError::Io {
                path: "tokio runtime".into(),
                source,
            })
    }

    /// Reads the passphrase. `new`: it seals a new file, so it is asked twice
    /// on a terminal and must be long enough.
    fn passphrase(args: &PassphraseArgs, new: bool) -> Result<Zeroizing<String>, BackupError> {
        let text = if let Some(path) = &args.passphrase_file {
            let mut text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                BackupError::Io {
                    path: path.display().to_string(),
                    source,
                }
            })?);
            // The file's line ending is not part of the passphrase.
            let len = text.trim_end_matches(['\n', '\r']).len();
            text.truncate(len);
            text
        } else if let Some(value) = std::env::var_os(PASSPHRASE_ENV) {
            Zeroizing::new(value.into_string().map_err(|_| {
                BackupError::Passphrase(format!("{PASSPHRASE_ENV} is not valid UTF-8"))
            })?)
        } else if std::io::stdin().is_terminal() {
            let prompt = |p: &str| {
                rpassword::prompt_password(p)
                    .map(Zeroizing::new)
                    .map_err(|source| BackupError::Io {
                        path: "terminal".into(),
                        source,
                    })
            };
            let first = prompt("Backup passphrase: ")?;
            if new && *prompt("Repeat the passphrase: ")? != *first {
                return Err(BackupError::Passphrase(
                    "the two entries differ; nothing was written".into(),
                ));
            }
            first
        } else {
            return Err(BackupError::Passphrase(format!(
                "none given and no terminal to ask on: use --passphrase-file FILE or set \
                 {PASSPHRASE_ENV}"
            )));
        };
        if text.is_empty() {
            return Err(BackupError::Passphrase("it is empty".into()));
        }
        if new && text.chars().count() < backup::MIN_PASSPHRASE_CHARS {
            return Err(BackupError::Passphrase(format!(
                "a new backup needs at least {} characters: the file is as sensitive as the \
                 shares, and only the passphrase protects it",
                backup::MIN_PASSPHRASE_CHARS
            )));
        }
        Ok(text)
    }

    fn export(config: &Config, out: &Path, args: &PassphraseArgs) -> Result<(), BackupError> {
        // Checked first so that nobody types a passphrase for nothing;
        // `write_new` refuses again if the file appears meanwhile.
        if out.exists() {
            return Err(BackupError::Exists(out.display().to_string()));
        }
        let kek = Kek::from_file(&config.keystore.kek_file)?;
        let (contents, summary) = runtime()?.block_on(async {
            let pool = processor::db::connect(&config.database_url, 1).await?;
            let collected = backup::collect(&pool, &kek, &config.node_id).await;
            pool.close().await;
            collected
        })?;
        let passphrase = passphrase(args, true)?;
        let plaintext = contents.to_bytes()?;
        let file = backup::seal(&plaintext, passphrase.as_bytes(), KdfParams::DEFAULT)?;
        backup::write_new(out, &file)?;
        println!(
            "wrote the key backup of processor {:?} to {}",
            config.node_id,
            out.display()
        );
        for (session, status, height) in &summary.keys {
            println!(
                "  key {session}: {}{}",
                status.as_str(),
                height.map_or(String::new(), |h| format!(
                    ", scanned from Monero height {h}"
                ))
            );
        }
        for (session, status) in &summary.skipped {
            println!("  key {session}: not written ({status}: only finished keys are backed up)");
        }
        println!("  {} account(s)", summary.accounts);
        println!(
            "This file and its passphrase together are this processor's key shares: store them \
             apart, and as carefully as the shares themselves."
        );
        Ok(())
    }

    fn import(config: &Config, input: &Path, args: &PassphraseArgs) -> Result<(), BackupError> {
        let bytes = backup::read_file(input)?;
        let sealed = backup::parse(&bytes, &input.display().to_string())?;
        let kek = Kek::from_file(&config.keystore.kek_file)?;
        let passphrase = passphrase(args, false)?;
        let plaintext = sealed.open(passphrase.as_bytes())?;
        let contents = Contents::from_bytes(&plaintext)?;
        if contents.node_id != config.node_id {
            return Err(BackupError::WrongNode {
                backup: contents.node_id.clone(),
                config: config.node_id.clone(),
            });
        }
        let summary = runtime()?.block_on(async {
            // The instance lock: a processor running on this database
            // would race the restore.
            let lock = processor::db::InstanceLock::acquire(&config.database_url).await?;
            let pool = processor::db::connect(&config.database_url, 2).await?;
            processor::db::migrate(&pool, &config.database_url).await?;
            let restored = backup::restore(&pool, &kek, &contents).await;
            pool.close().await;
            drop(lock);
            restored
        })?;
        println!(
            "restored the keys of processor {:?} from {}",
            config.node_id,
            input.display()
        );
        for (session, status, height) in &summary.keys {
            println!(
                "  key {session}: {}{}",
                status.as_str(),
                height.map_or(String::new(), |h| format!(
                    ", rescanned from Monero height {h}"
                ))
            );
        }
        println!(
            "  {} account(s), {} settlement block(s)",
            summary.accounts, summary.settlement_blocks
        );
        println!(
            "Start the processor: it rescans from each key's activation height, then signs again."
        );
        Ok(())
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
