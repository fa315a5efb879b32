//! Retention on the exactly-once link (issue 14): acknowledged send-log
//! rows, inbox journal rows and resolved quarantine entries older than
//! `link.retention` are deleted in bounded batches; nothing a peer may still
//! ask for, and no unresolved quarantine entry, ever goes. Before, every
//! row was kept forever.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use processor::link::OutMessage;
use processor::link::db as link_db;
use sqlx::PgPool;

/// Backdates every row of the link tables by `minutes`, as if that much time
/// had passed since they were written.
async fn age(pool: &PgPool, minutes: i32) {
    for statement in [
        "UPDATE send_log SET created_at = created_at - make_interval(mins => $1)",
        "UPDATE inbox SET handled_at = handled_at - make_interval(mins => $1)",
        "UPDATE quarantine SET quarantined_at = quarantined_at - make_interval(mins => $1),
                               resolved_at = resolved_at - make_interval(mins => $1)",
    ] {
        sqlx::query(statement)
            .bind(minutes)
            .execute(pool)
            .await
            .unwrap();
    }
}

async fn ids(pool: &PgPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {table} ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The rules, on a real database: only acknowledged send-log rows, only
/// rows older than the retention, only resolved quarantine entries; in
/// batches of the configured size; counted in `link_state`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_deletes_only_what_nobody_can_need_in_bounded_batches() {
    let db = TestDb::new("retain").await;
    let pool = db.pool().await;
    processor::db::migrate(&pool, &db.url).await.unwrap();
    link_db::ensure_link(&pool, "peer", 1 << 20).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let messages: Vec<OutMessage> = (1..=7)
        .map(|i| OutMessage {
            uid: format!("m/{i}"),
            kind: "test",
            payload: vec![7; 16],
        })
        .collect();
    link_db::enqueue(&mut conn, "peer", &messages)
        .await
        .unwrap();
    drop(conn);
    // The peer acknowledged 1..=5; 6 and 7 it may still ask for.
    assert!(link_db::record_ack(&pool, "peer", 5).await.unwrap());
    for id in 1..=3_i64 {
        sqlx::query(
            "INSERT INTO inbox (link_id, id, uid, kind, payload) VALUES ('peer', $1, 'in', 'test', '')",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    for id in 4..=5_i64 {
        sqlx::query(
            "INSERT INTO quarantine (link_id, id, uid, code, reason, payload)
             VALUES ('peer', $1, 'q', 'LINK_ERROR_CODE_REJECTED', 'test', '')",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    assert!(
        link_db::resolve_quarantine(&pool, "peer", 4, "replayed by hand")
            .await
            .unwrap()
    );
    assert!(
        !link_db::resolve_quarantine(&pool, "peer", 99, "no such")
            .await
            .unwrap()
    );

    // Young rows stay, whatever their state.
    let retention = 3600.0;
    let p = link_db::prune_batch(&pool, "peer", retention, 1000)
        .await
        .unwrap();
    assert_eq!(p, link_db::Pruned::default());

    age(&pool, 120).await;
    // Two rows of each table per statement: the first batch is full.
    let p = link_db::prune_batch(&pool, "peer", retention, 2)
        .await
        .unwrap();
    assert_eq!(
        (p.send_log, p.inbox, p.quarantine),
        (2, 2, 1),
        "bounded by the batch size"
    );
    let p = link_db::prune_batch(&pool, "peer", retention, 2)
        .await
        .unwrap();
    assert_eq!((p.send_log, p.inbox, p.quarantine), (2, 1, 0));
    let p = link_db::prune_batch(&pool, "peer", retention, 2)
        .await
        .unwrap();
    assert_eq!((p.send_log, p.inbox, p.quarantine), (1, 0, 0));

    assert_eq!(
        ids(&pool, "send_log").await,
        vec![6, 7],
        "unacknowledged rows stay"
    );
    assert!(ids(&pool, "inbox").await.is_empty());
    assert_eq!(
        ids(&pool, "quarantine").await,
        vec![5],
        "unresolved entries stay"
    );
    let totals = link_db::pruned_totals(&pool, "peer").await.unwrap();
    assert_eq!(
        (
            totals.rows.send_log,
            totals.rows.inbox,
            totals.rows.quarantine
        ),
        (5, 3, 1)
    );
    assert!(totals.last_pruned_unix_ms > 0);
    // The watermarks pruning relies on are untouched.
    let mut conn = pool.acquire().await.unwrap();
    let counters = link_db::counters(&mut conn, "peer").await.unwrap();
    assert_eq!((counters.last_enqueued_out, counters.acked_out), (7, 5));
}

fn grpcurl_call(port: u16, method: &str, body: &str) -> (bool, String) {
    let out = Command::new(grpcurl())
        .args([
            "-plaintext",
            "-emit-defaults",
            "-d",
            body,
            &format!("127.0.0.1:{port}"),
            &format!("processor.v1.ProcessorAdmin/{method}"),
        ])
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

/// The processor's background task prunes on its own, and an operator
/// resolves a quarantined message with the real grpcurl; `GetStatus` shows
/// what went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_prunes_in_the_background_and_operators_resolve_quarantine() {
    let db = TestDb::new("retainp").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _processor = spawn_processor(
        "validator-1",
        dir.path(),
        port,
        &db.url,
        &[
            ("PROCESSOR_LINK__RETENTION", "1m"),
            ("PROCESSOR_LINK__PRUNE_INTERVAL", "300ms"),
        ],
    );
    wait_port(port).await;
    let pool = db.pool().await;
    eventually("the processor migrated", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM link_state")
                .fetch_one(&pool)
                .await
                .is_ok_and(|n| n > 0)
                .then_some(())
        }
    })
    .await;
    // A journal entry, and two quarantined messages (as the link writes
    // them), all old; its identity announcement, old and acknowledged.
    sqlx::query(
        "INSERT INTO inbox (link_id, id, uid, kind, payload) VALUES ('coordinator', 1, 'in', 'link_probe', '')",
    )
    .execute(&pool)
    .await
    .unwrap();
    for id in [2_i64, 3] {
        sqlx::query(
            "INSERT INTO quarantine (link_id, id, uid, code, reason, payload)
             VALUES ('coordinator', $1, 'q', 'LINK_ERROR_CODE_MALFORMED_PAYLOAD', 'not protobuf', '\\xff')",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    let sent = ids(&pool, "send_log").await;
    assert!(!sent.is_empty(), "the processor announced its identity");
    let acked = sent[0];
    sqlx::query("UPDATE link_state SET acked_out = $1")
        .bind(acked)
        .execute(&pool)
        .await
        .unwrap();
    age(&pool, 5).await;

    let status = || grpcurl_call(port, "GetStatus", "{}").1;
    eventually("the old rows pruned", Duration::from_secs(30), || {
        let s = status();
        async move {
            (s.contains("\"prunedSendLog\": \"1\"") && s.contains("\"prunedInbox\": \"1\""))
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        ids(&pool, "quarantine").await,
        vec![2, 3],
        "unresolved entries stay, however old"
    );
    assert!(status().contains("\"prunedQuarantine\": \"0\""));

    // Resolving needs a note and an entry that exists.
    let (ok, out) = grpcurl_call(port, "ResolveQuarantine", r#"{"id": 2, "note": "  "}"#);
    assert!(
        !ok && out.contains("InvalidArgument") && out.contains("note is required"),
        "{out}"
    );
    let (ok, out) = grpcurl_call(port, "ResolveQuarantine", r#"{"id": 9, "note": "x"}"#);
    assert!(!ok && out.contains("NotFound"), "{out}");
    let (ok, out) = grpcurl_call(
        port,
        "ResolveQuarantine",
        r#"{"id": 2, "note": "garbage from a test peer; nothing to replay"}"#,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("\"resolution\": \"garbage from a test peer; nothing to replay\""),
        "{out}"
    );
    // Resolved now: pruned once it is older than the retention.
    age(&pool, 5).await;
    eventually("the resolved entry pruned", Duration::from_secs(30), || {
        let s = status();
        async move { s.contains("\"prunedQuarantine\": \"1\"").then_some(()) }
    })
    .await;
    assert_eq!(ids(&pool, "quarantine").await, vec![3]);
    assert!(ids(&pool, "inbox").await.is_empty());
    assert!(!ids(&pool, "send_log").await.contains(&acked));
}
