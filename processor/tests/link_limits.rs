//! Size limits and local faults on the exactly-once link: an oversized
//! message cannot wedge a link, an oversized payload is refused at enqueue,
//! settlement blocks carry a bounded number of burns, a local fault is
//! retried (never acknowledged without its effect), and a panicking handler
//! is quarantined after a bounded number of tries. Real Postgres, the real
//! processor binary, the real coordinator-mock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::raw::RawCodec;
use common::*;
use coordinator_mock::config::Config as CoordinatorConfig;
use coordinator_mock::coordinator::Coordinator;
use prost::Message as _;
use proto::processor_v1::processor_admin_client::ProcessorAdminClient;
use proto::processor_v1::{
    Ack, CoordinatorFrame, CoordinatorMessage, Data, GetStatusRequest, Hello, KeyGenRound1Packages,
    KeyGenStart, LinkErrorCode, LinkProbe, ListRequest, Participant, ProcessorFrame,
    ProcessorMessage, SettlementBlock, coordinator_frame, coordinator_message, processor_frame,
    processor_message,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::codegen::http::uri::PathAndQuery;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// The processor's default frame limit: 1 MiB of payload plus framing.
const DEFAULT_FRAME_LIMIT: usize = 1024 * 1024 + 64 * 1024;

/// A hand-driven coordinator end of the link.
struct RawLink {
    tx: mpsc::Sender<Vec<u8>>,
    rx: tonic::Streaming<Vec<u8>>,
    /// Data frames the processor sent, by id.
    received: Vec<Data>,
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
            received: Vec::new(),
        }
    }

    async fn send(&self, frame: coordinator_frame::Frame) {
        self.tx
            .send(CoordinatorFrame { frame: Some(frame) }.encode_to_vec())
            .await
            .expect("stream open");
    }

    /// Sends our Hello and returns the processor's.
    async fn hello(&mut self, last_handled_id: u64) -> Hello {
        self.send(coordinator_frame::Frame::Hello(Hello {
            node_id: "test-coordinator".into(),
            contract_version: proto::CONTRACT_VERSION,
            last_handled_id,
            max_frame_bytes: 0,
        }))
        .await;
        match self.next().await {
            Some(processor_frame::Frame::Hello(h)) => h,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    async fn data(&self, id: u64, payload: Vec<u8>) {
        self.send(coordinator_frame::Frame::Data(data(id, payload)))
            .await;
    }

    /// The next frame other than Ping/Pong/Data within `wait`; `Err` on
    /// timeout, `Ok(None)` when the stream ended.
    async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<processor_frame::Frame>, tokio::time::error::Elapsed> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let item = tokio::time::timeout_at(deadline, self.rx.message()).await?;
            let bytes = match item {
                Ok(Some(bytes)) => bytes,
                Ok(None) | Err(_) => return Ok(None),
            };
            let frame = ProcessorFrame::decode(bytes.as_slice())
                .expect("the processor sends valid frames")
                .frame
                .expect("frames carry a kind");
            match frame {
                // Answer pings, or the processor drops a silent stream.
                processor_frame::Frame::Ping(ping) => {
                    let _ = self
                        .tx
                        .send(
                            CoordinatorFrame {
                                frame: Some(coordinator_frame::Frame::Pong(
                                    proto::processor_v1::Pong { nonce: ping.nonce },
                                )),
                            }
                            .encode_to_vec(),
                        )
                        .await;
                    continue;
                }
                processor_frame::Frame::Pong(_) => continue,
                processor_frame::Frame::Data(d) => {
                    self.received.push(d);
                    continue;
                }
                other => return Ok(Some(other)),
            }
        }
    }

    async fn next(&mut self) -> Option<processor_frame::Frame> {
        self.next_within(Duration::from_secs(20))
            .await
            .expect("a frame within 20s")
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

    /// Nothing but liveness for `wait`: in particular no Ack, no error.
    async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(frame) = self.next_within(wait).await {
            panic!("expected no answer for {wait:?}, got {frame:?}");
        }
    }
}

fn data(id: u64, payload: Vec<u8>) -> Data {
    Data {
        id,
        payload,
        uid: format!("test/{id}"),
        traceparent: String::new(),
        withheld_bytes: 0,
    }
}

fn message(kind: coordinator_message::Kind) -> Vec<u8> {
    CoordinatorMessage { kind: Some(kind) }.encode_to_vec()
}

