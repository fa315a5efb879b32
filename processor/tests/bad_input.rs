//! Bad input on the link: malformed payloads, unknown kinds, wrong sequence
//! ids, garbage frames, missing Hello, a silent or frozen peer. Each gets a
//! clear error, nothing panics, nothing is lost. Also: one processor per
//! database, and SIGTERM exits cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::raw::RawCodec;
use common::*;
use prost::Message as _;
use proto::processor_v1::{
    Ack, CoordinatorFrame, CoordinatorMessage, Data, Hello, KeyGenStart, LinkErrorCode, LinkProbe,
    Ping, ProcessorFrame, coordinator_frame, coordinator_message, processor_frame,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::uri::PathAndQuery;

/// A hand-driven coordinator end of the link.
struct RawLink {
    tx: mpsc::Sender<Vec<u8>>,
    rx: tonic::Streaming<Vec<u8>>,
}

impl RawLink {
    async fn open(port: u16) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to the processor");
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let (tx, rx) = mpsc::channel(64);
        let response = grpc
            .streaming(
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                PathAndQuery::from_static("/processor.v1.Processor/Connect"),
                RawCodec,
            )
            .await
            .expect("Connect accepted");
        Self {
            tx,
            rx: response.into_inner(),
        }
    }

    async fn send(&self, frame: coordinator_frame::Frame) {
        self.send_raw(CoordinatorFrame { frame: Some(frame) }.encode_to_vec())
            .await;
    }

    async fn send_raw(&self, bytes: Vec<u8>) {
        self.tx.send(bytes).await.expect("stream open");
    }

    async fn hello(&self, last_handled_id: u64) {
        self.send(coordinator_frame::Frame::Hello(Hello {
            node_id: "test-coordinator".into(),
            contract_version: proto::CONTRACT_VERSION,
            last_handled_id,
            max_frame_bytes: 0,
        }))
        .await;
    }

    async fn data(&self, id: u64, payload: Vec<u8>) {
        self.send(coordinator_frame::Frame::Data(Data {
            id,
            payload,
            uid: format!("test/{id}"),
            traceparent: String::new(),
            withheld_bytes: 0,
        }))
        .await;
    }

    /// The next frame other than Ping/Pong; `None` when the stream ended.
    async fn next(&mut self) -> Option<processor_frame::Frame> {
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
                .await
                .expect("a frame within 10s");
            let bytes = match item {
                Ok(Some(bytes)) => bytes,
                Ok(None) | Err(_) => return None,
            };
            let frame = ProcessorFrame::decode(bytes.as_slice())
                .expect("the processor sends valid frames")
                .frame
                .expect("frames carry a kind");
            match frame {
                // Liveness, and the processor's own messages (its identity
                // announcement), are not what these tests look at.
                processor_frame::Frame::Ping(_)
                | processor_frame::Frame::Pong(_)
                | processor_frame::Frame::Data(_) => continue,
                other => return Some(other),
            }
        }
    }

    async fn expect_ack(&mut self, id: u64) {
        match self.next().await {
            Some(processor_frame::Frame::Ack(Ack { id: got })) => assert_eq!(got, id),
            other => panic!("expected Ack {id}, got {other:?}"),
        }
    }

    async fn expect_error(&mut self, code: LinkErrorCode) -> proto::processor_v1::LinkError {
        match self.next().await {
            Some(processor_frame::Frame::Error(e)) => {
                assert_eq!(e.code(), code, "error frame: {e:?}");
                assert!(!e.detail.is_empty(), "errors explain themselves");
                e
            }
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }
}

fn probe(text: &str) -> Vec<u8> {
    CoordinatorMessage {
        kind: Some(coordinator_message::Kind::LinkProbe(LinkProbe {
            payload: text.as_bytes().to_vec(),
        })),
    }
    .encode_to_vec()
}

