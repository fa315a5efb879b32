//! Fault injection exists only in builds with the `failpoints` feature; a
//! build without it refuses `FAILPOINTS` instead of ignoring it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn failpoints_are_honoured_or_refused_never_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_processor"))
        .args(["run", "--config"])
        .arg(dir.path().join("absent.toml"))
        .env("FAILPOINTS", "scheduler-extra-payment=return(4abc)")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    if cfg!(feature = "failpoints") {
        // The test build: FAILPOINTS is accepted, and the next problem (the
        // missing file) is what stops it.
        assert!(stderr.contains("absent.toml"), "{stderr}");
        assert!(!stderr.contains("FAILPOINTS"), "{stderr}");
    } else {
        // A release build: refused before anything else, saying what to do.
        assert!(
            stderr.contains("FAILPOINTS is set")
                && stderr.contains("built without the `failpoints` feature"),
            "{stderr}"
        );
    }
}
