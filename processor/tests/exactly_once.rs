//! Exactly-once delivery in both directions across stream cuts, a processor
//! killed between commit and ack, and a coordinator-mock restart; one row and
//! one delivery per uid. Real Postgres, the real processor binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use coordinator_mock::config::Config as CoordinatorConfig;
use coordinator_mock::coordinator::Coordinator;
use prost::Message as _;
use proto::processor_v1::{CoordinatorMessage, LinkProbe, coordinator_message};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

fn coordinator_config(db_url: &str, processors: &[(&str, u16)]) -> CoordinatorConfig {
    let mut text = format!(
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"{db_url}\"\n\
         [link]\nheartbeat_interval = \"200ms\"\npeer_timeout = \"1500ms\"\npoll_interval = \"100ms\"\n\
         [reconnect]\ninitial = \"50ms\"\nmax = \"500ms\"\n[tls]\ninsecure = true\n"
    );
    for (name, port) in processors {
        text.push_str(&format!(
            "[[processors]]\nname = \"{name}\"\nendpoint = \"http://127.0.0.1:{port}\"\n"
        ));
    }
    CoordinatorConfig::from_toml(&text).expect("test coordinator config")
}

/// Checks both databases agree that every settlement block went through
/// exactly once each way. The processor also sent one identity announcement.
async fn assert_exactly_once(processor: &PgPool, coordinator: &PgPool, link: &str, blocks: i64) {
    let p = |sql: &'static str| scalar_i64(processor, sql);
    // Processor side: every block once, every inbound id once, no gaps.
    assert_eq!(p("SELECT count(*) FROM settlement_blocks").await, blocks);
    assert_eq!(
        p("SELECT count(DISTINCT number) FROM settlement_blocks").await,
        blocks
    );
    assert_eq!(
        p("SELECT COALESCE(max(number) + 1, 0) FROM settlement_blocks").await,
        blocks
    );
    assert_eq!(p("SELECT count(*) FROM inbox").await, blocks);
    assert_eq!(
        p("SELECT count(*) FROM quarantine").await,
        0,
        "nothing refused"
    );
    assert_eq!(p("SELECT last_handled_in FROM link_state").await, blocks);
    // One acknowledgement per block in its send log, all acknowledged.
    assert_eq!(
        p("SELECT count(*) FROM send_log WHERE kind = 'settlement_block_ack'").await,
        blocks
    );
    assert_eq!(p("SELECT count(*) FROM send_log").await, blocks + 1);
    assert_eq!(
        p("SELECT acked_out FROM link_state").await,
        blocks + 1,
        "all acknowledged"
    );
    // Coordinator side.
    let c = |sql: &str| {
        let sql = sql.replace("$LINK", &format!("'{link}'"));
        async move { scalar_i64(coordinator, &sql).await }
    };
    assert_eq!(
        c("SELECT count(*) FROM settlement_acks WHERE processor = $LINK").await,
        blocks
    );
    assert_eq!(
        c("SELECT count(*) FROM inbox WHERE link_id = $LINK AND kind = 'settlement_block_ack'")
            .await,
        blocks
    );
    assert_eq!(
        c("SELECT count(*) FROM inbox WHERE link_id = $LINK").await,
        blocks + 1
    );
    assert_eq!(
        c("SELECT count(*) FROM quarantine WHERE link_id = $LINK").await,
        0
    );
    assert_eq!(
        c("SELECT last_handled_in FROM link_state WHERE link_id = $LINK").await,
        blocks + 1
    );
    assert_eq!(
        c("SELECT acked_out FROM link_state WHERE link_id = $LINK").await,
        blocks
    );
}