fn probe(payload: Vec<u8>) -> Vec<u8> {
    message(coordinator_message::Kind::LinkProbe(LinkProbe { payload }))
}

/// A probe whose encoded message is exactly `size` bytes.
fn probe_of_size(size: usize) -> Vec<u8> {
    let mut n = size;
    loop {
        let p = probe(vec![7; n]);
        match p.len().cmp(&size) {
            std::cmp::Ordering::Equal => return p,
            std::cmp::Ordering::Greater => n -= 1,
            std::cmp::Ordering::Less => panic!("no probe of exactly {size} bytes"),
        }
    }
}

fn settlement_block(number: u64) -> Vec<u8> {
    message(coordinator_message::Kind::SettlementBlock(
        SettlementBlock {
            number,
            ..Default::default()
        },
    ))
}

/// Lets a raw link (a test task on a loaded machine) be slow to answer
/// pings, and keeps panic backtraces (slow to print) out of the way.
const PATIENT: [(&str, &str); 2] = [
    ("PROCESSOR_LINK__PEER_TIMEOUT", "10s"),
    ("RUST_BACKTRACE", "0"),
];

async fn start_processor(
    tag: &str,
    env: &[(&str, &str)],
) -> (TestDb, tempfile::TempDir, Proc, u16) {
    let db = TestDb::new(tag).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env: Vec<(&str, &str)> = PATIENT.iter().chain(env).copied().collect();
    let processor = spawn_processor("validator-1", dir.path(), port, &db.url, &env);
    wait_port(port).await;
    (db, dir, processor, port)
}

/// `extra` is appended to the `[link]` section and may open further ones.
fn coordinator_config(db_url: &str, port: u16, extra: &str) -> CoordinatorConfig {
    let text = format!(
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"{db_url}\"\n\
         [[processors]]\nname = \"validator-1\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
         [reconnect]\ninitial = \"50ms\"\nmax = \"500ms\"\n[tls]\ninsecure = true\n\
         [link]\nheartbeat_interval = \"200ms\"\npeer_timeout = \"1500ms\"\npoll_interval = \"100ms\"\n{extra}"
    );
    CoordinatorConfig::from_toml(&text).expect("test coordinator config")
}

async fn channel(port: u16) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the processor")
}

async fn admin(port: u16) -> ProcessorAdminClient<tonic::transport::Channel> {
    ProcessorAdminClient::new(channel(port).await)
}

async fn link_health(port: u16) -> ServingStatus {
    let mut health = HealthClient::new(channel(port).await);
    let status = health
        .check(HealthCheckRequest {
            service: "link".into(),
        })
        .await
        .expect("the link has a health status")
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

async fn link_fault(port: u16) -> String {
    admin(port)
        .await
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .link
        .unwrap()
        .fault
}

/// A message over the processor's frame limit, sitting in the coordinator's
/// send log (written before the limit existed, or by a coordinator with a
/// larger one), is sent withheld: the processor quarantines its id and the
/// messages behind it flow. Before, the frame closed the stream on every
/// redelivery and the link never moved again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_cannot_wedge_the_link() {
    let (pdb, _dir, _processor, port) = start_processor("wedge_p", &[]).await;
    let cdb = TestDb::new("wedge_c").await;
    let shutdown = CancellationToken::new();
    let coordinator = Coordinator::start(&coordinator_config(&cdb.url, port, ""), shutdown.clone())
        .await
        .unwrap();
    let peer = coordinator.peer("validator-1").unwrap();
    // 5 MiB: beyond this processor's frame limit and tonic's default 4 MiB.
    let huge = probe(vec![1; 5 * 1024 * 1024]);
    sqlx::query(
        "WITH l AS (
             UPDATE link_state SET last_enqueued_out = last_enqueued_out + 1
             WHERE link_id = 'validator-1' RETURNING last_enqueued_out
         )
         INSERT INTO send_log (link_id, id, uid, kind, payload)
         SELECT 'validator-1', l.last_enqueued_out, 'probe/huge', 'link_probe', $1 FROM l",
    )
    .bind(&huge)
    .execute(&coordinator.pool)
    .await
    .unwrap();
    peer.link.outbox().wake();
    let after = coordinator
        .send_probe("validator-1", b"behind the huge one".to_vec())
        .await
        .unwrap();
    assert_eq!(after, 2);
    let mut acked = peer.link.acked();
    tokio::time::timeout(Duration::from_secs(30), acked.wait_for(|&a| a >= 2))
        .await
        .expect("the link moves past the oversized message")
        .unwrap();
    let ppool = pdb.pool().await;
    let quarantined: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, code, reason FROM quarantine ORDER BY id")
            .fetch_all(&ppool)
            .await
            .unwrap();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0].0, 1);
    assert_eq!(quarantined[0].1, "LINK_ERROR_CODE_PAYLOAD_TOO_LARGE");
    assert!(
        quarantined[0].2.contains(&huge.len().to_string())
            && quarantined[0].2.contains("max_payload_bytes"),
        "{}",
        quarantined[0].2
    );
    let inbox: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, uid FROM inbox WHERE kind = 'link_probe' ORDER BY id")
            .fetch_all(&ppool)
            .await
            .unwrap();
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0].0, 2);
    // The coordinator still holds the message it could not deliver.
    assert_eq!(
        scalar_i64(
            &coordinator.pool,
            "SELECT length(payload)::bigint FROM send_log WHERE uid = 'probe/huge'"
        )
        .await,
        i64::try_from(huge.len()).unwrap()
    );
    shutdown.cancel();
}

