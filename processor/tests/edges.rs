//! The edges a new user meets with grpcurl: `SubmitBurn` refuses a bad
//! address (malformed or of another network) and a bad amount (zero, above
//! `i64::MAX`) with `InvalidArgument` before anything is stored, never
//! clamping; and each server's reflection lists only what it serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use monero_address::{MoneroAddress, Network};
use sqlx::PgPool;

use common::*;

/// Monero's donation address: a valid mainnet address, the network the
/// processors pay (regtest uses mainnet prefixes too).
const MAINNET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn grpcurl_run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(grpcurl())
        .args(args)
        .output()
        .expect("run grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A coordinator-mock (the real binary) with no processors, its admin API
/// on a free port.
struct Coordinator {
    addr: String,
    pool: PgPool,
    _proc: Proc,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

impl Coordinator {
    async fn start(tag: &str) -> Self {
        let db = TestDb::new(tag).await;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"{}\"\nprocessors = []\n\
             [tls]\ninsecure = true\n",
            db.url
        );
        let proc = spawn(&coordinator_bin(), "coordinator", dir.path(), &config, &[]);
        wait_port(port).await;
        Self {
            addr: format!("127.0.0.1:{port}"),
            pool: db.pool().await,
            _proc: proc,
            _db: db,
            _dir: dir,
        }
    }

    /// Calls `SubmitBurn` with `body`: (succeeded, stdout, stderr).
    fn submit_burn(&self, body: &str) -> (bool, String, String) {
        grpcurl_run(&[
            "-plaintext",
            "-d",
            body,
            &self.addr,
            "coordinator.v1.CoordinatorAdmin/SubmitBurn",
        ])
    }

    /// Asserts `body` is refused with `InvalidArgument` and a message holding
    /// every one of `mentions`.
    fn refused(&self, body: &str, mentions: &[&str]) {
        let (ok, stdout, stderr) = self.submit_burn(body);
        assert!(!ok, "SubmitBurn {body} was accepted: {stdout}");
        assert!(
            stderr.contains("Code: InvalidArgument"),
            "SubmitBurn {body}: {stderr}"
        );
        for m in mentions {
            assert!(
                stderr.contains(m),
                "SubmitBurn {body}: {m:?} not in {stderr}"
            );
        }
    }

    async fn burns(&self) -> Vec<(String, String, i64)> {
        sqlx::query_as("SELECT burn_id, monero_address, amount FROM burns ORDER BY seq")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

/// `MAINNET`'s keys under another network's prefix.
fn on_network(network: Network) -> String {
    let a = MoneroAddress::from_str(Network::Mainnet, MAINNET).unwrap();
    MoneroAddress::new(network, *a.kind(), a.spend(), a.view()).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_burn_refuses_a_malformed_address() {
    let c = Coordinator::start("edge_addr").await;
    c.refused(
        r#"{"monero_address": "notanaddress", "amount": "1000000000000"}"#,
        &["monero_address", "\"notanaddress\"", "not a Monero address"],
    );
    c.refused(
        r#"{"amount": "1000000000000"}"#,
        &["monero_address is required"],
    );
    assert_eq!(c.burns().await, vec![], "nothing is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_burn_refuses_a_zero_amount() {
    let c = Coordinator::start("edge_zero").await;
    let body = format!(r#"{{"monero_address": "{MAINNET}", "amount": "0"}}"#);
    c.refused(&body, &["amount 0", "at least 1 piconero"]);
    // No amount at all is the same zero to proto3.
    c.refused(
        &format!(r#"{{"monero_address": "{MAINNET}"}}"#),
        &["amount 0"],
    );
    assert_eq!(c.burns().await, vec![], "nothing is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_burn_refuses_an_amount_above_i64_max_and_stores_nothing() {
    let c = Coordinator::start("edge_max").await;
    for too_much in ["18446744073709551615", "9223372036854775808"] {
        let body = format!(
            r#"{{"burn_id": "huge", "monero_address": "{MAINNET}", "amount": "{too_much}"}}"#
        );
        c.refused(
            &body,
            &[
                &format!("amount {too_much}"),
                "9223372036854775807",
                "give a smaller amount",
            ],
        );
    }
    assert_eq!(
        c.burns().await,
        vec![],
        "nothing is stored (it used to be clamped to i64::MAX)"
    );
    // The largest storable amount itself is accepted, exactly.
    let (ok, stdout, stderr) = c.submit_burn(&format!(
        r#"{{"burn_id": "max", "monero_address": "{MAINNET}", "amount": "9223372036854775807"}}"#
    ));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"burnId\": \"max\""), "{stdout}");
    assert_eq!(
        c.burns().await,
        vec![("max".to_owned(), MAINNET.to_owned(), i64::MAX)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_burn_refuses_an_address_of_another_network() {
    let c = Coordinator::start("edge_net").await;
    for (network, name) in [
        (Network::Testnet, "Testnet"),
        (Network::Stagenet, "Stagenet"),
    ] {
        let address = on_network(network);
        c.refused(
            &format!(r#"{{"monero_address": "{address}", "amount": "1000000000000"}}"#),
            &[
                &format!("monero_address {address:?} is a {name} address"),
                "give a Mainnet address",
            ],
        );
    }
    assert_eq!(c.burns().await, vec![], "nothing is stored");
    // The same keys on mainnet are a payable burn.
    let (ok, stdout, stderr) = c.submit_burn(&format!(
        r#"{{"monero_address": "{MAINNET}", "amount": "1000000000000"}}"#
    ));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"burnId\": \"burn-"), "{stdout}");
    assert_eq!(c.burns().await.len(), 1);
}

/// The services `grpcurl list` shows, sorted.
fn listed(addr: &str) -> Vec<String> {
    let (ok, stdout, stderr) = grpcurl_run(&["-plaintext", addr, "list"]);
    assert!(ok, "grpcurl list {addr}: {stderr}");
    let mut services: Vec<String> = stdout.lines().map(str::to_owned).collect();
    services.sort();
    services
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_only_what_each_server_serves() {
    let pdb = TestDb::new("edge_refl_p").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _processor = spawn_processor("validator-1", dir.path(), port, &pdb.url, &[]);
    let c = Coordinator::start("edge_refl_c").await;
    wait_port(port).await;

    assert_eq!(
        listed(&format!("127.0.0.1:{port}")),
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "processor.v1.Processor",
            "processor.v1.ProcessorAdmin",
        ],
        "the processor lists no coordinator.v1.CoordinatorAdmin (it answers it Unimplemented)"
    );
    assert_eq!(
        listed(&c.addr),
        [
            "coordinator.v1.CoordinatorAdmin",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ],
        "the coordinator lists no processor.v1 service"
    );
    // Every listed service is described (reflection of both versions too).
    for (addr, service) in [
        (
            format!("127.0.0.1:{port}"),
            "grpc.reflection.v1alpha.ServerReflection",
        ),
        (c.addr.clone(), "grpc.reflection.v1.ServerReflection"),
        (c.addr.clone(), "coordinator.v1.CoordinatorAdmin"),
    ] {
        let (ok, stdout, stderr) = grpcurl_run(&["-plaintext", &addr, "describe", service]);
        assert!(
            ok && stdout.contains("service"),
            "describe {service}: {stderr}"
        );
    }
}
