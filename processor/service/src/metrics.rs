//! Prometheus metrics, shared by the processor and the coordinator-mock.
//!
//! Counters and histograms are bumped where things happen (the `metrics`
//! macros are no-ops until [`install`] sets the recorder). Gauges that are
//! facts in Postgres (send-log backlog, plans and batches by status) are
//! read from it every few seconds by [`spawn_db_gauges`], so they are right
//! after a restart too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusBuilder;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Link data frames sent for the first time.
pub const LINK_SENT: &str = "custody_link_messages_sent_total";
/// Link data frames sent again (after a reconnect or a peer's resend request).
pub const LINK_REDELIVERED: &str = "custody_link_messages_redelivered_total";
/// Outbound messages the peer acknowledged (durably recorded).
pub const LINK_ACKED: &str = "custody_link_messages_acked_total";
/// Inbound messages handled and committed.
pub const LINK_HANDLED: &str = "custody_link_messages_handled_total";
/// Inbound frames dropped as already handled (redelivered by the peer).
pub const LINK_DEDUPLICATED: &str = "custody_link_messages_deduplicated_total";
/// Inbound messages quarantined (undecodable, unknown or rejected).
pub const LINK_QUARANTINED: &str = "custody_link_messages_quarantined_total";
/// Enqueued outbound messages not yet acknowledged.
pub const LINK_BACKLOG: &str = "custody_link_send_backlog";
/// 1 while a stream to the peer is up.
pub const LINK_CONNECTED: &str = "custody_link_connected";
/// Streams that came up.
pub const LINK_SESSIONS: &str = "custody_link_sessions_total";
/// Inbound messages not handled because of a fault on this side, by `link`
/// and `kind` (`local`: a local fault, retried; `panic`: the handler
/// panicked; `crash`: an earlier process died while handling messages).
pub const LINK_FAULTS: &str = "custody_link_handler_faults_total";
/// Link rows deleted past their retention (labels: link, table).
pub const LINK_PRUNED: &str = "custody_link_pruned_rows_total";

/// The highest finalized (stored) block.
pub const SCAN_FINALIZED: &str = "custody_scan_finalized_height";
/// monerod's chain height.
pub const SCAN_TIP: &str = "custody_scan_tip_height";
/// Blocks between the tip and the next block to store (includes the
/// confirmation depth).
pub const SCAN_LAG: &str = "custody_scan_lag_blocks";
/// Finalized blocks stored.
pub const SCAN_BLOCKS: &str = "custody_scan_blocks_total";
/// Outputs to the group key found.
pub const SCAN_OUTPUTS: &str = "custody_scan_outputs_total";
/// Outputs whose one-time key was received before (never credited).
pub const SCAN_DUPLICATE_OUTPUTS: &str = "custody_scan_duplicate_outputs_total";
/// Time of one scan step (fetch, scan, store).
pub const SCAN_STEP_SECONDS: &str = "custody_scan_step_seconds";

/// Batches created from finalized blocks with deposits.
pub const BATCHES_CREATED: &str = "custody_batches_created_total";
/// Batches whose signature verified (coordinator).
pub const BATCHES_SIGNED: &str = "custody_batches_signed_total";
/// Batches by status, from the database.
pub const BATCHES: &str = "custody_batches";
/// Plans by status, from the database.
pub const PLANS: &str = "custody_plans";
/// Payout transactions published (each attempt, re-publishing included).
pub const PAYOUTS_PUBLISHED: &str = "custody_payouts_published_total";
/// Seconds from a window opening on this processor (its first block
/// final here) to this processor publishing the window's payout: what an
/// operator waits for, every hop through the coordinator included.
pub const PAYOUT_PUBLISH_SECONDS: &str = "custody_payout_publish_seconds";
/// Per key (label `session`): what it holds, outputs not spent (atomic
/// units).
pub const KEY_BALANCE: &str = "custody_key_balance_piconero";
/// Per key (labels `session`, `stage`): 1 for the stage it is in from the
/// next block to scan, 0 for the others.
pub const KEY_STAGE: &str = "custody_key_stage";
/// Payouts found final on chain.
pub const PAYOUTS_COMPLETED: &str = "custody_payouts_completed_total";