/// A peer that ignores the announced limit: the frame beyond it is refused
/// with PAYLOAD_TOO_LARGE and closes only that stream; a frame exactly at
/// the limit passes; a withheld message is quarantined and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_at_the_limit_pass_and_beyond_it_are_refused_cleanly() {
    let (db, _dir, mut processor, port) = start_processor("frame", &[]).await;
    let mut link = RawLink::open(port).await;
    let hello = link.hello(0).await;
    assert_eq!(hello.max_frame_bytes, DEFAULT_FRAME_LIMIT as u64);

    // A whole frame of exactly the limit.
    let mut at_limit = data(1, Vec::new());
    let mut size = DEFAULT_FRAME_LIMIT - 64;
    loop {
        at_limit.payload = probe_of_size(size);
        let frame = CoordinatorFrame {
            frame: Some(coordinator_frame::Frame::Data(at_limit.clone())),
        };
        let len = frame.encoded_len();
        if len == DEFAULT_FRAME_LIMIT {
            break;
        }
        assert!(len < DEFAULT_FRAME_LIMIT, "overshot: {len}");
        size += DEFAULT_FRAME_LIMIT - len;
    }
    link.send(coordinator_frame::Frame::Data(at_limit)).await;
    link.expect_ack(1).await;

    // One byte more than the limit: refused, this stream closes.
    let mut beyond = data(2, Vec::new());
    let mut size = DEFAULT_FRAME_LIMIT - 64;
    loop {
        beyond.payload = probe_of_size(size);
        let len = CoordinatorFrame {
            frame: Some(coordinator_frame::Frame::Data(beyond.clone())),
        }
        .encoded_len();
        if len == DEFAULT_FRAME_LIMIT + 1 {
            break;
        }
        size += DEFAULT_FRAME_LIMIT + 1 - len;
    }
    link.send(coordinator_frame::Frame::Data(beyond)).await;
    let e = link.expect_error(LinkErrorCode::PayloadTooLarge).await;
    assert!(e.detail.contains("max_payload_bytes"), "{}", e.detail);
    assert!(link.next().await.is_none(), "the stream is closed");
    assert!(
        processor.child.try_wait().unwrap().is_none(),
        "the processor is still running"
    );

    // A new stream: id 2 is still due; sent withheld, it is quarantined
    // and acknowledged, and the link moves on.
    let mut link = RawLink::open(port).await;
    assert_eq!(link.hello(0).await.last_handled_id, 1);
    let mut withheld = data(2, Vec::new());
    withheld.withheld_bytes = 5 * 1024 * 1024;
    link.send(coordinator_frame::Frame::Data(withheld)).await;
    let e = link.expect_error(LinkErrorCode::PayloadTooLarge).await;
    assert_eq!(e.id, 2);
    link.expect_ack(2).await;
    link.data(3, probe(b"three".to_vec())).await;
    link.expect_ack(3).await;

    let pool = db.pool().await;
    let quarantine: Vec<(i64, String)> = sqlx::query_as("SELECT id, code FROM quarantine")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        quarantine,
        vec![(2, "LINK_ERROR_CODE_PAYLOAD_TOO_LARGE".into())]
    );
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM inbox WHERE id IN (1, 3)").await,
        2
    );
}

