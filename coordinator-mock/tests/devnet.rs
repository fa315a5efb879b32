//! The devnet scenario end to end, as the README's run command runs it:
//! real monerod, monero-wallet-rpc, Postgres, processors as child processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use coordinator_mock::devnet::{Options, run};
use tokio_util::sync::CancellationToken;

#[path = "../../processor/tests/common/otlp.rs"]
mod otlp;

fn options(n: usize, t: u32, prefix: &str) -> Options {
    Options {
        n,
        t,
        database_url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        db_prefix: prefix.into(),
        exe: PathBuf::from(env!("CARGO_BIN_EXE_devnet")),
        offline: Vec::new(),
        restart: None,
        keep_running: false,
        rotate: false,
        verbose: true,
        otlp_endpoint: None,
        disturb: None,
        work_dir: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_custody_cycle_completes_with_three_processors() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = otlp::Receiver::start(dir.path());
    let mut options = options(3, 2, "e2e_three");
    options.otlp_endpoint = Some(receiver.endpoint());
    let summary = run(options, CancellationToken::new())
        .await
        .expect("the devnet scenario completes");
    payout_is_one_trace(&receiver, 2);
    assert_eq!(summary.batches.len(), 1);
    assert_eq!(summary.batches[0].1, 5_000_000_000_000, "both deposits");
    assert_eq!(summary.payouts.len(), 1);
    // The processors recorded when the payout's window opened and when it
    // was published: what the operator's latency figure is made of.
    let latency = summary
        .payout_latency
        .expect("a processor recorded the payout's window opening and publication");
    assert!(
        latency < std::time::Duration::from_secs(60),
        "window opened to published: {latency:?}"
    );
    assert_eq!(summary.received, summary.burned);
    assert_eq!(summary.accounting.len(), 3);
    for (name, deposits, paid, fees, unspent) in &summary.accounting {
        assert_eq!(*deposits, paid + fees + unspent, "{name}");
        assert!(*fees > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotation_to_three_of_four_strands_nothing() {
    let mut options = options(3, 2, "e2e_rotate");
    options.rotate = true;
    let summary = run(options, CancellationToken::new())
        .await
        .expect("the devnet scenario with --rotate completes");
    let r = summary.rotation.expect("--rotate reports the rotation");
    assert_eq!(r.new_key, (1, 3, 4));
    assert!(!r.forwards.is_empty());
    assert!(
        r.forwards
            .iter()
            .all(|(_, moved, fee)| *moved > 0 && *fee > 0)
    );
    assert_eq!(r.retired.len(), 3, "key 0 retired on each of its holders");
    let heights: BTreeSet<u64> = r.retired.iter().map(|(_, at)| *at).collect();
    assert_eq!(
        heights.len(),
        1,
        "at the same block everywhere: {:?}",
        r.retired
    );
    assert_eq!(
        r.burns.iter().map(|b| b.2).collect::<Vec<_>>(),
        vec![1, 1],
        "burns after the activation are the new key's"
    );
    assert_eq!(r.accounting.len(), 4);
    for (name, deposits, fwd_in, paid, fees, fwd_out, unspent) in &r.accounting {
        assert_eq!(deposits + fwd_in, paid + fees + fwd_out + unspent, "{name}");
    }
    // Validator-4 holds only the new key: the forwards came in, none left.
    let v4 = &r.accounting[3];
    assert!(v4.2 > 0 && v4.5 == 0, "{v4:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_of_five_with_one_restarted_and_one_offline() {
    let mut options = options(5, 3, "e2e_five");
    // validator-2 is killed with SIGKILL after the deposits and restarted;
    // validator-5 goes offline after key generation and stays offline.
    options.restart = Some(1);
    options.offline = vec![4];
    let summary = run(options, CancellationToken::new())
        .await
        .expect("the devnet scenario completes");
    assert_eq!(summary.batches[0].1, 5_000_000_000_000);
    assert_eq!(summary.received, summary.burned);
    let names: Vec<&str> = summary.accounting.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(
        names,
        ["validator-1", "validator-2", "validator-3", "validator-4"],
        "the four online processors keep exact books (the restarted one too)"
    );
    for (name, deposits, paid, fees, unspent) in &summary.accounting {
        assert_eq!(*deposits, paid + fees + unspent, "{name}");
    }
}

/// The payout's spans, from the leader's plan to the signers' shares, the
/// coordinator's relaying and the publishing, share one trace id.
fn payout_is_one_trace(receiver: &otlp::Receiver, t: usize) {
    // The processors flushed when they stopped; allow the receiver a moment.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spans = receiver.spans();
        let traces: Vec<&str> = spans
            .iter()
            .filter(|s| s["service"] == "processor" && s["name"] == "plan.lead")
            .filter_map(|s| s["trace_id"].as_str())
            .collect();
        let complete = traces.iter().find_map(|trace| {
            let of_trace: Vec<&serde_json::Value> =
                spans.iter().filter(|s| s["trace_id"] == *trace).collect();
            let names: BTreeSet<&str> =
                of_trace.iter().filter_map(|s| s["name"].as_str()).collect();
            let signers: BTreeSet<&str> = of_trace
                .iter()
                .filter(|s| s["service"] == "processor" && s["name"] == "sign.begin")
                .filter_map(|s| s["instance"].as_str())
                .collect();
            let by_coordinator = of_trace
                .iter()
                .any(|s| s["service"] == "coordinator-mock" && s["name"] == "plan.proposal");
            (by_coordinator
                && signers.len() >= t
                && [
                    "plan.check",
                    "sign.preprocess",
                    "sign.share",
                    "plan.publish",
                ]
                .iter()
                .all(|n| names.contains(n)))
            .then_some(())
        });
        if complete.is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no payout trace holds the leader's plan, the coordinator's relay, {t} signers and the publishing; \
             plan.lead traces: {traces:?}; span names: {:?}",
            spans
                .iter()
                .filter_map(|s| s["name"].as_str())
                .collect::<BTreeSet<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