async fn start(tag: &str) -> (TestDb, tempfile::TempDir, Proc, u16) {
    let db = TestDb::new(tag).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let processor = spawn_processor("validator-1", dir.path(), port, &db.url, &[]);
    wait_port(port).await;
    (db, dir, processor, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_frames_get_clear_errors_and_lose_nothing() {
    let (db, _dir, mut processor, port) = start("bad").await;
    let mut link = RawLink::open(port).await;
    link.hello(0).await;
    match link.next().await {
        Some(processor_frame::Frame::Hello(h)) => {
            assert_eq!(h.node_id, "validator-1");
            assert_eq!(h.last_handled_id, 0);
        }
        other => panic!("expected Hello, got {other:?}"),
    }

    // 1: not a protobuf message at all.
    let garbage = vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x01];
    link.data(1, garbage.clone()).await;
    let e = link.expect_error(LinkErrorCode::MalformedPayload).await;
    assert_eq!(e.id, 1);
    link.expect_ack(1).await;

    // 2: a valid message of a kind from a newer contract (field 999).
    let mut unknown = Vec::new();
    prost::encoding::bytes::encode(999, &b"from the future".to_vec(), &mut unknown);
    link.data(2, unknown.clone()).await;
    let e = link.expect_error(LinkErrorCode::UnknownMessage).await;
    assert_eq!(e.id, 2);
    link.expect_ack(2).await;

    // 5 when 3 is due: out of sequence, not handled, told where to resume.
    link.data(5, probe("too early")).await;
    let e = link.expect_error(LinkErrorCode::OutOfSequence).await;
    assert_eq!((e.id, e.expected_id), (5, 3));

    // 3: fine.
    link.data(3, probe("three")).await;
    link.expect_ack(3).await;

    // 2 again: acknowledged again, not handled again.
    link.data(2, probe("a replay with other bytes")).await;
    link.expect_ack(3).await;

    // 4: a known kind this version refuses: quarantined with the reason.
    let keygen = CoordinatorMessage {
        kind: Some(coordinator_message::Kind::KeyGenStart(KeyGenStart {
            session: 0,
            threshold: 2,
            own_index: 1,
            participants: vec![],
            confirmations: 3,
            window_blocks: 4,
        })),
    }
    .encode_to_vec();
    link.data(4, keygen.clone()).await;
    let e = link.expect_error(LinkErrorCode::Rejected).await;
    assert!(e.detail.contains("key_gen_start"), "{}", e.detail);
    link.expect_ack(4).await;

    // The stream survived all of it.
    link.data(5, probe("five")).await;
    link.expect_ack(5).await;

    // Nothing lost: every id is either handled or quarantined with its bytes.
    let pool = db.pool().await;
    let inbox: Vec<(i64, String)> = sqlx::query_as("SELECT id, kind FROM inbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        inbox,
        vec![(3, "link_probe".into()), (5, "link_probe".into())]
    );
    let quarantine: Vec<(i64, String, Vec<u8>)> =
        sqlx::query_as("SELECT id, code, payload FROM quarantine ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        quarantine,
        vec![
            (1, "LINK_ERROR_CODE_MALFORMED_PAYLOAD".into(), garbage),
            (2, "LINK_ERROR_CODE_UNKNOWN_MESSAGE".into(), unknown),
            (4, "LINK_ERROR_CODE_REJECTED".into(), keygen),
        ]
    );
    let inbox_three: Vec<u8> = sqlx::query_scalar("SELECT payload FROM inbox WHERE id = 3")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        inbox_three,
        probe("three"),
        "the replay of 2 changed nothing"
    );
    assert_eq!(
        scalar_i64(&pool, "SELECT last_handled_in FROM link_state").await,
        5
    );
    assert!(
        processor.child.try_wait().unwrap().is_none(),
        "the processor is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_close_only_that_stream() {
    let (db, _dir, mut processor, port) = start("garbage").await;

    // Data before Hello.
    let mut link = RawLink::open(port).await;
    link.data(1, probe("no hello")).await;
    let e = link.expect_error(LinkErrorCode::ProtocolViolation).await;
    assert!(e.detail.contains("Hello"), "{}", e.detail);
    assert!(link.next().await.is_none(), "the stream is closed");

    // A frame that is not a CoordinatorFrame at all, mid-stream.
    let mut link = RawLink::open(port).await;
    link.hello(0).await;
    assert!(matches!(
        link.next().await,
        Some(processor_frame::Frame::Hello(_))
    ));
    link.data(1, probe("one")).await;
    link.expect_ack(1).await;
    link.send_raw(vec![0x0a, 0xff, 0xff, 0xff]).await;
    let e = link.expect_error(LinkErrorCode::ProtocolViolation).await;
    assert!(e.detail.contains("unreadable frame"), "{}", e.detail);
    assert!(link.next().await.is_none(), "the stream is closed");

    // A contract version this processor does not speak.
    let mut link = RawLink::open(port).await;
    link.send(coordinator_frame::Frame::Hello(Hello {
        node_id: "future".into(),
        contract_version: 2,
        last_handled_id: 0,
        max_frame_bytes: 0,
    }))
    .await;
    link.expect_error(LinkErrorCode::UnsupportedVersion).await;

    // A peer claiming to have handled messages never sent.
    let mut link = RawLink::open(port).await;
    link.hello(7).await;
    let e = link.expect_error(LinkErrorCode::StateMismatch).await;
    assert!(e.detail.contains("only ever sent up to 1"), "{}", e.detail);

    // The processor lives on and resumes where it was.
    let mut link = RawLink::open(port).await;
    link.hello(0).await;
    match link.next().await {
        Some(processor_frame::Frame::Hello(h)) => assert_eq!(h.last_handled_id, 1),
        other => panic!("expected Hello, got {other:?}"),
    }
    link.data(2, probe("two")).await;
    link.expect_ack(2).await;
    assert!(
        processor.child.try_wait().unwrap().is_none(),
        "the processor is still running"
    );
    let pool = db.pool().await;
    assert_eq!(scalar_i64(&pool, "SELECT count(*) FROM inbox").await, 2);
    assert!(!processor.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_dropped_within_the_peer_timeout() {
    let (_db, _dir, _processor, port) = start("silent").await;
    let mut link = RawLink::open(port).await;
    link.hello(0).await;
    assert!(matches!(
        link.next().await,
        Some(processor_frame::Frame::Hello(_))
    ));
    // Say nothing more; the processor pings and gives up after 1.5s.
    let started = Instant::now();
    let end = link.next().await;
    let waited = started.elapsed();
    assert!(end.is_none(), "expected the stream to end, got {end:?}");
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(4),
        "dropped after {waited:?}, configured peer_timeout is 1.5s"
    );

    // A peer that answers pings keeps the stream.
    let mut link = RawLink::open(port).await;
    link.hello(0).await;
    assert!(matches!(
        link.next().await,
        Some(processor_frame::Frame::Hello(_))
    ));
    for i in 0..15 {
        link.send(coordinator_frame::Frame::Ping(Ping { nonce: i }))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    link.data(1, probe("still here")).await;
    link.expect_ack(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_notices_a_frozen_processor_and_recovers() {
    let (_db, _dir, processor, port) = start("frozen").await;
    let cdb = TestDb::new("frozen_c").await;
    let config = coordinator_mock::config::Config::from_toml(&format!(
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"{}\"\n\
         [[processors]]\nname = \"validator-1\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
         [link]\nheartbeat_interval = \"200ms\"\npeer_timeout = \"1s\"\n\
         [reconnect]\ninitial = \"50ms\"\nmax = \"300ms\"\nconnect_timeout = \"500ms\"\n[tls]\ninsecure = true\n",
        cdb.url
    ))
    .unwrap();
    let shutdown = CancellationToken::new();
    let coordinator = coordinator_mock::coordinator::Coordinator::start(&config, shutdown.clone())
        .await
        .unwrap();
    let peer = coordinator.peer("validator-1").unwrap().clone();
    eventually("link up", Duration::from_secs(10), || async {
        peer.link.live_status().connected.then_some(())
    })
    .await;

    processor.signal(nix::sys::signal::Signal::SIGSTOP);
    let frozen_at = Instant::now();
    eventually(
        "the coordinator notices",
        Duration::from_secs(5),
        || async { (!peer.link.live_status().connected).then_some(()) },
    )
    .await;
    let noticed = frozen_at.elapsed();
    assert!(
        noticed < Duration::from_secs(3),
        "noticed after {noticed:?}"
    );
    // Work queued meanwhile is delivered once the processor thaws.
    coordinator.emit_settlement_block().await.unwrap();
    processor.signal(nix::sys::signal::Signal::SIGCONT);
    let mut acked = peer.link.acked();
    tokio::time::timeout(Duration::from_secs(15), acked.wait_for(|&a| a >= 1))
        .await
        .expect("the settlement block is acknowledged after the thaw")
        .unwrap();
    // ...and its acknowledgement comes back.
    let pool = coordinator.pool.clone();
    eventually(
        "the processor's SettlementBlockAck",
        Duration::from_secs(15),
        || async {
            (scalar_i64(&pool, "SELECT count(*) FROM settlement_acks").await == 1).then_some(())
        },
    )
    .await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_processor_on_the_same_database_refuses_to_start() {
    let (db, dir, mut first, port) = start("second").await;
    let mut second = spawn_processor("validator-1b", dir.path(), free_port(), &db.url, &[]);
    let status = second
        .wait_exit(Duration::from_secs(20))
        .expect("the second one exits");
    assert!(!status.success());
    let log = second.log_text();
    assert!(
        log.contains("another processor is already running on database"),
        "unclear refusal: {log}"
    );
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the first keeps running"
    );
    // And the first still serves.
    let mut link = RawLink::open(port).await;
    link.hello(0).await;
    assert!(matches!(
        link.next().await,
        Some(processor_frame::Frame::Hello(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let (db, _dir, mut processor, port) = start("term").await;
    let mut link = RawLink::open(port).await;
    link.hello(0).await;
    assert!(matches!(
        link.next().await,
        Some(processor_frame::Frame::Hello(_))
    ));
    for id in 1..=200 {
        link.data(id, probe("work")).await;
    }
    processor.signal(nix::sys::signal::Signal::SIGTERM);
    let status = processor
        .wait_exit(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // Whatever was handled is complete: watermark, journal and effects agree.
    let pool = db.pool().await;
    let handled = scalar_i64(&pool, "SELECT last_handled_in FROM link_state").await;
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM inbox").await,
        handled
    );
    let log = processor.log_text();
    assert!(
        log.contains("SIGTERM received") && log.contains("stopped"),
        "{log}"
    );
    // The peer was told why the stream closed, or saw it end.
    let mut told = false;
    while let Some(frame) = link.next().await {
        if let processor_frame::Frame::Error(e) = frame {
            told |= e.code() == LinkErrorCode::ShuttingDown;
        }
    }
    assert!(
        told,
        "the coordinator is told the processor is shutting down"
    );
}