/// Signing attempts begun (`kind` batch or plan; attempt 0 and re-attempts).
pub const SIGN_ATTEMPTS: &str = "custody_signing_attempts_total";
/// Signing re-attempts after a timeout or a blame.
pub const SIGN_REATTEMPTS: &str = "custody_signing_reattempts_total";
/// Participants blamed in signing.
pub const SIGN_BLAMES: &str = "custody_signing_blames_total";
/// Preprocesses (nonce commitments) a processor sent.
pub const SIGN_PREPROCESSES: &str = "custody_signing_preprocesses_total";
/// Signature shares a processor sent.
pub const SIGN_SHARES: &str = "custody_signing_shares_total";
/// Signatures completed.
pub const SIGN_COMPLETED: &str = "custody_signing_completed_total";
/// From a signing procedure's first attempt to its signature.
pub const SIGN_SECONDS: &str = "custody_signing_duration_seconds";

/// Key generations completed (confirmed by every participant).
pub const KEYGEN_COMPLETED: &str = "custody_keygen_completed_total";
/// Failed key generations re-attempted without their culprits
/// (`outcome="started"`), or not, too few remaining (`outcome="too_few"`).
pub const KEYGEN_REATTEMPTS: &str = "custody_keygen_reattempts_total";
/// From a key generation's start to its confirmation.
pub const KEYGEN_SECONDS: &str = "custody_keygen_duration_seconds";
/// DKG rounds a processor took part in (`round` 1 or 2).
pub const KEYGEN_ROUNDS: &str = "custody_keygen_rounds_total";

/// Database operations that failed (and were retried).
pub const DB_ERRORS: &str = "custody_db_errors_total";
/// monerod calls that failed.
pub const RPC_ERRORS: &str = "custody_rpc_errors_total";

/// Why metrics could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr} (config field `metrics_listen`): {reason}")]
pub struct MetricsError {
    addr: SocketAddr,
    reason: String,
}

/// Installs the global recorder and serves `GET /metrics` on `listen`.
/// Needs a Tokio runtime. Every series carries `service="<service>"`.
pub fn install(listen: SocketAddr, service: &'static str) -> Result<(), MetricsError> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .add_global_label("service", service)
        .set_buckets(&[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ])
        .and_then(|b| b.install())
        .map_err(|e| MetricsError {
            addr: listen,
            reason: e.to_string(),
        })?;
    describe();
    Ok(())
}

