//! Share backup and restore on real parts: the built `processor` binary's
//! `keys export` / `keys import`, real Postgres, a regtest monerod, a user's
//! monero-wallet-rpc paying deposits, the coordinator-mock driving signing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::cluster::*;
use common::deposits::*;
use common::monero::*;
use common::*;
use sqlx::{Connection, PgConnection, PgPool};

const PASSPHRASE: &str = "a long enough test passphrase";

/// Runs `processor keys <args>` (the built binary) with the passphrase
/// from a file, as automation would.
fn keys(dir: &Path, args: &[&str], passphrase: &str) -> Output {
    let file = dir.join(format!("pass-{:016x}", rand::random::<u64>()));
    std::fs::write(&file, format!("{passphrase}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_processor"))
        .arg("keys")
        .args(args)
        .arg("--passphrase-file")
        .arg(&file)
        .env_remove("PROCESSOR_BACKUP_PASSPHRASE")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    out
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn config_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("{}.toml", name(i)))
}

/// Drops database `name` and creates it again, empty.
async fn recreate(name: &str) {
    let mut conn = PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Credited deposits per account, and the group's own outputs, as one
/// processor's books hold them: (account, minor, amount, status).
async fn books(pool: &PgPool) -> Vec<(i64, i64, i64, String)> {
    sqlx::query_as(
        "SELECT account, subaddress_minor, amount, status FROM outputs
         WHERE status <> 'duplicate' ORDER BY account, amount",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Whether the database has the processor's schema at all.
async fn has_schema(pool: &PgPool) -> bool {
    scalar_i64(
        pool,
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('keys', 'identity')",
    )
    .await
        > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_restored_from_its_backup_rescans_and_signs() {
    let mut setup = Setup::start("restore", 2, |_| None).await;
    let dir = setup.cluster.dir.path().to_path_buf();

    // A deposit, reported in a batch signed and included.
    setup.deposit(700_000_000_000, 300_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    setup.wait_included(1).await;
    let p1 = setup.cluster.dbs[0].pool().await;
    let before = eventually(
        "processor 1 has the deposit included",
        Duration::from_secs(30),
        || async {
            let b = books(&p1).await;
            (b.len() == 2 && b.iter().all(|o| o.3 == "included")).then_some(b)
        },
    )
    .await;
    {
        let p2 = setup.cluster.dbs[1].pool().await;
        eventually(
            "processor 2 has the deposit included",
            Duration::from_secs(30),
            || async { (books(&p2).await == before).then_some(()) },
        )
        .await;
        p2.close().await;
    }

    // Processor 2 is backed up while it runs, then stopped; its database is
    // lost, and it is restored on a new machine: a new KEK.
    let backup = dir.join("validator-2.backup");
    let config = config_path(&dir, 1);
    let out = keys(
        &dir,
        &[
            "export",
            "--config",
            config.to_str().unwrap(),
            "--out",
            backup.to_str().unwrap(),
        ],
        PASSPHRASE,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("key 0: confirmed, scanned from Monero height"),
        "{}",
        text(&out)
    );
    let mut p = setup.cluster.procs[1].take().unwrap();
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        p.wait_exit(Duration::from_secs(20)).is_some(),
        "processor 2 stops"
    );
    drop(p);
    // The export ran on a live processor: take it again now that it is
    // stopped, so the link position in it is the last one.
    std::fs::remove_file(&backup).unwrap();
    let out = keys(
        &dir,
        &[
            "export",
            "--config",
            config.to_str().unwrap(),
            "--out",
            backup.to_str().unwrap(),
        ],
        PASSPHRASE,
    );
    assert!(out.status.success(), "{}", text(&out));
    let old_kek = std::fs::read(setup.cluster.kek(1)).unwrap();
    std::fs::remove_file(setup.cluster.kek(1)).unwrap();
    let new_kek = std::fs::read(setup.cluster.kek(1)).unwrap();
    assert_ne!(old_kek, new_kek, "the restored processor has a new KEK");
    recreate(&setup.cluster.dbs[1].name).await;

    let out = keys(
        &dir,
        &[
            "import",
            "--config",
            config.to_str().unwrap(),
            "--in",
            backup.to_str().unwrap(),
        ],
        PASSPHRASE,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("key 0: confirmed, rescanned from Monero height"),
        "{}",
        text(&out)
    );
    let p2 = setup.cluster.dbs[1].pool().await;
    assert_eq!(
        scalar_i64(&p2, "SELECT count(*) FROM outputs").await,
        0,
        "nothing the chain gives back is in the backup"
    );

    // Processor 3 goes away: from now on nothing is signed without
    // processor 2.
    let mut p3 = setup.cluster.procs[2].take().unwrap();
    p3.kill9();
    drop(p3);
    setup.respawn(1);
    wait_port(setup.cluster.ports[1]).await;

    // It rescans from the key's activation height and finds the deposit
    // again, with the same books as processor 1.
    eventually(
        "processor 2 rescanned the deposit",
        Duration::from_secs(90),
        || async { (books(&p2).await == before).then_some(()) },
    )
    .await;

    // The next batch needs processor 2's share: it signs.
    setup.deposit(200_000_000_000, 100_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let batches = setup.wait_included(2).await;
    assert!(batches[1].3.is_some(), "batch 2 is signed");
    let after = books(&p1).await;
    assert_eq!(after.len(), 4);
    eventually(
        "processor 2's books match processor 1's",
        Duration::from_secs(30),
        || async { (books(&p2).await == after).then_some(()) },
    )
    .await;
    // Its shares were sealed again under the new KEK.
    let kek = processor::keystore::Kek::from_file(&setup.cluster.kek(1)).unwrap();
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT sealed_key_package FROM keys WHERE session = 0")
            .fetch_one(&p2)
            .await
            .unwrap();
    processor::keystore::open_key_share(&kek, 0, &sealed).expect("the new KEK opens the share");
    let log = setup.cluster.procs[1].as_ref().unwrap().log_text();
    assert!(!log.contains(PASSPHRASE), "the passphrase is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_passphrase_changes_nothing() {
    let cluster = Cluster::start("bkwrong", 3, |_| vec![]).await;
    let session = cluster.coordinator.start_keygen(2, &[]).await.unwrap();
    cluster.wait_status(session, "confirmed").await;
    let p1 = cluster.dbs[0].pool().await;
    eventually(
        "processor 1 took the confirmation in",
        Duration::from_secs(20),
        || async { (key_row(&p1, 0).await.0 == "confirmed").then_some(()) },
    )
    .await;
    let dir = cluster.dir.path();
    let config = config_path(dir, 0);
    let backup = dir.join("validator-1.backup");
    let export = |passphrase: &str| {
        keys(
            dir,
            &[
                "export",
                "--config",
                config.to_str().unwrap(),
                "--out",
                backup.to_str().unwrap(),
            ],
            passphrase,
        )
    };

    // A short passphrase is refused and nothing is written.
    let out = export("short");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("at least 12 characters"),
        "{}",
        text(&out)
    );
    assert!(!backup.exists());

    let out = export(PASSPHRASE);
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read(&backup).unwrap();
    assert_eq!(&written[..8], b"MXCKEYS\0");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600,
        "only its owner may read it"
    );

    // Export never overwrites.
    let out = export("another long passphrase");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    assert_eq!(
        std::fs::read(&backup).unwrap(),
        written,
        "the file is unchanged"
    );

    // A new, empty database for the same processor.
    let target = TestDb::new("bkwrong_target").await;
    let target_config = dir.join("target.toml");
    std::fs::write(
        &target_config,
        processor_config(&name(0), free_port(), &target.url, &dir.join("target.kek")),
    )
    .unwrap();
    kek_file(dir, "target");
    let import = |passphrase: &str| {
        keys(
            dir,
            &[
                "import",
                "--config",
                target_config.to_str().unwrap(),
                "--in",
                backup.to_str().unwrap(),
            ],
            passphrase,
        )
    };
    let out = import("a long enough test passphrasE");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the passphrase does not open this backup"),
        "{}",
        text(&out)
    );
    let pool = target.pool().await;
    assert!(
        !has_schema(&pool).await,
        "a wrong passphrase leaves the database untouched"
    );

    // A truncated copy is refused before any passphrase is tried.
    let truncated = dir.join("truncated.backup");
    std::fs::write(&truncated, &written[..written.len() - 10]).unwrap();
    let out = keys(
        dir,
        &[
            "import",
            "--config",
            target_config.to_str().unwrap(),
            "--in",
            truncated.to_str().unwrap(),
        ],
        PASSPHRASE,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("truncated"), "{}", text(&out));
    assert!(!has_schema(&pool).await);

    // Another processor's configuration is refused.
    let other_config = dir.join("other.toml");
    std::fs::write(
        &other_config,
        processor_config(&name(1), free_port(), &target.url, &dir.join("target.kek")),
    )
    .unwrap();
    let out = keys(
        dir,
        &[
            "import",
            "--config",
            other_config.to_str().unwrap(),
            "--in",
            backup.to_str().unwrap(),
        ],
        PASSPHRASE,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("exported by processor \"validator-1\""),
        "{}",
        text(&out)
    );
    assert!(!has_schema(&pool).await);

    // The right passphrase restores; the same key is back.
    let out = import(PASSPHRASE);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(key_row(&pool, 0).await, key_row(&p1, 0).await);
    let identity = "SELECT public_key FROM identity";
    let a: Vec<u8> = sqlx::query_scalar(identity).fetch_one(&pool).await.unwrap();
    let b: Vec<u8> = sqlx::query_scalar(identity).fetch_one(&p1).await.unwrap();
    assert_eq!(a, b, "the identity is restored");

    // A database that already has keys is refused, with what to do.
    let out = import(PASSPHRASE);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("already holds 1 key(s)"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("empty database"), "{}", text(&out));
    assert_eq!(scalar_i64(&pool, "SELECT count(*) FROM keys").await, 1);
}
