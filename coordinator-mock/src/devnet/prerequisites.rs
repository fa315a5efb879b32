//! What the devnet and the tests need on the machine besides Rust and
//! Postgres, found where it is or installed on first use.
//!
//! Run as root on a machine with `apt-get`, a missing Debian package is
//! installed with a line saying what and why; anywhere else the exact
//! command to run is returned, and the caller exits with code 2. Every
//! lookup of a Monero binary goes through [`monero_tool`], which honours
//! `MONERO_BIN_DIR`; `CUSTODY_NO_INSTALL` (any non-empty value) turns
//! installing off.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where to look for `monerod`, `monero-wallet-rpc` and `monero-wallet-cli`
/// instead of `PATH`.
pub const MONERO_BIN_DIR: &str = "MONERO_BIN_DIR";
/// Set (non-empty) to never install anything, only say what to run.
pub const NO_INSTALL: &str = "CUSTODY_NO_INSTALL";

/// A Debian package the devnet or the tests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Package {
    /// `monerod` (the regtest chain) and `monero-wallet-rpc` (the user's wallet).
    Monero,
    /// `python3 -m venv`: the tests' grpcurl and OTLP receiver live in
    /// virtualenvs.
    PythonVenv,
    /// `pg_dump`: tests read what a processor stored.
    PostgresqlClient,
}

impl Package {
    /// Its Debian name.
    pub fn debian_name(self) -> &'static str {
        match self {
            Self::Monero => "monero",
            Self::PythonVenv => "python3-venv",
            Self::PostgresqlClient => "postgresql-client",
        }
    }

    /// What it provides and what for.
    pub fn why(self) -> &'static str {
        match self {
            Self::Monero => {
                "monerod and monero-wallet-rpc (the regtest chain and the user's wallet)"
            }
            Self::PythonVenv => {
                "python3 with venv (grpcurl and the OTLP receiver are installed from PyPI into virtualenvs)"
            }
            Self::PostgresqlClient => "pg_dump (tests read what a processor stored)",
        }
    }

    /// Whether it is usable on this machine.
    fn present(self, machine: &Machine) -> bool {
        match self {
            Self::Monero => ["monerod", "monero-wallet-rpc"]
                .iter()
                .all(|t| find_tool(t, machine.monero_bin_dir.as_deref()).is_some()),
            // Debian's python3 has `venv` but not `ensurepip` without python3-venv,
            // and a virtualenv cannot be made without it.
            Self::PythonVenv => Command::new("python3")
                .args(["-c", "import ensurepip, venv"])
                .output()
                .is_ok_and(|o| o.status.success()),
            Self::PostgresqlClient => on_path("pg_dump").is_some(),
        }
    }
}

/// What about this machine decides whether a package can be installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Running as root (apt-get needs it; nothing here asks for a password).
    pub root: bool,
    /// `apt-get` is on PATH.
    pub apt: bool,
    /// `CUSTODY_NO_INSTALL` is set.
    pub no_install: bool,
    /// `MONERO_BIN_DIR`, if set.
    pub monero_bin_dir: Option<PathBuf>,
}

impl Machine {
    /// This machine, now.
    pub fn current() -> Self {
        Self {
            root: running_as_root(),
            apt: on_path("apt-get").is_some(),
            no_install: std::env::var_os(NO_INSTALL).is_some_and(|v| !v.is_empty()),
            monero_bin_dir: monero_bin_dir(),
        }
    }
}

/// Whether this process's effective user is root: /proc/self belongs to it
/// (Linux, like apt-get).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn monero_bin_dir() -> Option<PathBuf> {
    std::env::var_os(MONERO_BIN_DIR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// What to do about missing packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Everything is there.
    Ready,
    /// Install these with apt-get now.
    Install(Vec<Package>),
    /// They cannot be installed from here: tell the user this (it names
    /// the exact command), exit code 2.
    Tell(String),
}

/// Decides what to do about `missing` on `machine`.
pub fn decide(missing: &[Package], machine: &Machine) -> Decision {
    if missing.is_empty() {
        return Decision::Ready;
    }
    let what: Vec<String> = missing
        .iter()
        .map(|p| format!("  {} (Debian package {})", p.why(), p.debian_name()))
        .collect();
    let what = format!("missing:\n{}\n", what.join("\n"));
    if let (true, Some(dir)) = (missing.contains(&Package::Monero), &machine.monero_bin_dir) {
        return Decision::Tell(format!(
            "{what}{MONERO_BIN_DIR}={} has no monerod and monero-wallet-rpc: put them there \
             (Debian's `monero` package installs them in /usr/bin), or unset {MONERO_BIN_DIR}",
            dir.display()
        ));
    }
    let names: Vec<&str> = missing.iter().map(|p| p.debian_name()).collect();
    let names = names.join(" ");
    if !machine.apt {
        return Decision::Tell(format!(
            "{what}apt-get is not available: install the equivalent of the Debian packages \
             `{names}` with this system's package manager and put them on PATH"
        ));
    }
    if machine.no_install || !machine.root {
        let sudo = if machine.root { "" } else { "sudo " };
        let reason = if machine.no_install {
            format!("{NO_INSTALL} is set")
        } else {
            "not running as root".to_owned()
        };
        return Decision::Tell(format!(
            "{what}not installing them ({reason}); run:\n  \
             {sudo}apt-get update && {sudo}apt-get install -y {names}"
        ));
    }
    Decision::Install(missing.to_vec())
}