fn describe() {
    for (name, help) in [
        (LINK_SENT, "link data frames sent for the first time"),
        (LINK_REDELIVERED, "link data frames sent again"),
        (LINK_ACKED, "outbound messages acknowledged by the peer"),
        (LINK_HANDLED, "inbound messages handled and committed"),
        (
            LINK_DEDUPLICATED,
            "inbound frames dropped as already handled",
        ),
        (LINK_QUARANTINED, "inbound messages quarantined"),
        (LINK_SESSIONS, "link streams that came up"),
        (
            LINK_FAULTS,
            "inbound messages not handled because of a fault on this side (local, panic, crash)",
        ),
        (
            LINK_PRUNED,
            "link rows (send_log, inbox, resolved quarantine) deleted past link.retention",
        ),
        (SCAN_BLOCKS, "finalized blocks stored"),
        (SCAN_OUTPUTS, "outputs to the group key found"),
        (
            SCAN_DUPLICATE_OUTPUTS,
            "outputs whose one-time key was received before: recorded, never credited (the burning bug)",
        ),
        (BATCHES_CREATED, "batches created from finalized blocks"),
        (BATCHES_SIGNED, "batches whose signature verified"),
        (PAYOUTS_PUBLISHED, "payout transactions published"),
        (PAYOUTS_COMPLETED, "payouts found final on chain"),
        (SIGN_ATTEMPTS, "signing attempts begun"),
        (SIGN_REATTEMPTS, "signing re-attempts"),
        (SIGN_BLAMES, "participants blamed in signing"),
        (SIGN_PREPROCESSES, "signing preprocesses sent"),
        (SIGN_SHARES, "signature shares sent"),
        (SIGN_COMPLETED, "signatures completed"),
        (KEYGEN_COMPLETED, "key generations completed"),
        (
            KEYGEN_REATTEMPTS,
            "failed key generations re-attempted without their culprits, or not (too few left)",
        ),
        (KEYGEN_ROUNDS, "DKG rounds taken part in"),
        (DB_ERRORS, "database operations that failed"),
        (RPC_ERRORS, "monerod calls that failed"),
    ] {
        describe_counter!(name, help);
    }
    for (name, help) in [
        (
            LINK_BACKLOG,
            "enqueued outbound messages not yet acknowledged",
        ),
        (LINK_CONNECTED, "1 while a stream to the peer is up"),
        (SCAN_FINALIZED, "highest finalized block stored"),
        (SCAN_TIP, "monerod's chain height"),
        (
            SCAN_LAG,
            "blocks between the tip and the next block to store",
        ),
        (BATCHES, "batches by status"),
        (PLANS, "payout plans by status"),
        (
            KEY_BALANCE,
            "what each key holds: outputs not spent (atomic units)",
        ),
        (
            KEY_STAGE,
            "1 for each key's rotation stage (pending, active, forwarding, finishing, retired)",
        ),
    ] {
        describe_gauge!(name, help);
    }
    describe_histogram!(SCAN_STEP_SECONDS, Unit::Seconds, "one scan step");
    describe_histogram!(SIGN_SECONDS, Unit::Seconds, "first attempt to signature");
    describe_histogram!(
        PAYOUT_PUBLISH_SECONDS,
        Unit::Seconds,
        "window opened to its payout published by this processor"
    );
    describe_histogram!(
        KEYGEN_SECONDS,
        Unit::Seconds,
        "key generation start to confirmation"
    );
}

/// Counts a failed database operation `op`.
pub fn db_error(op: &'static str) {
    metrics::counter!(DB_ERRORS, "op" => op).increment(1);
}

/// A gauge family read from Postgres: `query` returns rows of (label value,
/// count), set as `gauge{label="value"}`; values seen before and now absent
/// go to 0.
#[derive(Debug, Clone, Copy)]
pub struct DbGauge {
    /// The gauge.
    pub name: &'static str,
    /// Its one label.
    pub label: &'static str,
    /// `SELECT <text>, <bigint> ...`.
    pub query: &'static str,
}

/// The send-log backlog per link; both services have `link_state`.
pub const BACKLOG_GAUGE: DbGauge = DbGauge {
    name: LINK_BACKLOG,
    label: "link",
    query: "SELECT link_id, last_enqueued_out - acked_out FROM link_state",
};

/// Refreshes `gauges` every 2 seconds until `shutdown`.
pub fn spawn_db_gauges(pool: PgPool, gauges: Vec<DbGauge>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut seen: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for gauge in &gauges {
                let rows = match sqlx::query(gauge.query).fetch_all(&pool).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        db_error("metrics");
                        warn!(gauge = gauge.name, "reading a gauge failed: {e}");
                        continue;
                    }
                };
                let mut now = BTreeSet::new();
                for row in rows {
                    let (Ok(value), Ok(count)) =
                        (row.try_get::<String, _>(0), row.try_get::<i64, _>(1))
                    else {
                        continue;
                    };
                    #[allow(clippy::cast_precision_loss)]
                    metrics::gauge!(gauge.name, gauge.label => value.clone()).set(count as f64);
                    now.insert(value);
                }
                let before = seen.entry(gauge.name).or_default();
                for gone in before.difference(&now) {
                    metrics::gauge!(gauge.name, gauge.label => gone.clone()).set(0.0);
                }
                before.extend(now);
            }
        }
    });
}
