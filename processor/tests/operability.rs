//! Operating in production: mutual TLS between coordinator and processors,
//! Prometheus metrics on both services, OTLP traces that cross services, and
//! plaintext grpc.health.v1 for probes. Real binaries, a real Postgres, a
//! real OTLP/gRPC receiver (Python grpcio + opentelemetry-proto from PyPI).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::certs::{Ca, OPERATOR};
use common::*;
use proto::coordinator_v1::coordinator_admin_client::CoordinatorAdminClient;
use proto::processor_v1::processor_admin_client::ProcessorAdminClient;
use rcgen::ExtendedKeyUsagePurpose;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

struct Ports {
    grpc: u16,
    health: u16,
    metrics: u16,
}

fn ports() -> Ports {
    Ports {
        grpc: free_port(),
        health: free_port(),
        metrics: free_port(),
    }
}

fn tls_processor_config(name: &str, p: &Ports, db: &str, kek: &Path, tls: &str) -> String {
    format!(
        "node_id = \"{name}\"\nlisten = \"127.0.0.1:{}\"\nhealth_listen = \"127.0.0.1:{}\"\n\
         metrics_listen = \"127.0.0.1:{}\"\ndatabase_url = \"{db}\"\n\
         [keystore]\nkek_file = \"{}\"\n\
         [link]\nheartbeat_interval = \"200ms\"\npeer_timeout = \"1500ms\"\npoll_interval = \"100ms\"\n\
         [log]\nfilter = \"info\"\n{tls}",
        p.grpc,
        p.health,
        p.metrics,
        kek.display()
    )
}

