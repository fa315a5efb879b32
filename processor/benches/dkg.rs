//! Key generation at scale: n processors (t = floor(2n/3) + 1), each with
//! its own database, run a FROST DKG through the coordinator-mock (gRPC over
//! loopback, every round persisted with fsync on), then t of them make one
//! FROST Ed25519 batch signature with the keys they stored. Printed beside
//! the compute floor: the same DKG and signature with every party in this
//! process on one core, no I/O (all rounds, encryption and sealing).
//!
//! The processors' databases live in a Postgres cluster of the bench's own
//! (see `support/pg_cluster.rs`), sized for n: n processors' pools do not
//! fit a default server's 100 connections.
//!
//! `cargo bench -p processor --bench dkg [-- --sizes 3,7,15,31,67,100]`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use coordinator_mock::coordinator::Coordinator;
use ed25519_dalek::Verifier;
use processor::keystore::dkg::{DkgParams, GeneratedKey};
use processor::keystore::{Kek, Keystore, sign};
use tokio_util::sync::CancellationToken;

#[path = "support/pg_cluster.rs"]
mod pg_cluster;
use pg_cluster::PgCluster;

fn threshold(n: u16) -> u16 {
    2 * n / 3 + 1
}

/// What one signer brings to a batch signature: its keystore, the session
/// and its sealed key package.
struct Signer {
    index: u16,
    keystore: Keystore,
    sealed_key_package: Vec<u8>,
}

/// One FROST Ed25519 signature by `signers` (each preprocesses, then signs
/// the same message), aggregated and checked with a standard Ed25519
/// verifier against the group key.
fn batch_signature(
    session: u64,
    signers: &[Signer],
    public_key_package: &[u8],
    group_key: &[u8; 32],
) {
    let message = b"batch 0 of the bench: block hash and in-instructions";
    let attempt: sign::AttemptKey = (session, "batch".into(), vec![0], 0);
    let commitments: BTreeMap<u16, Vec<u8>> = signers
        .iter()
        .map(|s| {
            let c = s
                .keystore
                .preprocess(attempt.clone(), session, &s.sealed_key_package)
                .unwrap();
            (s.index, c)
        })
        .collect();
    let shares: BTreeMap<u16, Vec<u8>> = signers
        .iter()
        .map(|s| {
            let share = s
                .keystore
                .sign(
                    &attempt,
                    session,
                    &s.sealed_key_package,
                    &commitments,
                    message,
                )
                .unwrap()
                .expect("nonces were just made");
            (s.index, share)
        })
        .collect();
    let signature = sign::aggregate(public_key_package, &commitments, &shares, message).unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(group_key)
        .unwrap()
        .verify(message, &ed25519_dalek::Signature::from_bytes(&signature))
        .expect("a FROST Ed25519 signature verifies as Ed25519");
}

/// Every party's three rounds, then t of them sign, in one process on one
/// core: (key generation, signature).
fn compute_only(n: u16) -> (Duration, Duration) {
    let t = threshold(n);
    let stores: Vec<Keystore> = (0..n)
        .map(|_| Keystore::in_memory(Kek::generate()))
        .collect();
    let participants: BTreeMap<u16, [u8; 32]> = (1..=n)
        .zip(&stores)
        .map(|(i, s)| (i, s.identity_public()))
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
    let all1: BTreeMap<u16, Vec<u8>> = (1..=n)
        .zip(&r1)
        .map(|(i, o)| (i, o.package.clone()))
        .collect();
    let r2: Vec<_> = (0..usize::from(n))
        .map(|i| {
            stores[i]
                .dkg_round2(&params[i], &r1[i].sealed_secret, &all1)
                .unwrap()
        })
        .collect();
    let keys: Vec<GeneratedKey> = (0..usize::from(n))
        .map(|i| {
            let me = params[i].own_index;
            let to_me: BTreeMap<u16, Vec<u8>> = (1..=n)
                .zip(&r2)
                .filter(|(j, _)| *j != me)
                .map(|(j, o)| (j, o.packages[&me].clone()))
                .collect();
            stores[i]
                .dkg_round3(&params[i], &r2[i].sealed_secret, &all1, &to_me)
                .unwrap()
        })
        .collect();
    let keygen = start.elapsed();
    let signers: Vec<Signer> = (1..=t)
        .zip(stores.iter().zip(&keys))
        .map(|(index, (keystore, key))| Signer {
            index,
            keystore: keystore.clone(),
            sealed_key_package: key.sealed_key_package.clone(),
        })
        .collect();
    let start = Instant::now();
    batch_signature(0, &signers, &keys[0].public_key_package, &keys[0].group_key);
    (keygen, start.elapsed())
}

/// A processor's stored key, as its keygen wrote it.
#[derive(sqlx::FromRow)]
struct StoredKey {
    sealed_key_package: Option<Vec<u8>>,
    public_key_package: Option<Vec<u8>>,
    group_key: Option<Vec<u8>>,
}

