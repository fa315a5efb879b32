//! Authorization by client-certificate name: the link is the coordinator's,
//! the admin APIs are the operators'. A certificate of the right CA with the
//! wrong name, or the right name with a Hello that does not check out,
//! cannot cut the live session. Real binaries, real Postgres, real grpcurl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::certs::{COORDINATOR, Ca, OPERATOR};
use common::*;
use futures::StreamExt;
use processor::link::{CoordinatorSide, LinkFrame, Side};
use proto::coordinator_v1::coordinator_admin_client::CoordinatorAdminClient;
use proto::processor_v1::processor_admin_client::ProcessorAdminClient;
use proto::processor_v1::processor_client::ProcessorClient;
use proto::processor_v1::{
    CoordinatorFrame, Hello, LinkErrorCode, ProcessorFrame, coordinator_frame,
};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

fn processor_config(name: &str, port: u16, db: &str, kek: &Path, tls: &str) -> String {
    format!(
        "node_id = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\ndatabase_url = \"{db}\"\n\
         [keystore]\nkek_file = \"{}\"\n\
         [link]\nheartbeat_interval = \"200ms\"\npeer_timeout = \"1500ms\"\npoll_interval = \"100ms\"\n\
         [log]\nfilter = \"info\"\n{tls}",
        kek.display()
    )
}

async fn tls_channel(port: u16, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Opens `Connect` and sends `hello` (if any); the stream stays open while
/// the returned sender lives. `Err` is the call's status.
async fn open_link(
    channel: Channel,
    hello: Option<Hello>,
) -> Result<
    (
        tokio::sync::mpsc::Sender<CoordinatorFrame>,
        tonic::Streaming<ProcessorFrame>,
    ),
    tonic::Status,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    if let Some(hello) = hello {
        tx.send(CoordinatorFrame {
            frame: Some(coordinator_frame::Frame::Hello(hello)),
        })
        .await
        .unwrap();
    }
    let response = ProcessorClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    Ok((tx, response.into_inner()))
}

fn hello(contract_version: u32) -> Hello {
    Hello {
        node_id: COORDINATOR.into(),
        contract_version,
        last_handled_id: 0,
        ..Default::default()
    }
}