/// `link::enqueue` refuses a payload over the link's limit with a typed
/// error before writing anything, and the admin API that asked gets
/// INVALID_ARGUMENT saying which limit; a payload exactly at the limit goes
/// through and is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_refuses_an_oversized_payload_with_a_clear_error() {
    const LIMIT: usize = 64 * 1024;
    let (pdb, _dir, _processor, port) =
        start_processor("enq_p", &[("PROCESSOR_LINK__MAX_PAYLOAD_BYTES", "65536")]).await;
    let cdb = TestDb::new("enq_c").await;
    let shutdown = CancellationToken::new();
    let coordinator = Coordinator::start(
        &coordinator_config(
            &cdb.url,
            port,
            "max_payload_bytes = 65536\n[settlement]\nmax_burns_per_block = 1\n",
        ),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let peer = coordinator.peer("validator-1").unwrap();

    let mut tx = coordinator.pool.begin().await.unwrap();
    let too_big = processor::link::OutMessage {
        uid: "probe/too-big".into(),
        kind: "link_probe",
        payload: probe_of_size(LIMIT + 1),
    };
    let err = processor::link::enqueue(&mut tx, "validator-1", &[too_big])
        .await
        .expect_err("over the limit");
    match &err {
        processor::link::EnqueueError::TooLarge(t) => {
            assert_eq!((t.size, t.limit), (LIMIT + 1, LIMIT));
            assert_eq!(t.uid, "probe/too-big");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains("link.max_payload_bytes"), "{err}");
    tx.rollback().await.unwrap();
    assert_eq!(
        scalar_i64(&coordinator.pool, "SELECT count(*) FROM send_log").await,
        0,
        "nothing was enqueued"
    );

    // Through the admin call: INVALID_ARGUMENT naming the limit.
    let status: Status = coordinator
        .send_probe("validator-1", vec![0; LIMIT + 1])
        .await
        .expect_err("refused")
        .into();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("max_payload_bytes"),
        "{}",
        status.message()
    );

    // Exactly at the limit: enqueued and delivered.
    let mut tx = coordinator.pool.begin().await.unwrap();
    let at_limit = probe_of_size(LIMIT);
    let ids = processor::link::enqueue(
        &mut tx,
        "validator-1",
        &[processor::link::OutMessage {
            uid: "probe/at-limit".into(),
            kind: "link_probe",
            payload: at_limit.clone(),
        }],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids, vec![1]);
    peer.link.outbox().wake();
    let mut acked = peer.link.acked();
    tokio::time::timeout(Duration::from_secs(20), acked.wait_for(|&a| a >= 1))
        .await
        .expect("delivered")
        .unwrap();
    let ppool = pdb.pool().await;
    let delivered: Vec<u8> = sqlx::query_scalar("SELECT payload FROM inbox WHERE id = 1")
        .fetch_one(&ppool)
        .await
        .unwrap();
    assert_eq!(delivered, at_limit);
    shutdown.cancel();
}

/// Burns queued at once go out over several settlement blocks, at most
/// `settlement.max_burns_per_block` each, oldest first; the processor takes
/// every one in exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_burns_go_out_over_several_settlement_blocks() {
    const MAINNET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
    let (pdb, _dir, _processor, port) = start_processor("burns_p", &[]).await;
    let cdb = TestDb::new("burns_c").await;
    let shutdown = CancellationToken::new();
    let coordinator = Coordinator::start(
        &coordinator_config(&cdb.url, port, "[settlement]\nmax_burns_per_block = 3\n"),
        shutdown.clone(),
    )
    .await
    .unwrap();
    for i in 0..7 {
        coordinator_mock::payouts::submit_burn(
            &coordinator.pool,
            &format!("burn-{i}"),
            MAINNET,
            1_000_000_000 + i,
        )
        .await
        .unwrap();
    }
    for _ in 0..3 {
        coordinator.emit_settlement_block().await.unwrap();
    }
    let per_block: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT settlement_block, count(*) FROM burns GROUP BY settlement_block ORDER BY 1",
    )
    .fetch_all(&coordinator.pool)
    .await
    .unwrap();
    assert_eq!(per_block, vec![(0, 3), (1, 3), (2, 1)]);
    let first: Vec<String> =
        sqlx::query_scalar("SELECT burn_id FROM burns WHERE settlement_block = 0 ORDER BY burn_id")
            .fetch_all(&coordinator.pool)
            .await
            .unwrap();
    assert_eq!(first, vec!["burn-0", "burn-1", "burn-2"], "oldest first");

    let ppool = pdb.pool().await;
    eventually(
        "the processor takes in all 3 blocks",
        Duration::from_secs(30),
        || async {
            (scalar_i64(&ppool, "SELECT count(*) FROM settlement_blocks").await == 3).then_some(())
        },
    )
    .await;
    let taken: Vec<(i64, i64)> =
        sqlx::query_as("SELECT block_number, count(*) FROM burns GROUP BY block_number ORDER BY 1")
            .fetch_all(&ppool)
            .await
            .unwrap();
    assert_eq!(taken, vec![(0, 3), (1, 3), (2, 1)]);
    assert_eq!(
        scalar_i64(&ppool, "SELECT count(*) FROM quarantine").await,
        0
    );
    shutdown.cancel();
}

