//! Link throughput: acknowledged messages per second through the real link,
//! a coordinator-mock sending to a processor over loopback gRPC, both sides
//! persisting to the real Postgres (fsync as the server is configured).
//!
//! `cargo bench -p processor --bench link [-- --messages N --payload BYTES --batch N --in-flight K --skip-nats]`
//! Defaults: 100,000 messages of 256 bytes, enqueued 1,000 per transaction.
//! In the same run, the peer: NATS JetStream (file storage, duplicate
//! window, a unique `Nats-Msg-Id` per message, K = 1,024 unacknowledged at
//! most), once with its default sync (acknowledged before fsync) and once
//! with `sync_interval: always` (fsync before the acknowledgement, as our
//! commits); see `support/nats.rs`.
//! Latency is per message: from the commit that enqueued it to the commit on
//! the sender that recorded its acknowledgement (so it includes the
//! receiver's commit and the ack's round trip).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use coordinator_mock::coordinator::Coordinator;
use prost::Message as _;
use proto::processor_v1::{CoordinatorMessage, LinkProbe, coordinator_message};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

#[path = "support/db.rs"]
mod db;
#[path = "support/nats.rs"]
mod nats;
use db::{drop_db, fresh_db};

struct Args {
    messages: u64,
    payload: usize,
    batch: u64,
    in_flight: u64,
    skip_nats: bool,
}