/// The processor's link status as an operator sees it.
async fn link_status(port: u16, ca: &Ca) -> proto::processor_v1::LinkStatus {
    let channel = tls_channel(port, ca.client_tls(OPERATOR, ca))
        .await
        .unwrap();
    ProcessorAdminClient::new(channel)
        .get_status(proto::processor_v1::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .link
        .expect("the status has a link")
}

fn permission_denied(result: Result<impl std::fmt::Debug, tonic::Status>, what: &str) -> String {
    let status = result.expect_err(what);
    assert_eq!(
        status.code(),
        tonic::Code::PermissionDenied,
        "{what}: {status:?}"
    );
    status.message().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_is_the_coordinators_and_the_admin_api_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("custody CA");
    let db = TestDb::new("authz").await;
    let port = free_port();
    let tls = ca.processor_tls(dir.path(), "validator-1");
    let config = processor_config(
        "validator-1",
        port,
        &db.url,
        &kek_file(dir.path(), "validator-1"),
        &tls,
    );
    let _processor = spawn(
        Path::new(env!("CARGO_BIN_EXE_processor")),
        "validator-1",
        dir.path(),
        &config,
        &[],
    );
    wait_port(port).await;

    // An operator's certificate cannot open the link, and is told why.
    let operator = tls_channel(port, ca.client_tls(OPERATOR, &ca))
        .await
        .unwrap();
    let message = permission_denied(
        open_link(operator.clone(), Some(hello(proto::CONTRACT_VERSION))).await,
        "an operator opened the link",
    );
    assert!(
        message.contains("expected a client certificate naming \"coordinator\"")
            && message.contains("got one naming \"operator\""),
        "{message}"
    );
    // It may use the admin API.
    let status = ProcessorAdminClient::new(operator)
        .get_status(proto::processor_v1::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.node_id, "validator-1");

    // The coordinator's certificate cannot use the admin API.
    let coordinator = tls_channel(port, ca.client_tls(COORDINATOR, &ca))
        .await
        .unwrap();
    let message = permission_denied(
        ProcessorAdminClient::new(coordinator.clone())
            .get_status(proto::processor_v1::GetStatusRequest {})
            .await,
        "the coordinator used the admin API",
    );
    assert!(
        message.contains("\"operator\"") && message.contains("got one naming \"coordinator\""),
        "{message}"
    );
    // It may open the link: the processor answers its Hello with its own.
    let (_tx, mut frames) = open_link(coordinator, Some(hello(proto::CONTRACT_VERSION)))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), frames.next())
        .await
        .expect("an answer within 5s")
        .expect("a frame")
        .unwrap();
    match CoordinatorSide::open(first) {
        Some(LinkFrame::Hello(h)) => assert_eq!(h.node_id, "validator-1"),
        other => panic!("expected the processor's Hello, got {other:?}"),
    }

    // A certificate of the CA with yet another name gets neither.
    let stranger = tls_channel(port, ca.client_tls("mallory", &ca))
        .await
        .unwrap();
    permission_denied(
        open_link(stranger.clone(), Some(hello(proto::CONTRACT_VERSION))).await,
        "a stranger opened the link",
    );
    permission_denied(
        ProcessorAdminClient::new(stranger)
            .get_status(proto::processor_v1::GetStatusRequest {})
            .await,
        "a stranger used the admin API",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_name_or_a_bad_hello_cannot_take_over_the_live_session() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("custody CA");
    let db = TestDb::new("authz_live").await;
    let port = free_port();
    let tls = ca.processor_tls(dir.path(), "validator-1");
    let config = processor_config(
        "validator-1",
        port,
        &db.url,
        &kek_file(dir.path(), "validator-1"),
        &tls,
    );
    let _processor = spawn(
        Path::new(env!("CARGO_BIN_EXE_processor")),
        "validator-1",
        dir.path(),
        &config,
        &[],
    );
    wait_port(port).await;

    // The real coordinator, in process, holds the live session.
    let cdb = TestDb::new("authz_livec").await;
    let text = format!(
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"{}\"\n\
         [link]\nheartbeat_interval = \"200ms\"\npeer_timeout = \"1500ms\"\npoll_interval = \"100ms\"\n\
         [reconnect]\ninitial = \"50ms\"\nmax = \"500ms\"\n{}\
         [[processors]]\nname = \"validator-1\"\nendpoint = \"https://localhost:{port}\"\n",
        cdb.url,
        ca.coordinator_tls(dir.path(), &ca)
    );
    let config = coordinator_mock::config::Config::from_toml(&text).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let coordinator = coordinator_mock::coordinator::Coordinator::start(&config, shutdown.clone())
        .await
        .unwrap();
    let peer = coordinator.peer("validator-1").unwrap().clone();
    let since = eventually("the live session is up", Duration::from_secs(15), || {
        let peer = peer.clone();
        async move {
            let live = peer.link.live_status();
            live.connected.then_some(live.connected_since)
        }
    })
    .await;
    let before = link_status(port, &ca).await;
    assert!(before.connected);

    // A certificate of the CA under another name: refused before the link
    // sees it, naming both identities.
    let stranger = tls_channel(port, ca.client_tls("mallory", &ca))
        .await
        .unwrap();
    let message = permission_denied(
        open_link(stranger, Some(hello(proto::CONTRACT_VERSION))).await,
        "a stranger opened the link",
    );
    assert!(
        message.contains("\"coordinator\"") && message.contains("\"mallory\""),
        "{message}"
    );

    // The coordinator's name, but a Hello that does not check out: refused
    // with the reason, and the live session is not superseded for it.
    let impostor = tls_channel(port, ca.client_tls(COORDINATOR, &ca))
        .await
        .unwrap();
    let (_tx, mut frames) = open_link(impostor.clone(), Some(hello(proto::CONTRACT_VERSION + 1)))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), frames.next())
        .await
        .expect("an answer within 5s")
        .expect("a frame")
        .unwrap();
    match CoordinatorSide::open(first) {
        Some(LinkFrame::Error(e)) => {
            assert_eq!(
                e.code,
                i32::from(LinkErrorCode::UnsupportedVersion),
                "{e:?}"
            )
        }
        other => panic!("expected UNSUPPORTED_VERSION, got {other:?}"),
    }
    // ... and one that has not said Hello yet does not cut it either.
    let (_silent, _silent_frames) = open_link(impostor, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The live session never dropped, on either side, and still carries
    // messages.
    let live = peer.link.live_status();
    assert!(live.connected, "the coordinator's session dropped");
    assert_eq!(
        live.connected_since, since,
        "the coordinator's live session was replaced"
    );
    assert_eq!(
        peer.dial
            .failed_connects
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let after = link_status(port, &ca).await;
    assert!(after.connected);
    assert_eq!(
        after.connected_since_unix_ms, before.connected_since_unix_ms,
        "the processor's live session was superseded"
    );
    let id = coordinator
        .send_probe("validator-1", b"still flowing".to_vec())
        .await
        .unwrap();
    let mut acked = peer.link.acked();
    tokio::time::timeout(Duration::from_secs(10), acked.wait_for(|&a| a >= id))
        .await
        .expect("the probe is acknowledged on the live session")
        .unwrap();
    assert_eq!(peer.link.live_status().connected_since, since);
    shutdown.cancel();
}

fn grpcurl(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::grpcurl())
        .args(args)
        .output()
        .expect("run grpcurl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_admin_api_takes_operators_only_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("custody CA");
    let cdb = TestDb::new("authz_admin").await;
    let port = free_port();
    let health = free_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nhealth_listen = \"127.0.0.1:{health}\"\n\
         database_url = \"{}\"\nprocessors = []\n{}",
        cdb.url,
        ca.coordinator_tls(dir.path(), &ca)
    );
    let _coordinator = spawn(&coordinator_bin(), "coordinator", dir.path(), &config, &[]);
    wait_port(port).await;
    wait_port(health).await;
    let get_status = |channel: Channel| async move {
        CoordinatorAdminClient::new(channel)
            .get_status(proto::coordinator_v1::GetStatusRequest {})
            .await
            .map(|r| r.into_inner().node_id)
    };

    // An operator's certificate is served.
    let operator = tls_channel(port, ca.client_tls(OPERATOR, &ca))
        .await
        .unwrap();
    assert_eq!(get_status(operator).await.unwrap(), "coordinator");

    // The coordinator's own certificate is not an operator's.
    let coordinator = tls_channel(port, ca.client_tls(COORDINATOR, &ca))
        .await
        .unwrap();
    let message = permission_denied(
        get_status(coordinator).await,
        "the coordinator's certificate used the admin API",
    );
    assert!(
        message.contains("\"operator\"") && message.contains("got one naming \"coordinator\""),
        "{message}"
    );

    // No certificate, or no TLS at all: not served.
    match tls_channel(port, ca.anonymous_tls()).await {
        Err(_) => {}
        Ok(channel) => {
            get_status(channel)
                .await
                .expect_err("a client without a certificate was served");
        }
    }
    if let Ok(channel) = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
    {
        get_status(channel)
            .await
            .expect_err("a plaintext client was served");
    }

    // Probes get plaintext health on their own port.
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{health}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let serving = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "coordinator.v1.CoordinatorAdmin".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(serving, 1);

    // The README's grpcurl line, with the operator's and then the
    // coordinator's certificate.
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let files = ca.write(
        dir.path(),
        OPERATOR,
        &[rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        &ca,
    );
    let address = format!("localhost:{port}");
    let with = |cert: &Path, key: &Path| {
        grpcurl(&[
            "-cacert",
            ca_file.to_str().unwrap(),
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            &address,
            "coordinator.v1.CoordinatorAdmin/GetStatus",
        ])
    };
    let (ok, out) = with(&files.cert, &files.key);
    assert!(ok, "{out}");
    assert!(out.contains("\"nodeId\": \"coordinator\""), "{out}");
    let (ok, out) = with(
        &dir.path().join(format!("{COORDINATOR}.crt")),
        &dir.path().join(format!("{COORDINATOR}.key")),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("PermissionDenied"), "{out}");
}
