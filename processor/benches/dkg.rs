//! DKG wall time through the coordinator-mock (n processors, each with its
//! own Postgres database, gRPC over loopback, every round persisted) beside
//! the in-process compute-only time for the same n (every party's rounds,
//! encryption and sealing, no I/O). t = floor(2n/3) + 1.
//!
//! `cargo bench -p processor --bench dkg [-- --sizes 3,7,15,31]`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coordinator_mock::coordinator::Coordinator;
use processor::keystore::Kek;
use processor::keystore::Keystore;
use processor::keystore::dkg::DkgParams;
use tokio_util::sync::CancellationToken;

#[path = "support/db.rs"]
mod db;
use db::{drop_db, fresh_db};

fn threshold(n: u16) -> u16 {
    2 * n / 3 + 1
}

/// Every party's three rounds in one process.
fn compute_only(n: u16) -> Duration {
    let t = threshold(n);
    let stores: Vec<Keystore> = (0..n)
        .map(|_| Keystore::in_memory(Kek::generate()))
        .collect();
    let participants: BTreeMap<u16, [u8; 32]> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u16 + 1, s.identity_public()))
        .collect();
    let params: Vec<DkgParams> = (1..=n)
        .map(|i| DkgParams {
            session: 0,
            attempt: 0,
            threshold: t,
            own_index: i,
            participants: participants.clone(),
        })
        .collect();
    let start = Instant::now();
    let r1: Vec<_> = stores
        .iter()
        .zip(&params)
        .map(|(s, p)| s.dkg_round1(p).unwrap())
        .collect();
    let all1: BTreeMap<u16, Vec<u8>> = r1
        .iter()
        .enumerate()
        .map(|(i, o)| (i as u16 + 1, o.package.clone()))
        .collect();
    let r2: Vec<_> = (0..n as usize)
        .map(|i| {
            stores[i]
                .dkg_round2(&params[i], &r1[i].sealed_secret, &all1)
                .unwrap()
        })
        .collect();
    for i in 0..n as usize {
        let me = i as u16 + 1;
        let to_me: BTreeMap<u16, Vec<u8>> = r2
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, o)| (j as u16 + 1, o.packages[&me].clone()))
            .collect();
        stores[i]
            .dkg_round3(&params[i], &r2[i].sealed_secret, &all1, &to_me)
            .unwrap();
    }
    start.elapsed()
}

async fn through_coordinator(n: u16) -> Duration {
    let t = threshold(n);
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let mut dbs = Vec::new();
    let mut endpoints = String::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let db = fresh_db(&format!("p{i}")).await;
        let kek = dir.path().join(format!("{i}.kek"));
        std::fs::write(&kek, Kek::generate().to_hex().as_bytes()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Small pools: 31 processors share one Postgres (max_connections 100).
        let config = processor::config::Config::from_toml(&format!(
            "node_id = \"v{i}\"\nlisten = \"127.0.0.1:{port}\"\ndatabase_url = \"{db}\"\nmax_db_connections = 2\n\
             [tls]\ninsecure = true\n[keystore]\nkek_file = \"{}\"\n[log]\nfilter = \"warn\"\n",
            kek.display()
        ))
        .unwrap();
        tasks.push(tokio::spawn(processor::run::run(config, shutdown.clone())));
        endpoints.push_str(&format!(
            "[[processors]]\nname = \"v{i}\"\nendpoint = \"http://127.0.0.1:{port}\"\n"
        ));
        dbs.push(db);
    }
    let cdb = fresh_db("c").await;
    let config = coordinator_mock::config::Config::from_toml(&format!(
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"{cdb}\"\nmax_db_connections = 3\n\
         [tls]\ninsecure = true\n[reconnect]\ninitial = \"20ms\"\nmax = \"200ms\"\n[link]\npoll_interval = \"50ms\"\n{endpoints}"
    ))
    .unwrap();
    let coordinator = Coordinator::start(&config, shutdown.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have: i64 = sqlx::query_scalar("SELECT count(*) FROM processor_identities")
            .fetch_one(&coordinator.pool)
            .await
            .unwrap();
        if have == i64::from(n) {
            break;
        }
        assert!(Instant::now() < deadline, "identities did not arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    let session = coordinator.start_keygen(u32::from(t), &[]).await.unwrap();
    loop {
        let s = coordinator_mock::keygen::status(&coordinator.pool, Some(session))
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_ne!(s.status, "failed", "{}", s.failure);
        if s.status == "confirmed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    shutdown.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    drop(coordinator);
    for db in &dbs {
        drop_db(db).await;
    }
    drop_db(&cdb).await;
    elapsed
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let _telemetry = processor::telemetry::init("error", false, "bench", "bench");
    let argv: Vec<String> = std::env::args().collect();
    let sizes: Vec<u16> = argv
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| argv.get(i + 1))
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![3, 7, 15, 31]);
    println!(
        "DKG wall time: through coordinator-mock (persisted, gRPC) vs compute-only (in process)"
    );
    println!(
        "{:>4} {:>4} {:>16} {:>16} {:>8}",
        "n", "t", "coordinated ms", "compute ms", "ratio"
    );
    for n in sizes {
        let compute = compute_only(n);
        let coordinated = through_coordinator(n).await;
        println!(
            "{:>4} {:>4} {:>16.1} {:>16.1} {:>7.1}x",
            n,
            threshold(n),
            coordinated.as_secs_f64() * 1e3,
            compute.as_secs_f64() * 1e3,
            coordinated.as_secs_f64() / compute.as_secs_f64()
        );
    }
}
