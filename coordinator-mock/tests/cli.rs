//! The coordinator-mock command line: bad configuration is refused with the
//! field named, a good one is echoed with secrets redacted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator-mock"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn bad_config_names_the_field() {
    let (ok, text) = run(
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"postgres://u:secret@h/d\"\n\
         [[processors]]\nname = \"a\"\nendpoint = \"http://127.0.0.1:2\"\n\
         [[processors]]\nname = \"a\"\nendpoint = \"http://127.0.0.1:3\"\n[tls]\ninsecure = true\n",
    );
    assert!(!ok);
    assert!(text.contains("processors[1].name"), "{text}");
    let (ok, text) = run("listen = 5\n");
    assert!(!ok);
    assert!(text.contains("`listen`"), "{text}");
}

#[test]
fn good_config_is_echoed_without_secrets() {
    let (ok, text) = run(include_str!("../coordinator.example.toml"));
    assert!(ok, "{text}");
    assert!(text.contains("validator-1"), "{text}");
    let (ok, text) = run(
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"postgres://u:secret@h/d\"\nprocessors = []\n[tls]\ninsecure = true\n",
    );
    assert!(ok, "{text}");
    assert!(!text.contains("secret"), "{text}");
}
