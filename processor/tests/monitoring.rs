//! The operators' dashboard and alert rules (deploy/monitoring) name only
//! metrics the code exports, and cover what an operator must be woken for.
//! promtool checks the rules' syntax and behaviour in .ci/k8s-check.

use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the processor crate sits in the repository")
        .to_path_buf()
}

/// Every `custody_*` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("custody_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        found.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    found
}

/// The metric names the code declares (string literals in the metrics
/// modules of both binaries).
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in [
        "processor/service/src/metrics.rs",
        "coordinator-mock/src/metrics.rs",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).expect("metrics module is readable");
        for line in text.lines().filter(|l| l.contains("pub const")) {
            names.extend(names_in(line));
        }
    }
    assert!(
        names.len() > 20,
        "found only {names:?}: the metrics modules moved?"
    );
    names
}

/// A histogram's series carry suffixes the code never spells out.
fn base(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

fn unknown(used: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    used.iter()
        .filter(|n| !exported.contains(*n) && !exported.contains(base(n)))
        .cloned()
        .collect()
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(repo().join("deploy/monitoring/dashboard.json"))
        .expect("dashboard is readable");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "the dashboard lost its panels");
    let mut used = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            used.extend(names_in(target["expr"].as_str().expect("expr")));
        }
    }
    let exported = exported();
    assert_eq!(
        unknown(&used, &exported),
        Vec::<String>::new(),
        "dashboard queries metrics the code does not export"
    );
    // Each area an operator watches has a panel.
    for must in [
        "custody_link_connected",
        "custody_link_send_backlog",
        "custody_scan_lag_blocks",
        "custody_plans",
        "custody_signing_reattempts_total",
        "custody_db_errors_total",
    ] {
        assert!(used.contains(must), "no panel shows {must}");
    }
}

#[test]
fn the_alert_rules_name_only_exported_metrics_and_cover_the_outages() {
    let text = std::fs::read_to_string(repo().join("deploy/monitoring/alerts.yaml"))
        .expect("alert rules are readable");
    let used: BTreeSet<String> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .flat_map(names_in)
        .collect();
    assert_eq!(
        unknown(&used, &exported()),
        Vec::<String>::new(),
        "alert rules name metrics the code does not export"
    );
    for alert in [
        "CustodyLinkDown",
        "CustodySendBacklogGrowing",
        "CustodyScanLag",
        "CustodyScanningHalted",
        "CustodySigningReattemptsClimbing",
        "CustodyPayoutStuck",
        "CustodyDatabaseErrors",
    ] {
        assert!(
            text.contains(&format!("alert: {alert}\n")),
            "no alert rule {alert}"
        );
    }
}