/// Connections each processor's pool may open: the link's inbound handler
/// and outbound pump, with one to spare for the admin API.
const PROCESSOR_POOL: u32 = 3;
/// The coordinator's pool: its n link handlers serialize on the key
/// session's row lock, so more connections would only wait.
const COORDINATOR_POOL: u32 = 16;

/// Key generation through the coordinator-mock, then the batch signature
/// by t processors' stored keys: (key generation, signature).
async fn through_coordinator(n: u16) -> (Duration, Duration) {
    let t = threshold(n);
    // Every pool, the coordinator's, the bench's own connections and
    // Postgres's reserved ones, with room to spare.
    // Each processor also holds one connection outside its pool: the
    // session of its instance lock.
    let cluster = PgCluster::start(u32::from(n) * (PROCESSOR_POOL + 1) + COORDINATOR_POOL + 40);
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let mut endpoints = String::new();
    let mut tasks = Vec::new();
    let mut processors: Vec<(String, PathBuf)> = Vec::new();
    for i in 0..n {
        let db = cluster.fresh_db(&format!("p{i}")).await;
        let kek = dir.path().join(format!("{i}.kek"));
        std::fs::write(&kek, Kek::generate().to_hex().as_bytes()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = processor::config::Config::from_toml(&format!(
            "node_id = \"v{i}\"\nlisten = \"127.0.0.1:{port}\"\ndatabase_url = \"{db}\"\n\
             max_db_connections = {PROCESSOR_POOL}\n\
             [tls]\ninsecure = true\n[keystore]\nkek_file = \"{}\"\n[log]\nfilter = \"warn\"\n",
            kek.display()
        ))
        .unwrap();
        tasks.push(tokio::spawn(processor::run::run(config, shutdown.clone())));
        endpoints.push_str(&format!(
            "[[processors]]\nname = \"v{i}\"\nendpoint = \"http://127.0.0.1:{port}\"\n"
        ));
        processors.push((db, kek));
    }
    let cdb = cluster.fresh_db("coordinator").await;
    // A round waits for the slowest of n processors, all sharing this
    // machine's cores: at n = 100 that is far beyond the 60 s default.
    let round_timeout = 60 + u64::from(n) * 3;
    let config = coordinator_mock::config::Config::from_toml(&format!(
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"{cdb}\"\nmax_db_connections = {COORDINATOR_POOL}\n\
         [tls]\ninsecure = true\n[reconnect]\ninitial = \"20ms\"\nmax = \"200ms\"\n[link]\npoll_interval = \"50ms\"\n\
         [keygen]\nround_timeout = \"{round_timeout}s\"\n{endpoints}"
    ))
    .unwrap();
    let coordinator = Coordinator::start(&config, shutdown.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
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
    let keygen = start.elapsed();

    // The batch signature: the first t processors' keystores, opened from
    // their databases with their KEKs, sign with the key they stored.
    let mut signers = Vec::new();
    let mut public = None;
    for (index, (db, kek)) in (1..=t).zip(&processors) {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(db)
            .await
            .unwrap();
        let keystore = Keystore::open(&pool, kek).await.unwrap();
        let stored: StoredKey = sqlx::query_as(
            "SELECT sealed_key_package, public_key_package, group_key FROM keys WHERE session = $1",
        )
        .bind(i64::try_from(session).unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        let group_key: [u8; 32] = stored.group_key.unwrap().try_into().unwrap();
        public.get_or_insert((stored.public_key_package.unwrap(), group_key));
        signers.push(Signer {
            index,
            keystore,
            sealed_key_package: stored.sealed_key_package.unwrap(),
        });
    }
    let (public_key_package, group_key) = public.unwrap();
    let start = Instant::now();
    batch_signature(session, &signers, &public_key_package, &group_key);
    let signature = start.elapsed();

    shutdown.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    drop(coordinator);
    drop(cluster);
    (keygen, signature)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "DKG + one batch signature: through coordinator-mock (own Postgres cluster, fsync on, gRPC) \
         vs the compute floor (every party in one process, one core, no I/O); {cores} cores"
    );
    println!(
        "{:>4} {:>4} {:>11} {:>9} {:>11} {:>11} {:>9} {:>11} {:>7}",
        "n", "t", "keygen ms", "sign ms", "total ms", "floor ms", "(sign)", "floor/core", "ratio"
    );
    for n in sizes {
        let (compute_keygen, compute_sign) = compute_only(n);
        let (keygen, signature) = through_coordinator(n).await;
        let total = keygen + signature;
        let floor = compute_keygen + compute_sign;
        println!(
            "{:>4} {:>4} {:>11.1} {:>9.1} {:>11.1} {:>11.1} {:>9.1} {:>11.1} {:>6.2}x",
            n,
            threshold(n),
            ms(keygen),
            ms(signature),
            ms(total),
            ms(floor),
            ms(compute_sign),
            ms(floor) / cores as f64,
            total.as_secs_f64() / floor.as_secs_f64()
        );
    }
}
