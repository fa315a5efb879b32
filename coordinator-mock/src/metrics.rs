//! The coordinator's gauges read from its database; the metric names and
//! the exporter are shared with the processor (`service::metrics`).

use service::metrics::{BACKLOG_GAUGE, BATCHES, DbGauge, PLANS};

/// Key generation sessions by status.
pub const KEYGEN_SESSIONS: &str = "custody_keygen_sessions";

/// Send-log backlog per processor, batches, plans and key generations by
/// status.
pub fn db_gauges() -> Vec<DbGauge> {
    vec![
        BACKLOG_GAUGE,
        DbGauge {
            name: BATCHES,
            label: "status",
            query: crate::batches::db::COUNT_BY_STATUS,
        },
        DbGauge {
            name: PLANS,
            label: "status",
            query: crate::payouts::db::COUNT_BY_STATUS,
        },
        DbGauge {
            name: KEYGEN_SESSIONS,
            label: "status",
            query: crate::keygen::db::COUNT_BY_STATUS,
        },
    ]
}