/// The processor's identity public key, from its announcement.
async fn identity_of(pool: &sqlx::PgPool) -> Vec<u8> {
    let payload: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM send_log WHERE kind = 'identity'")
            .fetch_one(pool)
            .await
            .unwrap();
    match ProcessorMessage::decode(payload.as_slice()).unwrap().kind {
        Some(processor_message::Kind::Identity(i)) => i.encryption_public_key,
        other => panic!("expected the identity, got {other:?}"),
    }
}

/// A local fault (our own sealed DKG secret does not open) is not the
/// peer's fault: the message is not acknowledged, it is retried, health and
/// status say why; once the row is repaired the message takes effect and is
/// acknowledged. Before, it was quarantined as REJECTED and acknowledged
/// without its effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_fault_is_retried_not_acknowledged_and_takes_effect_once_fixed() {
    let (db, _dir, _processor, port) = start_processor("local", &[]).await;
    let pool = db.pool().await;
    let mut link = RawLink::open(port).await;
    link.hello(0).await;
    let me = identity_of(&pool).await;

    // Key generation session 0: this processor is participant 1 of 3.
    let participants = (1..=3u32)
        .map(|index| Participant {
            index,
            encryption_public_key: if index == 1 {
                me.clone()
            } else {
                rand::random::<[u8; 32]>().to_vec()
            },
        })
        .collect();
    link.data(
        1,
        message(coordinator_message::Kind::KeyGenStart(KeyGenStart {
            session: 0,
            threshold: 2,
            own_index: 1,
            participants,
            confirmations: 3,
            window_blocks: 4,
        })),
    )
    .await;
    link.expect_ack(1).await;

    // The other two participants' round-1 packages, made with frost.
    let mut packages = std::collections::HashMap::new();
    for i in 2..=3u16 {
        let (_secret, package) = frost_ed25519::keys::dkg::part1(
            frost_ed25519::Identifier::try_from(i).unwrap(),
            3,
            2,
            rand_core::OsRng,
        )
        .unwrap();
        packages.insert(u32::from(i), package.serialize().unwrap());
    }

    // Break our own stored row: the sealed round-1 secret no longer opens.
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT sealed_round1_secret FROM keys WHERE session = 0")
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut broken = sealed.clone();
    let last = broken.len() - 1;
    broken[last] ^= 0xff;
    sqlx::query("UPDATE keys SET sealed_round1_secret = $1 WHERE session = 0")
        .bind(&broken)
        .execute(&pool)
        .await
        .unwrap();

    link.data(
        2,
        message(coordinator_message::Kind::KeyGenRound1(
            KeyGenRound1Packages {
                session: 0,
                attempt: 0,
                packages,
            },
        )),
    )
    .await;
    // Not acknowledged, not refused: retried.
    link.expect_silence(Duration::from_secs(3)).await;
    assert_eq!(link_health(port).await, ServingStatus::NotServing);
    let fault = link_fault(port).await;
    assert!(
        fault.contains("local fault") && fault.contains("does not open"),
        "{fault}"
    );
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM quarantine").await,
        0
    );
    assert_eq!(
        scalar_i64(&pool, "SELECT last_handled_in FROM link_state").await,
        1
    );

    // Repair the row: the retry goes through, with its effect.
    sqlx::query("UPDATE keys SET sealed_round1_secret = $1 WHERE session = 0")
        .bind(&sealed)
        .execute(&pool)
        .await
        .unwrap();
    link.expect_ack(2).await;
    let status: String = sqlx::query_scalar("SELECT status FROM keys WHERE session = 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "round2");
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM send_log WHERE kind = 'key_gen_round2'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM quarantine").await,
        0
    );
    eventually("health recovers", Duration::from_secs(5), || async {
        (link_health(port).await == ServingStatus::Serving).then_some(())
    })
    .await;
    assert_eq!(link_fault(port).await, "");
}