async fn tls_channel(port: u16, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// An admin call over `channel`, as a result.
async fn admin_call(channel: Channel) -> Result<String, String> {
    ProcessorAdminClient::new(channel)
        .get_status(proto::processor_v1::GetStatusRequest {})
        .await
        .map(|r| r.into_inner().node_id)
        .map_err(|s| format!("{s:?}"))
}

/// GET /metrics, parsed into `name{labels}` -> value.
async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let answer = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics port open");
    assert_eq!(answer.status(), reqwest::StatusCode::OK, "{answer:?}");
    let text = answer.text().await.expect("a text body");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of `name` whose labels contain all of `labels`.
fn total(metrics: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn health(port: u16) -> Result<i32, String> {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| s.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_link_with_metrics_and_one_trace_across_services() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("custody test CA");
    let receiver = otlp::Receiver::start(dir.path());
    let otlp = receiver.endpoint();
    let env: Vec<(&str, &str)> = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        // Export within half a second rather than the default five.
        ("OTEL_BSP_SCHEDULE_DELAY", "500"),
    ];

    let n = 3;
    let mut dbs = Vec::new();
    let mut procs = Vec::new();
    let mut all_ports = Vec::new();
    for i in 0..n {
        let name = format!("validator-{}", i + 1);
        let db = TestDb::new(&format!("ops{i}")).await;
        let p = ports();
        let tls = ca.processor_tls(dir.path(), &name);
        let config = tls_processor_config(&name, &p, &db.url, &kek_file(dir.path(), &name), &tls);
        procs.push(spawn(
            Path::new(env!("CARGO_BIN_EXE_processor")),
            &name,
            dir.path(),
            &config,
            &env,
        ));
        dbs.push(db);
        all_ports.push(p);
    }
    for p in &all_ports {
        wait_port(p.grpc).await;
        wait_port(p.metrics).await;
    }

    // Probes get plaintext health on their own port.
    for p in &all_ports {
        let status = eventually("health SERVING", Duration::from_secs(10), || async {
            health(p.health).await.ok().filter(|&s| s == 1)
        })
        .await;
        assert_eq!(status, 1);
    }
    let before: Vec<_> =
        futures::future::join_all(all_ports.iter().map(|p| scrape(p.metrics))).await;
    for m in &before {
        assert_eq!(total(m, "custody_link_messages_acked_total", &[]), 0.0);
    }

    // The coordinator: its own certificate (client to the processors,
    // server of its admin API), the processors' and operators' CA.
    let cdb = TestDb::new("opsc").await;
    let cport = free_port();
    let cmetrics = free_port();
    let ctls = ca.coordinator_tls(dir.path(), &ca);
    let mut cconfig = format!(
        "listen = \"127.0.0.1:{cport}\"\nmetrics_listen = \"127.0.0.1:{cmetrics}\"\ndatabase_url = \"{}\"\n\
         [link]\nheartbeat_interval = \"200ms\"\npeer_timeout = \"1500ms\"\npoll_interval = \"100ms\"\n\
         [reconnect]\ninitial = \"50ms\"\nmax = \"500ms\"\n\
         [keygen]\nauto_start_threshold = 2\n{ctls}",
        cdb.url
    );
    for (i, p) in all_ports.iter().enumerate() {
        cconfig.push_str(&format!(
            "[[processors]]\nname = \"validator-{}\"\nendpoint = \"https://localhost:{}\"\n",
            i + 1,
            p.grpc
        ));
    }
    let _coordinator = spawn(
        &coordinator_bin(),
        "coordinator",
        dir.path(),
        &cconfig,
        &env,
    );
    wait_port(cport).await;
    // An operator drives the coordinator's admin API over mutual TLS.
    let channel = tls_channel(cport, ca.client_tls(OPERATOR, &ca))
        .await
        .unwrap();
    let mut admin = CoordinatorAdminClient::new(channel);
    let key = eventually(
        "key generation over mTLS confirmed",
        Duration::from_secs(60),
        || {
            let mut admin = admin.clone();
            async move {
                let s = admin
                    .get_key_gen(proto::coordinator_v1::GetKeyGenRequest { session: 0 })
                    .await
                    .ok()?
                    .into_inner();
                assert_ne!(s.status, "failed", "key generation failed: {}", s.failure);
                (s.status == "confirmed").then_some(s)
            }
        },
    )
    .await;
    assert!(!key.group_key.is_empty());
    let status = admin
        .get_status(proto::coordinator_v1::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.processors.len(), n);

    // Metrics moved on both sides.
    let after = eventually(
        "every processor's link counters moved",
        Duration::from_secs(15),
        || {
            let all_ports = &all_ports;
            async move {
                let after: Vec<_> =
                    futures::future::join_all(all_ports.iter().map(|p| scrape(p.metrics))).await;
                after
                    .iter()
                    .all(|m| {
                        total(
                            m,
                            "custody_link_messages_acked_total",
                            &["link=\"coordinator\""],
                        ) > 0.0
                            && total(m, "custody_link_messages_handled_total", &[]) > 0.0
                            && total(m, "custody_keygen_rounds_total", &[]) >= 2.0
                            && total(m, "custody_link_connected", &[]) == 1.0
                            // Read from Postgres every 2 s; everything sent
                            // gets acknowledged, so it settles at 0.
                            && m.keys()
                                .any(|k| k.starts_with("custody_link_send_backlog{"))
                            && total(m, "custody_link_send_backlog", &["link=\"coordinator\""])
                                == 0.0
                    })
                    .then_some(after)
            }
        },
    )
    .await;
    for (b, a) in before.iter().zip(&after) {
        assert!(
            total(a, "custody_link_messages_sent_total", &[])
                > total(b, "custody_link_messages_sent_total", &[])
        );
        assert!(a.keys().any(|k| k.contains("service=\"processor\"")));
    }
    let c = eventually("coordinator metrics", Duration::from_secs(15), || async {
        let m = scrape(cmetrics).await;
        (total(&m, "custody_keygen_completed_total", &[]) == 1.0
            && total(&m, "custody_keygen_sessions", &["status=\"confirmed\""]) == 1.0)
            .then_some(m)
    })
    .await;
    assert_eq!(
        total(&c, "custody_keygen_duration_seconds_count", &[]),
        1.0,
        "{c:?}"
    );
    for i in 1..=n {
        let link = format!("link=\"validator-{i}\"");
        assert!(total(&c, "custody_link_messages_sent_total", &[&link]) > 0.0);
        assert!(total(&c, "custody_link_messages_handled_total", &[&link]) > 0.0);
    }

    // One trace: the coordinator's keygen span and the processors' handling
    // of its messages share a trace id.
    let spans = eventually(
        "keygen spans from both services",
        Duration::from_secs(30),
        || async {
            let spans = receiver.spans();
            let root = spans
                .iter()
                .find(|s| s["service"] == "coordinator-mock" && s["name"] == "keygen")?
                .clone();
            let trace = root["trace_id"].as_str()?.to_owned();
            let services: BTreeSet<String> = spans
                .iter()
                .filter(|s| s["trace_id"] == trace.as_str())
                .map(|s| s["service"].as_str().unwrap_or_default().to_owned())
                .collect();
            let instances: BTreeSet<String> = spans
                .iter()
                .filter(|s| s["trace_id"] == trace.as_str() && s["service"] == "processor")
                .map(|s| s["instance"].as_str().unwrap_or_default().to_owned())
                .collect();
            (services.contains("processor") && instances.len() == n).then_some((trace, spans))
        },
    )
    .await;
    let (trace, spans) = spans;
    let names: BTreeSet<&str> = spans
        .iter()
        .filter(|s| s["trace_id"] == trace.as_str())
        .filter_map(|s| s["name"].as_str())
        .collect();
    for expected in [
        "keygen",
        "handle key_gen_start",
        "keygen.start",
        "keygen.round1",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    // The processors' spans carry the session and the link message id.
    let handled = spans
        .iter()
        .find(|s| s["trace_id"] == trace.as_str() && s["name"] == "keygen.start")
        .unwrap();
    assert_eq!(handled["attributes"]["session"], "0");
    // Never a secret: no KEK appears in any exported span.
    let exported = std::fs::read_to_string(&receiver.out).unwrap();
    for i in 0..n {
        let kek =
            std::fs::read_to_string(kek_file(dir.path(), &format!("validator-{}", i + 1))).unwrap();
        assert!(
            !exported.contains(kek.trim()),
            "a KEK was exported in a span"
        );
    }
    drop(procs);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_a_certificate_from_the_configured_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("custody CA");
    let other = Ca::new("some other CA");
    let db = TestDb::new("mtls").await;
    let p = ports();
    let tls = ca.processor_tls(dir.path(), "validator-1");
    let config = tls_processor_config(
        "validator-1",
        &p,
        &db.url,
        &kek_file(dir.path(), "v1"),
        &tls,
    );
    let _processor = spawn(
        Path::new(env!("CARGO_BIN_EXE_processor")),
        "validator-1",
        dir.path(),
        &config,
        &[],
    );
    wait_port(p.grpc).await;

    // A certificate from the configured CA works (so the refusals below are
    // about the certificate, not a broken server).
    let good = tls_channel(p.grpc, ca.client_tls(OPERATOR, &ca))
        .await
        .unwrap();
    assert_eq!(admin_call(good).await.unwrap(), "validator-1");

    // A certificate from another CA: the handshake or the first call fails.
    let refused = match tls_channel(p.grpc, other.client_tls("intruder", &ca)).await {
        Err(e) => e,
        Ok(channel) => admin_call(channel)
            .await
            .expect_err("another CA's client was served"),
    };
    assert!(
        refused.to_lowercase().contains("certificate") || refused.contains("transport"),
        "{refused}"
    );
    // No client certificate at all.
    match tls_channel(p.grpc, ca.anonymous_tls()).await {
        Err(_) => {}
        Ok(channel) => {
            admin_call(channel)
                .await
                .expect_err("a client without a certificate was served");
        }
    }
    // Plaintext.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", p.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await;
    if let Ok(channel) = plain {
        admin_call(channel)
            .await
            .expect_err("a plaintext client was served");
    }

    // The coordinator's side: it refuses a processor whose certificate is
    // not from the CA it trusts, and says why.
    let cdb = TestDb::new("mtlsc").await;
    let ctls = ca.tls_section(
        dir.path(),
        "coordinator",
        &[ExtendedKeyUsagePurpose::ClientAuth],
        &other,
    );
    let text = format!(
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"{}\"\n\
         [reconnect]\ninitial = \"50ms\"\nmax = \"300ms\"\n{ctls}\
         [[processors]]\nname = \"validator-1\"\nendpoint = \"https://localhost:{}\"\n",
        cdb.url, p.grpc
    );
    let config = coordinator_mock::config::Config::from_toml(&text).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let coordinator = coordinator_mock::coordinator::Coordinator::start(&config, shutdown.clone())
        .await
        .unwrap();
    let peer = coordinator.peer("validator-1").unwrap().clone();
    let error = eventually(
        "the coordinator refused the processor",
        Duration::from_secs(15),
        || {
            let peer = peer.clone();
            async move {
                let failed = peer
                    .dial
                    .failed_connects
                    .load(std::sync::atomic::Ordering::Relaxed);
                let last = peer.dial.last_error.lock().unwrap().clone();
                (failed >= 2).then_some(last)
            }
        },
    )
    .await;
    assert!(!peer.link.live_status().connected);
    assert!(error.contains("cannot connect"), "{error}");
    shutdown.cancel();

    // A bad TLS file is named at start-up.
    let broken = config_with_missing_key(dir.path(), p.grpc, &db.url);
    let out = Command::new(env!("CARGO_BIN_EXE_processor"))
        .args(["run", "--config"])
        .arg(&broken)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("tls.key_file"), "{stderr}");
}

fn config_with_missing_key(dir: &Path, port: u16, db: &str) -> PathBuf {
    let path = dir.join("broken.toml");
    let cert = dir.join("validator-1.crt");
    std::fs::write(
        &path,
        format!(
            "node_id = \"broken\"\nlisten = \"127.0.0.1:{port}\"\ndatabase_url = \"{db}\"\n\
             [keystore]\nkek_file = \"{}\"\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
             coordinator_name = \"coordinator\"\n",
            dir.join("broken.kek").display(),
            cert.display(),
            dir.join("no-such.key").display(),
            cert.display()
        ),
    )
    .unwrap();
    path
}
