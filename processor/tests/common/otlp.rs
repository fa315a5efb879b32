//! A real OTLP/gRPC trace receiver for tests (tests/otlp_receiver.py on
//! Python grpcio + opentelemetry-proto from PyPI, in a virtualenv beside the
//! build). Self-contained so other packages' tests can include it by path.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The build's target directory (this test binary is in `<target>/debug/deps`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary is in <target>/<profile>/deps")
        .to_path_buf()
}

/// A virtualenv `name` beside the build with `packages` from PyPI, made on
/// first use (one installer at a time across test processes; a marker file
/// says the install finished).
pub fn venv(name: &str, packages: &[&str]) -> PathBuf {
    let venv = target_dir().join(name);
    let done = venv.join(".installed");
    if done.exists() {
        return venv;
    }
    // python3 with venv (Debian python3-venv), installed here if need be.
    coordinator_mock::devnet::prerequisites::ensure_or_exit(&[
        coordinator_mock::devnet::prerequisites::Package::PythonVenv,
    ]);
    let lock = target_dir().join(format!("{name}.lock"));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) if done.exists() => return venv,
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "waited 300s for another install of {name}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let result = (|| {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err("python3 -m venv failed (install python3-venv)".to_string());
        }
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(packages)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!("pip install {} failed", packages.join(" ")));
        }
        std::fs::write(&done, b"").map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_file(&lock);
    result.unwrap_or_else(|e| panic!("making the {name} virtualenv: {e}"));
    venv
}

/// A running receiver; stopped when dropped.
pub struct Receiver {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The JSON-lines file of received spans.
    pub out: PathBuf,
    log: PathBuf,
}

impl Receiver {
    /// Starts one writing into `dir` and waits until it listens.
    pub fn start(dir: &Path) -> Self {
        let python = venv("otel-venv", &["grpcio", "opentelemetry-proto"]).join("bin/python");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let out = dir.join("spans.jsonl");
        let log = dir.join("otlp-receiver.log");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../processor/tests/otlp_receiver.py");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(&out)
            .stdout(file.try_clone().unwrap())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start the OTLP receiver");
        let receiver = Self {
            child,
            port,
            out,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&receiver.log)
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(
                Instant::now() < deadline,
                "the OTLP receiver did not start: {}",
                std::fs::read_to_string(&receiver.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        receiver
    }

    /// `http://127.0.0.1:<port>`, for OTEL_EXPORTER_OTLP_ENDPOINT.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