/// Makes sure every package in `needed` is usable, installing what is
/// missing when [`decide`] says so; `say` gets a line per install. One
/// installer at a time across processes (parallel test processes call this
/// together): an exclusive lock on a file in the temporary directory.
/// `Err` is the message for the user (it names the exact command); exit
/// with code 2.
pub fn ensure(needed: &[Package], say: &mut dyn FnMut(&str)) -> Result<(), String> {
    let machine = Machine::current();
    let missing_now = |machine: &Machine| -> Vec<Package> {
        needed
            .iter()
            .copied()
            .filter(|p| !p.present(machine))
            .collect()
    };
    match decide(&missing_now(&machine), &machine) {
        Decision::Ready => return Ok(()),
        Decision::Tell(message) => return Err(message),
        Decision::Install(_) => {}
    }
    let path = std::env::temp_dir().join("monero-custody-install.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open the install lock {}: {e}", path.display()))?;
    // flock(2): released when `file` is dropped, or when the process dies.
    file.lock()
        .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    // Another process may have installed it while this one waited.
    let missing = missing_now(&machine);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.debian_name()).collect();
    for package in &missing {
        say(&format!(
            "installing Debian package {} with apt-get (first use): {}",
            package.debian_name(),
            package.why()
        ));
    }
    let run = |args: &[&str]| -> Result<(), String> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "`apt-get {}` failed ({status}); run it by hand to see why",
                args.join(" ")
            ))
        }
    };
    run(&["update", "-qq"])?;
    run(&[&["install", "-y", "-qq"][..], &names].concat())?;
    let still: Vec<&str> = missing_now(&machine)
        .iter()
        .map(|p| p.debian_name())
        .collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "apt-get installed {} but {} is still missing",
            names.join(" "),
            still.join(" and ")
        ))
    }
}

/// [`ensure`] for a test process or a tool: the install lines and the
/// message go to stderr, and if something is missing the process exits
/// with code 2 (under nextest each test is a process of its own).
pub fn ensure_or_exit(needed: &[Package]) {
    if let Err(message) = ensure(needed, &mut |line| eprintln!("{line}")) {
        eprintln!("error: {message}");
        std::process::exit(2);
    }
}

/// A Monero binary (`monerod`, `monero-wallet-rpc`, `monero-wallet-cli`):
/// in `MONERO_BIN_DIR` if that is set, else on PATH. `None` if it is not
/// there; [`ensure`] with [`Package::Monero`] first.
pub fn monero_tool(name: &str) -> Option<PathBuf> {
    find_tool(name, monero_bin_dir().as_deref())
}

fn find_tool(name: &str, bin_dir: Option<&Path>) -> Option<PathBuf> {
    match bin_dir {
        Some(dir) => Some(dir.join(name)).filter(|p| p.is_file()),
        None => on_path(name),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(root: bool, apt: bool, no_install: bool, bin_dir: Option<&str>) -> Machine {
        Machine {
            root,
            apt,
            no_install,
            monero_bin_dir: bin_dir.map(PathBuf::from),
        }
    }

    #[test]
    fn nothing_missing_is_ready() {
        assert_eq!(
            decide(&[], &machine(false, false, true, None)),
            Decision::Ready
        );
    }

    #[test]
    fn root_with_apt_installs() {
        assert_eq!(
            decide(
                &[Package::Monero, Package::PythonVenv],
                &machine(true, true, false, None)
            ),
            Decision::Install(vec![Package::Monero, Package::PythonVenv])
        );
    }

    fn told(decision: Decision) -> String {
        match decision {
            Decision::Tell(message) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn not_root_is_told_the_sudo_command() {
        let message = told(decide(
            &[Package::Monero],
            &machine(false, true, false, None),
        ));
        assert!(
            message.contains("sudo apt-get update && sudo apt-get install -y monero"),
            "{message}"
        );
        assert!(message.contains("not running as root"), "{message}");
        assert!(
            message.contains("monerod and monero-wallet-rpc"),
            "{message}"
        );
    }

    #[test]
    fn no_install_is_told_the_command_even_as_root() {
        let message = told(decide(
            &[Package::Monero, Package::PostgresqlClient],
            &machine(true, true, true, None),
        ));
        assert!(
            message.contains("\n  apt-get update && apt-get install -y monero postgresql-client"),
            "{message}"
        );
        assert!(message.contains(NO_INSTALL), "{message}");
    }

    #[test]
    fn without_apt_the_packages_are_named() {
        let message = told(decide(
            &[Package::PythonVenv],
            &machine(true, false, false, None),
        ));
        assert!(message.contains("apt-get is not available"), "{message}");
        assert!(message.contains("`python3-venv`"), "{message}");
    }

    #[test]
    fn a_pinned_monero_dir_is_never_installed_into() {
        let message = told(decide(
            &[Package::Monero],
            &machine(true, true, false, Some("/opt/monero")),
        ));
        assert!(message.contains("MONERO_BIN_DIR=/opt/monero"), "{message}");
        // Other packages still install: only Monero's place is pinned.
        assert_eq!(
            decide(
                &[Package::PythonVenv],
                &machine(true, true, false, Some("/opt/monero"))
            ),
            Decision::Install(vec![Package::PythonVenv])
        );
    }

    #[test]
    fn a_tool_is_looked_up_only_in_the_pinned_dir() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        assert_eq!(find_tool("monerod", Some(dir.path())), None);
        std::fs::write(dir.path().join("monerod"), b"").expect("write a file");
        assert_eq!(
            find_tool("monerod", Some(dir.path())),
            Some(dir.path().join("monerod"))
        );
    }
}
