//! Replays every saved fuzzing input (processor/fuzz/corpus/<target>/, and
//! processor/fuzz/regressions/<target>/ for inputs that once crashed)
//! through the same entry points the cargo-fuzz targets drive, on stable, in
//! every test run: a decoder change that panics on an input the fuzzer
//! already found fails here without a nightly toolchain.

use std::path::PathBuf;

use processor::fuzzing;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut found = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus directory is readable").path();
            let bytes = std::fs::read(&path).expect("corpus file is readable");
            found.push((path, bytes));
        }
    }
    // An empty corpus would make this test pass vacuously.
    assert!(
        found.len() >= 3,
        "processor/fuzz/corpus/{target} holds {} inputs; the saved corpus is missing",
        found.len()
    );
    found
}

fn replay(target: &str, run: impl Fn(&[u8])) {
    for (path, bytes) in inputs(target) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&bytes)));
        assert!(
            outcome.is_ok(),
            "{target}: {} panics (reproduce: cd processor && cargo +nightly fuzz run {target} {})",
            path.display(),
            path.display()
        );
    }
}

#[test]
fn link_frames_replay() {
    replay("link_frame", fuzzing::link_frame);
}

#[test]
fn blocks_bin_replay() {
    replay("blocks_bin", fuzzing::blocks_bin);
}

#[test]
fn plan_proposals_replay() {
    replay("plan_proposal", fuzzing::plan_proposal);
}

#[test]
fn packages_replay() {
    replay("packages", fuzzing::packages);
}

#[test]
fn handler_dispatch_replay() {
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("t_fuzz_{:016x}", rand::random::<u64>());
    let dispatch = fuzzing::Dispatch::open(&server, &name).expect("fuzz database opens");
    replay("handler_dispatch", |data| dispatch.run(data));
    drop(dispatch);
    runtime().block_on(drop_database(&server, &name));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime builds")
}

async fn drop_database(server: &str, name: &str) {
    let admin = sqlx::PgPool::connect(server)
        .await
        .expect("Postgres is reachable");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
}

/// The fixture's key really is generated and confirmed through the
/// handlers, so fuzzed messages meet a processor with a key (otherwise most
/// handlers would stop at "no key").
#[test]
fn dispatch_database_holds_a_confirmed_key() {
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("t_fuzzkey_{:016x}", rand::random::<u64>());
    drop(fuzzing::Dispatch::open(&server, &name).expect("fuzz database opens"));
    runtime().block_on(async {
        let url = format!(
            "{}/{name}",
            server.rsplit_once('/').expect("a database URL").0
        );
        let pool = sqlx::PgPool::connect(&url).await.expect("fuzz database");
        let status: String = sqlx::query_scalar("SELECT status FROM keys WHERE session = 1")
            .fetch_one(&pool)
            .await
            .expect("the key row exists");
        assert_eq!(status, "confirmed");
        pool.close().await;
        drop_database(&server, &name).await;
    });
}