/// Waits until both sides have everything handled and acknowledged.
async fn wait_all_acked(processor: &PgPool, coordinator: &PgPool, link: &str, blocks: i64) {
    let sql = format!("SELECT count(*) FROM settlement_acks WHERE processor = '{link}'");
    let acked_sql = format!("SELECT acked_out FROM link_state WHERE link_id = '{link}'");
    eventually(
        "every block acknowledged",
        Duration::from_secs(60),
        || async {
            let acks = scalar_i64(coordinator, &sql).await;
            let acked = scalar_i64(coordinator, &acked_sql).await;
            // The processor sends its identity, then one ack per block.
            let processor_acked = scalar_i64(processor, "SELECT acked_out FROM link_state").await;
            (acks == blocks && acked == blocks && processor_acked == blocks + 1).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_stream_cuts() {
    let pdb = TestDb::new("cut_p").await;
    let cdb = TestDb::new("cut_c").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _processor = spawn_processor("validator-1", dir.path(), port, &pdb.url, &[]);
    wait_port(port).await;
    let proxy = Proxy::start(port).await;

    let shutdown = CancellationToken::new();
    let coordinator = Coordinator::start(
        &coordinator_config(&cdb.url, &[("validator-1", proxy.port)]),
        shutdown.clone(),
    )
    .await
    .unwrap();

    // Blocks flow coordinator -> processor, acks flow back; cut the stream
    // every 40 blocks while both directions are busy.
    let total = 400;
    for i in 0..total {
        coordinator.emit_settlement_block().await.unwrap();
        if i % 40 == 39 {
            proxy.cut();
        }
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let cpool = coordinator.pool.clone();
    let ppool = pdb.pool().await;
    wait_all_acked(&ppool, &cpool, "validator-1", total).await;
    assert!(
        proxy.connections.load(Ordering::SeqCst) >= 5,
        "the stream was re-established after cuts ({} connections)",
        proxy.connections.load(Ordering::SeqCst)
    );
    shutdown.cancel();
    assert_exactly_once(&ppool, &cpool, "validator-1", total).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_sigkilled_between_commit_and_ack() {
    let pdb = TestDb::new("kill_p").await;
    let cdb = TestDb::new("kill_c").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The first batch commits, then the handler stops before its Ack leaves.
    let mut processor = spawn_processor(
        "validator-1",
        dir.path(),
        port,
        &pdb.url,
        &[("FAILPOINTS", "link-after-commit=return")],
    );
    wait_port(port).await;
    let shutdown = CancellationToken::new();
    let coordinator = Coordinator::start(
        &coordinator_config(&cdb.url, &[("validator-1", port)]),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let ppool = pdb.pool().await;
    let cpool = coordinator.pool.clone();

    coordinator.emit_settlement_block().await.unwrap();
    // Committed on the processor...
    eventually(
        "the processor commits block 0",
        Duration::from_secs(20),
        || async {
            (scalar_i64(&ppool, "SELECT last_handled_in FROM link_state").await == 1).then_some(())
        },
    )
    .await;
    // ...and not acknowledged to the coordinator.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        scalar_i64(
            &cpool,
            "SELECT acked_out FROM link_state WHERE link_id = 'validator-1'"
        )
        .await,
        0,
        "the failpoint holds the Ack back"
    );
    processor.kill9();

    // More work arrives while the processor is down.
    for _ in 0..49 {
        coordinator.emit_settlement_block().await.unwrap();
    }
    let _processor = spawn_processor("validator-1", dir.path(), port, &pdb.url, &[]);
    wait_all_acked(&ppool, &cpool, "validator-1", 50).await;
    shutdown.cancel();
    assert_exactly_once(&ppool, &cpool, "validator-1", 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_restarts_lose_and_repeat_nothing() {
    let pdb = TestDb::new("crs_p").await;
    let cdb = TestDb::new("crs_c").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin_port = free_port();
    let _processor = spawn_processor("validator-1", dir.path(), port, &pdb.url, &[]);
    wait_port(port).await;

    let config = |interval: Option<&str>| {
        let mut text = format!(
            "listen = \"127.0.0.1:{admin_port}\"\ndatabase_url = \"{}\"\n\
             [[processors]]\nname = \"validator-1\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
             [link]\nheartbeat_interval = \"200ms\"\npeer_timeout = \"1500ms\"\npoll_interval = \"100ms\"\n\
             [reconnect]\ninitial = \"50ms\"\nmax = \"500ms\"\n[tls]\ninsecure = true\n",
            cdb.url
        );
        if let Some(i) = interval {
            text.push_str(&format!("[settlement]\nblock_interval = \"{i}\"\n"));
        }
        text
    };
    let cpool = cdb.pool().await;
    // A busy coordinator, killed with SIGKILL twice while blocks and acks are
    // in flight.
    for round in 0..2 {
        let mut coordinator = spawn(
            &coordinator_bin(),
            "coordinator",
            dir.path(),
            &config(Some("5ms")),
            &[],
        );
        eventually("blocks produced", Duration::from_secs(30), || async {
            let n = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM settlement_blocks")
                .fetch_one(&cpool)
                .await
                .unwrap_or(0);
            (n >= 100 * (round + 1)).then_some(())
        })
        .await;
        coordinator.kill9();
    }
    // A quiet coordinator lets everything drain.
    let mut coordinator = spawn(
        &coordinator_bin(),
        "coordinator",
        dir.path(),
        &config(None),
        &[],
    );
    let blocks = scalar_i64(&cpool, "SELECT count(*) FROM settlement_blocks").await;
    assert!(blocks >= 200);
    let ppool = pdb.pool().await;
    wait_all_acked(&ppool, &cpool, "validator-1", blocks).await;
    coordinator.signal(nix::sys::signal::Signal::SIGTERM);
    let status = coordinator
        .wait_exit(Duration::from_secs(15))
        .expect("coordinator exits on SIGTERM");
    assert!(status.success(), "coordinator exit status {status:?}");
    assert_exactly_once(&ppool, &cpool, "validator-1", blocks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_uid_enqueued_twice_is_one_row_and_one_delivery() {
    let pdb = TestDb::new("uid_p").await;
    let cdb = TestDb::new("uid_c").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _processor = spawn_processor("validator-1", dir.path(), port, &pdb.url, &[]);
    wait_port(port).await;
    let shutdown = CancellationToken::new();
    let coordinator: Arc<Coordinator> = Coordinator::start(
        &coordinator_config(&cdb.url, &[("validator-1", port)]),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let peer = coordinator.peer("validator-1").unwrap();
    let message = |text: &str| processor::link::OutMessage {
        uid: "probe/the-same-meaning".into(),
        kind: "link_probe",
        payload: CoordinatorMessage {
            kind: Some(coordinator_message::Kind::LinkProbe(LinkProbe {
                payload: text.as_bytes().to_vec(),
            })),
        }
        .encode_to_vec(),
    };
    // Two separate transactions, as two retries of one step would be; the
    // second carries different bytes, which must not go out either.
    let mut tx = coordinator.pool.begin().await.unwrap();
    let first = processor::link::enqueue(&mut tx, "validator-1", &[message("first")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = coordinator.pool.begin().await.unwrap();
    let second = processor::link::enqueue(
        &mut tx,
        "validator-1",
        &[message("second"), message("third")],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    peer.link.outbox().wake();
    assert_eq!(first, vec![1]);
    assert!(
        second.is_empty(),
        "a known uid is not enqueued again: {second:?}"
    );
    assert_eq!(
        scalar_i64(
            &coordinator.pool,
            "SELECT count(*) FROM send_log WHERE uid = 'probe/the-same-meaning'"
        )
        .await,
        1
    );
    // Then a different message behind it, to know the first has been through.
    let mut tx = coordinator.pool.begin().await.unwrap();
    let mut later = message("later");
    later.uid = "probe/later".into();
    processor::link::enqueue(&mut tx, "validator-1", &[later])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    peer.link.outbox().wake();
    let mut acked = peer.link.acked();
    tokio::time::timeout(Duration::from_secs(20), acked.wait_for(|&a| a >= 2))
        .await
        .expect("acknowledged in time")
        .unwrap();
    let ppool = pdb.pool().await;
    assert_eq!(
        scalar_i64(
            &ppool,
            "SELECT count(*) FROM inbox WHERE uid = 'probe/the-same-meaning'"
        )
        .await,
        1,
        "delivered once"
    );
    let payload: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM inbox WHERE uid = 'probe/the-same-meaning'")
            .fetch_one(&ppool)
            .await
            .unwrap();
    let delivered = CoordinatorMessage::decode(payload.as_slice()).unwrap();
    assert_eq!(
        delivered.kind,
        Some(coordinator_message::Kind::LinkProbe(LinkProbe {
            payload: b"first".to_vec()
        }))
    );
    shutdown.cancel();
}
