//! The Debian packages the tests run, found or installed on first use: as
//! root with apt-get they are installed (one installer at a time across
//! the test processes); otherwise the test process prints the command to
//! run and exits with code 2. The decisions live in
//! `coordinator_mock::devnet::prerequisites`, shared with the devnet.

use std::path::PathBuf;

use coordinator_mock::devnet::prerequisites::{self, Package};

/// A Monero binary from Debian's `monero` package (`MONERO_BIN_DIR`
/// overrides where it is looked for).
pub fn monero_tool(name: &str) -> PathBuf {
    prerequisites::ensure_or_exit(&[Package::Monero]);
    prerequisites::monero_tool(name).unwrap_or_else(|| {
        eprintln!("error: the `monero` package is installed but has no {name}");
        std::process::exit(2);
    })
}

pub fn monerod() -> PathBuf {
    monero_tool("monerod")
}

pub fn monero_wallet_rpc() -> PathBuf {
    monero_tool("monero-wallet-rpc")
}

/// `pg_dump` (Debian `postgresql-client`).
pub fn pg_dump() -> PathBuf {
    prerequisites::ensure_or_exit(&[Package::PostgresqlClient]);
    PathBuf::from("pg_dump")
}