fn args() -> Args {
    let mut a = Args {
        messages: 100_000,
        payload: 256,
        batch: 1_000,
        in_flight: 1_024,
        skip_nats: false,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (argv[i].as_str(), value) {
            ("--messages", Some(v)) => a.messages = v,
            ("--payload", Some(v)) => a.payload = usize::try_from(v).expect("payload size"),
            ("--batch", Some(v)) => a.batch = v.max(1),
            ("--in-flight", Some(v)) => a.in_flight = v.max(1),
            ("--skip-nats", _) => {
                a.skip_nats = true;
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = args();
    let pdb = fresh_db("p").await;
    let cdb = fresh_db("c").await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let shutdown = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    std::fs::write(
        &kek,
        processor::keystore::Kek::generate().to_hex().as_bytes(),
    )
    .unwrap();
    let pconfig = processor::config::Config::from_toml(&format!(
        "node_id = \"validator-1\"\nlisten = \"127.0.0.1:{port}\"\ndatabase_url = \"{pdb}\"\n\
         [tls]\ninsecure = true\n[keystore]\nkek_file = \"{}\"\n[log]\nfilter = \"warn\"\n",
        kek.display()
    ))
    .unwrap();
    let _telemetry = processor::telemetry::init("warn", false, "bench", "bench");
    let processor = tokio::spawn(processor::run::run(pconfig, shutdown.clone()));
    let cconfig = coordinator_mock::config::Config::from_toml(&format!(
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"{cdb}\"\n\
         [[processors]]\nname = \"validator-1\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
         [reconnect]\ninitial = \"20ms\"\nmax = \"200ms\"\n[tls]\ninsecure = true\n"
    ))
    .unwrap();
    let coordinator = Coordinator::start(&cconfig, shutdown.clone())
        .await
        .unwrap();
    let peer = coordinator.peer("validator-1").unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !peer.link.live_status().connected {
        assert!(Instant::now() < deadline, "the link did not come up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let payload = vec![0xA5_u8; args.payload];
    let encoded = CoordinatorMessage {
        kind: Some(coordinator_message::Kind::LinkProbe(LinkProbe { payload })),
    }
    .encode_to_vec();
    println!(
        "link bench: {} messages, {}-byte probe payload ({} bytes encoded), {} per enqueue transaction",
        args.messages,
        args.payload,
        encoded.len(),
        args.batch
    );

    // Acknowledgements, as the sender records them.
    let mut acked_rx = peer.link.acked();
    let total = args.messages;
    let acks = tokio::spawn(async move {
        let mut points: Vec<(u64, Instant)> = Vec::new();
        loop {
            if acked_rx.changed().await.is_err() {
                break;
            }
            let id = *acked_rx.borrow_and_update();
            points.push((id, Instant::now()));
            if id >= total {
                break;
            }
        }
        points
    });

    let start = Instant::now();
    let mut enqueued: Vec<(u64, Instant)> = Vec::new();
    let mut next = 0_u64;
    while next < args.messages {
        let n = args.batch.min(args.messages - next);
        let messages: Vec<processor::link::OutMessage> = (next..next + n)
            .map(|i| processor::link::OutMessage {
                uid: format!("bench/{i}"),
                kind: "link_probe",
                payload: encoded.clone(),
            })
            .collect();
        let mut tx = coordinator.pool.begin().await.unwrap();
        let ids = processor::link::enqueue(&mut tx, "validator-1", &messages)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        peer.link.outbox().wake();
        enqueued.push((*ids.last().unwrap(), Instant::now()));
        next += n;
    }
    let enqueue_done = start.elapsed();
    let points = tokio::time::timeout(Duration::from_secs(600), acks)
        .await
        .expect("all acknowledged within 10 minutes")
        .unwrap();
    let elapsed = start.elapsed();

    // Per-message latency: enqueue commit of its batch -> first recorded ack
    // covering it.
    let mut latencies = Vec::with_capacity(usize::try_from(args.messages).unwrap_or(0));
    let mut batch_start = 1_u64;
    let mut p = 0;
    for (last_id, committed) in &enqueued {
        for id in batch_start..=*last_id {
            while points[p].0 < id {
                p += 1;
            }
            latencies.push(points[p].1.saturating_duration_since(*committed));
        }
        batch_start = last_id + 1;
    }
    latencies.sort_unstable();

    // Durability check: the receiver holds every message.
    let mut pconn = PgConnection::connect(&pdb).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&mut pconn)
        .await
        .unwrap();
    assert_eq!(
        u64::try_from(stored).unwrap(),
        args.messages,
        "every message persisted once"
    );
    drop(pconn);

    let rate = args.messages as f64 / elapsed.as_secs_f64();
    println!(
        "enqueue (sender commits): {:.2}s",
        enqueue_done.as_secs_f64()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "ours: {} messages in {:.2}s = {:.0} msgs/s, ack latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.messages,
        elapsed.as_secs_f64(),
        rate,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), processor).await;
    drop(peer);
    drop(coordinator);
    drop_db(&pdb).await;
    drop_db(&cdb).await;

    // The floor of this design on this Postgres: the link's own storage
    // work alone, both ends at once, nothing else. The sender's enqueue
    // transactions (as above) on one fresh database while the receiver's
    // journal transactions (inbox rows and the inbound watermark, the same
    // batch size) run on another; no gRPC, no engine, no acknowledgements.
    let storage = storage_floor(&args, &encoded).await;
    println!(
        "the link's storage alone (both ends' commits, no network, no engine): {:.0} msgs/s; \
         ours reaches {:.0}% of it",
        storage,
        100.0 * rate / storage
    );

    if args.skip_nats {
        return;
    }
    // The peer, on the same machine, in the same run, after ours has
    // stopped (nothing of ours competes for the disk or the cores).
    let k = usize::try_from(args.in_flight).unwrap_or(usize::MAX);
    let body = vec![0xA5_u8; encoded.len()];
    let mut rows = vec![
        ("ours (fsync per commit)".to_owned(), rate),
        (
            "the link's storage alone (floor of this design)".to_owned(),
            storage,
        ),
    ];
    for (label, bin, always) in [
        (
            "JetStream, sync_interval: always",
            nats::pypi_server(),
            true,
        ),
        ("JetStream, default sync", nats::debian_server(), false),
    ] {
        let Some(bin) = bin else { continue };
        let server = nats::Server::start(&bin, always).await;
        let f = nats::run(&server.url, args.messages, &body, k).await;
        println!(
            "{label} (K={k}): {:.0} msgs/s, ack latency p50 {:.1} ms, p99 {:.1} ms",
            f.rate,
            ms(percentile(&f.latencies, 0.50)),
            ms(percentile(&f.latencies, 0.99)),
        );
        rows.push((format!("{label} (K={k})"), f.rate));
    }
    println!(
        "\n| link, {}-byte messages | msgs/s | ours / it |",
        encoded.len()
    );
    println!("|---|---:|---:|");
    for (label, r) in &rows {
        println!("| {label} | {r:.0} | {:.2}x |", rate / r);
    }
}

/// Messages per second the link's storage sustains with nothing else
/// running: `link::db::enqueue` on one database and `link::db::record_inbound`
/// on another, concurrently, `--batch` messages per transaction on each.
async fn storage_floor(args: &Args, encoded: &[u8]) -> f64 {
    let (sdb, rdb) = (fresh_db("fs").await, fresh_db("fr").await);
    let open = |url: String| async move {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap();
        service::db::migrate(&pool, &url, &[&link::MIGRATOR])
            .await
            .unwrap();
        link::db::ensure_link(&pool, "peer", 1 << 20).await.unwrap();
        pool
    };
    let (sender, receiver) = (open(sdb.clone()).await, open(rdb.clone()).await);
    let (messages, batch) = (args.messages, args.batch);
    let start = Instant::now();
    let send = {
        let encoded = encoded.to_vec();
        tokio::spawn(async move {
            let mut next = 0_u64;
            while next < messages {
                let n = batch.min(messages - next);
                let out: Vec<link::OutMessage> = (next..next + n)
                    .map(|i| link::OutMessage {
                        uid: format!("bench/{i}"),
                        kind: "link_probe",
                        payload: encoded.clone(),
                    })
                    .collect();
                let mut tx = sender.begin().await.unwrap();
                link::db::enqueue(&mut tx, "peer", &out).await.unwrap();
                tx.commit().await.unwrap();
                next += n;
            }
        })
    };
    let receive = {
        let encoded = encoded.to_vec();
        tokio::spawn(async move {
            let uids: Vec<String> = (0..messages).map(|i| format!("bench/{i}")).collect();
            let mut next = 0_u64;
            while next < messages {
                let n = batch.min(messages - next);
                let rows: Vec<link::db::InboxRow<'_>> = (next..next + n)
                    .map(|i| link::db::InboxRow {
                        id: i + 1,
                        uid: &uids[usize::try_from(i).unwrap()],
                        kind: "link_probe",
                        payload: &encoded,
                    })
                    .collect();
                let mut tx = receiver.begin().await.unwrap();
                link::db::record_inbound(&mut tx, "peer", &rows, &[], next, next + n, false)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                next += n;
            }
        })
    };
    send.await.unwrap();
    receive.await.unwrap();
    let elapsed = start.elapsed();
    drop_db(&sdb).await;
    drop_db(&rdb).await;
    messages as f64 / elapsed.as_secs_f64()
}