/// A handler that panics on a message: caught, retried a bounded number of
/// times (counted in Postgres), then the message is quarantined with the
/// panic text and acknowledged, health says so, and later messages flow.
/// Before, the panic ended the session and the message came back forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_quarantined_after_bounded_tries() {
    let (db, _dir, mut processor, port) = start_processor(
        "panic",
        &[("FAILPOINTS", "link-handler-panic=return(link_probe)")],
    )
    .await;
    let mut link = RawLink::open(port).await;
    link.hello(0).await;
    let started = Instant::now();
    link.data(1, probe(b"poison".to_vec())).await;
    let e = link.expect_error(LinkErrorCode::HandlerPanic).await;
    assert_eq!(e.id, 1);
    assert!(
        e.detail.contains("fault injection: link-handler-panic")
            && e.detail.contains("after 3 failed tries"),
        "{}",
        e.detail
    );
    link.expect_ack(1).await;
    assert!(started.elapsed() < Duration::from_secs(15));

    // Later messages flow, on the same stream.
    link.data(2, settlement_block(0)).await;
    link.expect_ack(2).await;
    let pool = db.pool().await;
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM settlement_blocks").await,
        1
    );
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM inbound_tries").await,
        0,
        "tries are forgotten once the message is settled"
    );

    // The operator sees it: quarantine (admin API), status and health.
    let rows = admin(port)
        .await
        .list_quarantine(ListRequest {
            after_id: 0,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let rows = format!("{rows:?}");
    assert!(
        rows.contains("LINK_ERROR_CODE_HANDLER_PANIC")
            && rows.contains("fault injection: link-handler-panic"),
        "{rows}"
    );
    assert_eq!(link_health(port).await, ServingStatus::NotServing);
    let fault = link_fault(port).await;
    assert!(fault.contains("quarantined"), "{fault}");
    assert!(
        processor.child.try_wait().unwrap().is_none(),
        "the processor is still running"
    );
}

/// A message the process dies on (no unwinding: an abort, an OOM kill) is
/// bounded too: each start finds its predecessor's handling mark on it and
/// counts a try in Postgres; after `link.max_handler_tries` it is
/// quarantined without running the handler, and the link moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_process_dies_on_is_quarantined_after_bounded_restarts() {
    let env = [("FAILPOINTS", "link-handler-abort=return(link_probe)")];
    let (db, dir, mut processor, port) = start_processor("abort", &env).await;
    // Three deaths: the first start marks the message, each of the next two
    // counts one try, and the third try is counted by the fourth start.
    for start in 0..3 {
        let mut link = RawLink::open(port).await;
        assert_eq!(link.hello(0).await.last_handled_id, 0);
        link.data(1, probe(b"deadly".to_vec())).await;
        assert!(
            link.next().await.is_none(),
            "start {start}: the stream ends with the process"
        );
        let status = processor
            .wait_exit(Duration::from_secs(10))
            .expect("the process dies on the message");
        assert!(!status.success());
        let env: Vec<(&str, &str)> = PATIENT.iter().chain(&env).copied().collect();
        processor = spawn_processor("validator-1", dir.path(), port, &db.url, &env);
        wait_port(port).await;
    }
    let mut link = RawLink::open(port).await;
    link.hello(0).await;
    link.data(1, probe(b"deadly".to_vec())).await;
    let e = link.expect_error(LinkErrorCode::HandlerPanic).await;
    assert_eq!(e.id, 1);
    assert!(
        e.detail.contains("after 3 failed tries") && e.detail.contains("process stopped"),
        "{}",
        e.detail
    );
    link.expect_ack(1).await;
    link.data(2, settlement_block(0)).await;
    link.expect_ack(2).await;
    assert_eq!(link_health(port).await, ServingStatus::NotServing);
    assert!(
        processor.child.try_wait().unwrap().is_none(),
        "the processor is still running"
    );
}
