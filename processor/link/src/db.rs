//! The link's tables (`processor/link/migrations`): `link_state`, `send_log`,
//! `inbox`, `quarantine` and `inbound_tries`. Everything that reads or writes them is here.

use service::db::{to_i64, to_u64};
use sqlx::{PgConnection, PgPool, Row};

/// A message to enqueue for a peer.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// Idempotency key derived from the message's meaning.
    pub uid: String,
    /// Message kind, for the journal and the admin API.
    pub kind: &'static str,
    /// The encoded message.
    pub payload: Vec<u8>,
}

/// A row of the send log, ready to stream.
#[derive(Debug, Clone)]
pub struct OutRow {
    /// Sequence number on the link.
    pub id: u64,
    /// Idempotency key.
    pub uid: String,
    /// The encoded message.
    pub payload: Vec<u8>,
    /// Trace context of the span that enqueued it ("" if none).
    pub traceparent: String,
}

/// The watermarks of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Highest inbound id handled.
    pub last_handled_in: u64,
    /// Highest outbound id assigned.
    pub last_enqueued_out: u64,
    /// Highest outbound id acknowledged by the peer.
    pub acked_out: u64,
}

/// An inbound message handled, for the journal.
#[derive(Debug)]
pub struct InboxRow<'a> {
    /// Sequence number.
    pub id: u64,
    /// The sender's idempotency key.
    pub uid: &'a str,
    /// The message kind.
    pub kind: &'a str,
    /// The raw payload.
    pub payload: &'a [u8],
}

/// An inbound message that could not be acted on.
#[derive(Debug)]
pub struct QuarantineRow<'a> {
    /// Sequence number.
    pub id: u64,
    /// The sender's idempotency key.
    pub uid: &'a str,
    /// The `LinkErrorCode` name.
    pub code: &'a str,
    /// Why.
    pub reason: &'a str,
    /// The raw payload.
    pub payload: &'a [u8],
}

/// Creates the link's row if it does not exist yet, and records the payload
/// limit enqueuers check.
pub async fn ensure_link(
    pool: &PgPool,
    link_id: &str,
    max_payload_bytes: usize,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO link_state (link_id, max_payload_bytes) VALUES ($1, $2)
         ON CONFLICT (link_id) DO UPDATE SET max_payload_bytes = EXCLUDED.max_payload_bytes
         WHERE link_state.max_payload_bytes <> EXCLUDED.max_payload_bytes",
    )
    .bind(link_id)
    .bind(i64::try_from(max_payload_bytes).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// A `link_state` row as [`counters`] reads it.
#[derive(sqlx::FromRow)]
struct CountersRecord {
    last_handled_in: i64,
    last_enqueued_out: i64,
    acked_out: i64,
}

/// Reads a link's watermarks.
pub async fn counters(conn: &mut PgConnection, link_id: &str) -> Result<LinkCounters, sqlx::Error> {
    let row = sqlx::query_as::<_, CountersRecord>(
        "SELECT last_handled_in, last_enqueued_out, acked_out FROM link_state WHERE link_id = $1",
    )
    .bind(link_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map_or_else(LinkCounters::default, |r| LinkCounters {
        last_handled_in: to_u64(r.last_handled_in),
        last_enqueued_out: to_u64(r.last_enqueued_out),
        acked_out: to_u64(r.acked_out),
    }))
}

/// Enqueues messages for a peer inside the caller's transaction and returns
/// the ids given to the ones that were new. A message whose uid is already in
/// the log is skipped: enqueuing the same meaning twice sends it once.
///
/// Ids are gapless and commit in order because every enqueuer first locks the
/// link's row; callers that enqueue to several links in one transaction must
/// do so in a fixed order (sorted by link id) so that they cannot deadlock.
pub async fn enqueue(
    conn: &mut PgConnection,
    link_id: &str,
    messages: &[OutMessage],
) -> Result<Vec<u64>, super::EnqueueError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let (last, limit): (i64, i64) = sqlx::query_as(
        "SELECT last_enqueued_out, max_payload_bytes FROM link_state WHERE link_id = $1 FOR NO KEY UPDATE",
    )
    .bind(link_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| sqlx::Error::RowNotFound)?;
    // The limit is the link's (set from its config at start), so every
    // enqueuer, in any process, checks the same one; nothing is written
    // before it is checked.
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if let Some(m) = messages.iter().find(|m| m.payload.len() > limit) {
        return Err(super::PayloadTooLarge {
            link_id: link_id.to_owned(),
            uid: m.uid.clone(),
            kind: m.kind.to_owned(),
            size: m.payload.len(),
            limit,
        }
        .into());
    }
    let uids: Vec<&str> = messages.iter().map(|m| m.uid.as_str()).collect();
    let kinds: Vec<&str> = messages.iter().map(|m| m.kind).collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    // The row lock makes NOT EXISTS exact; ON CONFLICT is the constraint that
    // guarantees it regardless.
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO send_log (link_id, id, uid, kind, payload, traceparent)
         SELECT $1, $2 + row_number() OVER (ORDER BY f.ord), f.uid, f.kind, f.payload, $6
         FROM (
             SELECT DISTINCT ON (u.uid) u.uid, u.kind, u.payload, u.ord
             FROM UNNEST($3::text[], $4::text[], $5::bytea[]) WITH ORDINALITY AS u(uid, kind, payload, ord)
             WHERE NOT EXISTS (SELECT 1 FROM send_log s WHERE s.link_id = $1 AND s.uid = u.uid)
             ORDER BY u.uid, u.ord
         ) f
         ON CONFLICT (link_id, uid) DO NOTHING
         RETURNING id",
    )
    .bind(link_id)
    .bind(last)
    .bind(&uids)
    .bind(&kinds)
    .bind(&payloads)
    .bind(service::telemetry::current_traceparent())
    .fetch_all(&mut *conn)
    .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let count = i64::try_from(ids.len()).unwrap_or(i64::MAX);
    let max = ids.iter().copied().max().unwrap_or(last);
    if max != last + count {
        // Only reachable if someone wrote send_log without the row lock; a gap
        // would stall the peer, so refuse the whole transaction instead.
        return Err(sqlx::Error::Protocol(format!(
            "send_log for link {link_id} would get a gap (last {last}, {count} new, max {max})"
        ))
        .into());
    }
    sqlx::query("UPDATE link_state SET last_enqueued_out = $2 WHERE link_id = $1")
        .bind(link_id)
        .bind(max)
        .execute(&mut *conn)
        .await?;
    let mut ids: Vec<u64> = ids.into_iter().map(to_u64).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// A `send_log` row as [`fetch_outbound`] reads it.
#[derive(sqlx::FromRow)]
struct OutRecord {
    id: i64,
    uid: String,
    payload: Vec<u8>,
    traceparent: String,
}

/// Reads up to `limit` outbound rows starting at id `from`, in id order,
/// stopping once `max_bytes` of payload are read (always at least one row).
pub async fn fetch_outbound(
    pool: &PgPool,
    link_id: &str,
    from: u64,
    limit: u64,
    max_bytes: usize,
) -> Result<Vec<OutRow>, sqlx::Error> {
    let rows = sqlx::query_as::<_, OutRecord>(
        "SELECT id, uid, payload, traceparent FROM (
             SELECT id, uid, payload, traceparent,
                    sum(length(payload)) OVER (ORDER BY id) - length(payload) AS before
             FROM send_log WHERE link_id = $1 AND id >= $2 ORDER BY id LIMIT $3
         ) s WHERE before < $4 ORDER BY id",
    )
    .bind(link_id)
    .bind(to_i64(from))
    .bind(to_i64(limit))
    .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| OutRow {
            id: to_u64(r.id),
            uid: r.uid,
            payload: r.payload,
            traceparent: r.traceparent,
        })
        .collect())
}

/// Records that the peer acknowledged everything up to `id`. Returns false if
/// `id` is beyond what was ever enqueued (the peer is confused).
pub async fn record_ack(pool: &PgPool, link_id: &str, id: u64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE link_state SET acked_out = GREATEST(acked_out, $2)
         WHERE link_id = $1 AND $2 <= last_enqueued_out",
    )
    .bind(link_id)
    .bind(to_i64(id))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Journals handled inbound messages and quarantined ones, then moves the
/// inbound watermark from `from` to `to`. Fails (and so rolls the caller's
/// transaction back) if the watermark was not at `from`: another writer
/// handled these ids, and handling them again would break exactly-once.
/// With `clear_tries`, the failed-try counts of these ids go too.
/// `text` as Postgres can store it in a TEXT column, which refuses the NUL
/// character: a peer's uid or a reason quoting a peer's string may hold one,
/// and an insert that fails would be retried forever (the link would wedge).
/// The uid is only journaled here (duplicates are found by id), so replacing
/// NUL loses nothing.
pub fn pg_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

pub async fn record_inbound(
    conn: &mut PgConnection,
    link_id: &str,
    handled: &[InboxRow<'_>],
    quarantined: &[QuarantineRow<'_>],
    from: u64,
    to: u64,
    clear_tries: bool,
) -> Result<(), sqlx::Error> {
    if !handled.is_empty() {
        let ids: Vec<i64> = handled.iter().map(|r| to_i64(r.id)).collect();
        let uids: Vec<String> = handled
            .iter()
            .map(|r| pg_text(r.uid).into_owned())
            .collect();
        let kinds: Vec<&str> = handled.iter().map(|r| r.kind).collect();
        let payloads: Vec<&[u8]> = handled.iter().map(|r| r.payload).collect();
        sqlx::query(
            "INSERT INTO inbox (link_id, id, uid, kind, payload)
             SELECT $1, u.id, u.uid, u.kind, u.payload
             FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::bytea[]) AS u(id, uid, kind, payload)",
        )
        .bind(link_id)
        .bind(&ids)
        .bind(&uids)
        .bind(&kinds)
        .bind(&payloads)
        .execute(&mut *conn)
        .await?;
    }
    for q in quarantined {
        sqlx::query(
            "INSERT INTO quarantine (link_id, id, uid, code, reason, payload) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(link_id)
        .bind(to_i64(q.id))
        .bind(pg_text(q.uid))
        .bind(q.code)
        .bind(pg_text(q.reason))
        .bind(q.payload)
        .execute(&mut *conn)
        .await?;
    }
    if clear_tries {
        sqlx::query("DELETE FROM inbound_tries WHERE link_id = $1 AND id <= $2")
            .bind(link_id)
            .bind(to_i64(to))
            .execute(&mut *conn)
            .await?;
    }
    let moved = sqlx::query(
        "UPDATE link_state SET last_handled_in = $3 WHERE link_id = $1 AND last_handled_in = $2",
    )
    .bind(link_id)
    .bind(to_i64(from))
    .bind(to_i64(to))
    .execute(&mut *conn)
    .await?;
    if moved.rows_affected() != 1 {
        return Err(sqlx::Error::Protocol(format!(
            "inbound watermark of link {link_id} is no longer {from}: another session handled these messages"
        )));
    }
    Ok(())
}

/// Which inbound ids a process was handling when it last began a batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandlingMark {
    /// First id of the batch.
    pub from: u64,
    /// Last id of the batch.
    pub to: u64,
    /// The process that began it (random per start; empty: none).
    pub boot: String,
}

/// Reads a link's handling mark.
pub async fn handling_mark(pool: &PgPool, link_id: &str) -> Result<HandlingMark, sqlx::Error> {
    let row: Option<(i64, i64, String)> = sqlx::query_as(
        "SELECT handling_from, handling_to, handling_boot FROM link_state WHERE link_id = $1",
    )
    .bind(link_id)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map_or_else(HandlingMark::default, |(from, to, boot)| HandlingMark {
            from: to_u64(from),
            to: to_u64(to),
            boot,
        }),
    )
}

/// Records, before a batch is handled, which ids this process is handling,
/// so that its successor can tell a message the process died on. Committed
/// without waiting for the disk (`synchronous_commit = off`): it must only
/// outlive this process, not Postgres, and it must cost next to nothing.
pub async fn mark_handling(
    pool: &PgPool,
    link_id: &str,
    mark: &HandlingMark,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE link_state SET handling_from = $2, handling_to = $3, handling_boot = $4 WHERE link_id = $1",
    )
    .bind(link_id)
    .bind(to_i64(mark.from))
    .bind(to_i64(mark.to))
    .bind(&mark.boot)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Failed tries (handler panics, process deaths) of inbound messages not
/// yet handled: id -> (tries, the last failure).
pub async fn inbound_tries(
    pool: &PgPool,
    link_id: &str,
    after: u64,
) -> Result<std::collections::BTreeMap<u64, (u32, String)>, sqlx::Error> {
    let rows: Vec<(i64, i32, String)> = sqlx::query_as(
        "SELECT id, tries, last_failure FROM inbound_tries WHERE link_id = $1 AND id > $2",
    )
    .bind(link_id)
    .bind(to_i64(after))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, tries, failure)| (to_u64(id), (u32::try_from(tries).unwrap_or(0), failure)))
        .collect())
}

/// Counts one failed try of inbound message `id` (committed at once, so a
/// crash loop is bounded too) and returns the count so far.
pub async fn record_try(
    pool: &PgPool,
    link_id: &str,
    id: u64,
    failure: &str,
) -> Result<u32, sqlx::Error> {
    let tries: i32 = sqlx::query_scalar(
        "INSERT INTO inbound_tries (link_id, id, tries, last_failure) VALUES ($1, $2, 1, $3)
         ON CONFLICT (link_id, id) DO UPDATE
         SET tries = inbound_tries.tries + 1, last_failure = EXCLUDED.last_failure
         RETURNING tries",
    )
    .bind(link_id)
    .bind(to_i64(id))
    .bind(failure)
    .fetch_one(pool)
    .await?;
    Ok(u32::try_from(tries).unwrap_or(0))
}

/// Number of quarantined inbound messages on a link.
pub async fn quarantined_count(pool: &PgPool, link_id: &str) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantine WHERE link_id = $1")
        .bind(link_id)
        .fetch_one(pool)
        .await?;
    Ok(to_u64(n))
}

/// A send-log row for the admin API.
#[derive(Debug, Clone)]
pub struct SendLogView {
    /// Sequence number.
    pub id: u64,
    /// Idempotency key.
    pub uid: String,
    /// Message kind.
    pub kind: String,
    /// Payload size.
    pub size: u32,
    /// Acknowledged by the peer.
    pub acked: bool,
    /// Enqueue time, Unix ms.
    pub created_unix_ms: i64,
}

/// A `send_log` row, with its link's acknowledgement, as [`list_send_log`]
/// reads it.
#[derive(sqlx::FromRow)]
struct SendLogRecord {
    id: i64,
    uid: String,
    kind: String,
    size: i32,
    acked: bool,
    created_unix_ms: i64,
}

/// Lists send-log rows after `after` (admin API).
pub async fn list_send_log(
    pool: &PgPool,
    link_id: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<SendLogView>, sqlx::Error> {
    let rows = sqlx::query_as::<_, SendLogRecord>(
        "SELECT s.id, s.uid, s.kind, length(s.payload) AS size, s.id <= l.acked_out AS acked,
                (extract(epoch from s.created_at) * 1000)::bigint AS created_unix_ms
         FROM send_log s JOIN link_state l USING (link_id)
         WHERE s.link_id = $1 AND s.id > $2 ORDER BY s.id LIMIT $3",
    )
    .bind(link_id)
    .bind(to_i64(after))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| SendLogView {
            id: to_u64(r.id),
            uid: r.uid,
            kind: r.kind,
            size: u32::try_from(r.size).unwrap_or(0),
            acked: r.acked,
            created_unix_ms: r.created_unix_ms,
        })
        .collect())
}

/// An inbox row for the admin API.
#[derive(Debug, Clone)]
pub struct InboxView {
    /// Sequence number.
    pub id: u64,
    /// Sender's idempotency key.
    pub uid: String,
    /// Message kind.
    pub kind: String,
    /// Payload size.
    pub size: u32,
    /// Handling time, Unix ms.
    pub handled_unix_ms: i64,
}

/// An `inbox` row as [`list_inbox`] reads it.
#[derive(sqlx::FromRow)]
struct InboxRecord {
    id: i64,
    uid: String,
    kind: String,
    size: i32,
    handled_unix_ms: i64,
}

/// Lists inbox rows after `after` (admin API).
pub async fn list_inbox(
    pool: &PgPool,
    link_id: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<InboxView>, sqlx::Error> {
    let rows = sqlx::query_as::<_, InboxRecord>(
        "SELECT id, uid, kind, length(payload) AS size,
                (extract(epoch from handled_at) * 1000)::bigint AS handled_unix_ms
         FROM inbox WHERE link_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(link_id)
    .bind(to_i64(after))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| InboxView {
            id: to_u64(r.id),
            uid: r.uid,
            kind: r.kind,
            size: u32::try_from(r.size).unwrap_or(0),
            handled_unix_ms: r.handled_unix_ms,
        })
        .collect())
}

/// A quarantine row for the admin API.
#[derive(Debug, Clone)]
pub struct QuarantineView {
    /// Sequence number.
    pub id: u64,
    /// Sender's idempotency key.
    pub uid: String,
    /// `LinkErrorCode` name.
    pub code: String,
    /// Why.
    pub reason: String,
    /// Raw payload.
    pub payload: Vec<u8>,
    /// Quarantine time, Unix ms.
    pub quarantined_unix_ms: i64,
    /// Resolution time, Unix ms (0: unresolved).
    pub resolved_unix_ms: i64,
    /// The operator's note resolving it.
    pub resolution: String,
}

/// Lists quarantine rows after `after` (admin API).
pub async fn list_quarantine(
    pool: &PgPool,
    link_id: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<QuarantineView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, uid, code, reason, payload,
                (extract(epoch from quarantined_at) * 1000)::bigint AS quarantined_ms,
                COALESCE((extract(epoch from resolved_at) * 1000)::bigint, 0) AS resolved_ms,
                resolution
         FROM quarantine WHERE link_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(link_id)
    .bind(to_i64(after))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(QuarantineView {
                id: to_u64(r.try_get("id")?),
                uid: r.try_get("uid")?,
                code: r.try_get("code")?,
                reason: r.try_get("reason")?,
                payload: r.try_get("payload")?,
                quarantined_unix_ms: r.try_get("quarantined_ms")?,
                resolved_unix_ms: r.try_get("resolved_ms")?,
                resolution: r.try_get("resolution")?,
            })
        })
        .collect()
}

/// Rows one pruning pass deleted on a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Acknowledged send-log rows.
    pub send_log: u64,
    /// Inbox journal rows.
    pub inbox: u64,
    /// Resolved quarantine entries.
    pub quarantine: u64,
}

impl Pruned {
    /// Rows in all.
    pub fn total(&self) -> u64 {
        self.send_log + self.inbox + self.quarantine
    }
}

/// Deletes at most `batch` rows of each pruned table on `link_id` older
/// than `older_than_secs`, counting them in `link_state` in the same
/// statement. A send-log row goes only once the peer acknowledged it (a
/// peer resumes after its acknowledgement, never at or before it); a
/// quarantine entry only once an operator resolved it.
pub async fn prune_batch(
    pool: &PgPool,
    link_id: &str,
    older_than_secs: f64,
    batch: i64,
) -> Result<Pruned, sqlx::Error> {
    let row = sqlx::query(
        "WITH sent AS (
           DELETE FROM send_log WHERE link_id = $1 AND id IN (
             SELECT s.id FROM send_log s JOIN link_state l USING (link_id)
             WHERE s.link_id = $1 AND s.id <= l.acked_out
               AND s.created_at < now() - make_interval(secs => $2)
             ORDER BY s.id LIMIT $3)
           RETURNING 1),
         handled AS (
           DELETE FROM inbox WHERE link_id = $1 AND id IN (
             SELECT id FROM inbox WHERE link_id = $1
               AND handled_at < now() - make_interval(secs => $2)
             ORDER BY id LIMIT $3)
           RETURNING 1),
         resolved AS (
           DELETE FROM quarantine WHERE link_id = $1 AND id IN (
             SELECT id FROM quarantine WHERE link_id = $1
               AND resolved_at < now() - make_interval(secs => $2)
             ORDER BY id LIMIT $3)
           RETURNING 1),
         counted AS (
           SELECT (SELECT count(*) FROM sent) AS sent,
                  (SELECT count(*) FROM handled) AS handled,
                  (SELECT count(*) FROM resolved) AS resolved)
         UPDATE link_state SET
           pruned_send_log = pruned_send_log + counted.sent,
           pruned_inbox = pruned_inbox + counted.handled,
           pruned_quarantine = pruned_quarantine + counted.resolved,
           last_pruned_at = now()
         FROM counted WHERE link_id = $1
         RETURNING counted.sent, counted.handled, counted.resolved",
    )
    .bind(link_id)
    .bind(older_than_secs)
    .bind(batch)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(Pruned::default());
    };
    Ok(Pruned {
        send_log: to_u64(row.try_get("sent")?),
        inbox: to_u64(row.try_get("handled")?),
        quarantine: to_u64(row.try_get("resolved")?),
    })
}

/// What pruning removed on a link so far, and when it last ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrunedTotals {
    /// Rows deleted, by table.
    pub rows: Pruned,
    /// When a pass last ran on this link (Unix ms; 0: never).
    pub last_pruned_unix_ms: i64,
}

/// Reads the pruning totals of a link.
pub async fn pruned_totals(pool: &PgPool, link_id: &str) -> Result<PrunedTotals, sqlx::Error> {
    let row = sqlx::query(
        "SELECT pruned_send_log, pruned_inbox, pruned_quarantine,
                COALESCE((extract(epoch from last_pruned_at) * 1000)::bigint, 0) AS last_ms
         FROM link_state WHERE link_id = $1",
    )
    .bind(link_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(PrunedTotals::default());
    };
    Ok(PrunedTotals {
        rows: Pruned {
            send_log: to_u64(row.try_get("pruned_send_log")?),
            inbox: to_u64(row.try_get("pruned_inbox")?),
            quarantine: to_u64(row.try_get("pruned_quarantine")?),
        },
        last_pruned_unix_ms: row.try_get("last_ms")?,
    })
}

/// Marks a quarantined message resolved with the operator's `note`; from
/// then on it is pruned once older than the retention. `Ok(false)`: no such
/// entry. Resolving again keeps the first resolution.
pub async fn resolve_quarantine(
    pool: &PgPool,
    link_id: &str,
    id: u64,
    note: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE quarantine SET resolved_at = COALESCE(resolved_at, now()),
                resolution = CASE WHEN resolved_at IS NULL THEN $3 ELSE resolution END
         WHERE link_id = $1 AND id = $2",
    )
    .bind(link_id)
    .bind(to_i64(id))
    .bind(pg_text(note).as_ref())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Where one link stands: its watermarks and the messages enqueued but not
/// yet acknowledged. A processor's key backup carries it so that a restored
/// processor greets its coordinator with the ids the coordinator expects
/// (otherwise `Hello` is refused as a state mismatch) and still sends what
/// the coordinator has not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPosition {
    /// The peer's name on this side.
    pub link_id: String,
    /// The watermarks.
    pub counters: LinkCounters,
    /// Send-log rows above `acked_out`, in id order.
    pub unacked: Vec<PendingRow>,
}

/// A send-log row the peer has not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    /// Sequence number on the link.
    pub id: u64,
    /// Idempotency key.
    pub uid: String,
    /// Message kind.
    pub kind: String,
    /// The encoded message.
    pub payload: Vec<u8>,
}

/// Every link's position, read in the caller's (snapshot) transaction.
pub async fn positions(conn: &mut PgConnection) -> Result<Vec<LinkPosition>, sqlx::Error> {
    let links = sqlx::query(
        "SELECT link_id, last_handled_in, last_enqueued_out, acked_out FROM link_state ORDER BY link_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(links.len());
    for r in links {
        let link_id: String = r.try_get("link_id")?;
        let counters = LinkCounters {
            last_handled_in: to_u64(r.try_get("last_handled_in")?),
            last_enqueued_out: to_u64(r.try_get("last_enqueued_out")?),
            acked_out: to_u64(r.try_get("acked_out")?),
        };
        let rows = sqlx::query(
            "SELECT id, uid, kind, payload FROM send_log WHERE link_id = $1 AND id > $2 ORDER BY id",
        )
        .bind(&link_id)
        .bind(to_i64(counters.acked_out))
        .fetch_all(&mut *conn)
        .await?;
        let mut unacked = Vec::with_capacity(rows.len());
        for r in rows {
            unacked.push(PendingRow {
                id: to_u64(r.try_get("id")?),
                uid: r.try_get("uid")?,
                kind: r.try_get("kind")?,
                payload: r.try_get("payload")?,
            });
        }
        out.push(LinkPosition {
            link_id,
            counters,
            unacked,
        });
    }
    Ok(out)
}

/// Whether any link exists: a database that has talked to a peer.
pub async fn any_link(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM link_state)")
        .fetch_one(conn)
        .await
}

/// Recreates a link at `position` in the caller's transaction (restoring a
/// key backup into an empty database). The caller checked there is no such
/// link yet; the primary key refuses a second one anyway.
pub async fn restore_position(
    conn: &mut PgConnection,
    position: &LinkPosition,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO link_state (link_id, last_handled_in, last_enqueued_out, acked_out)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&position.link_id)
    .bind(to_i64(position.counters.last_handled_in))
    .bind(to_i64(position.counters.last_enqueued_out))
    .bind(to_i64(position.counters.acked_out))
    .execute(&mut *conn)
    .await?;
    for row in &position.unacked {
        sqlx::query(
            "INSERT INTO send_log (link_id, id, uid, kind, payload) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&position.link_id)
        .bind(to_i64(row.id))
        .bind(&row.uid)
        .bind(&row.kind)
        .bind(&row.payload)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The payload of the newest message of `kind` enqueued for `link_id`.
pub async fn last_sent(
    pool: &PgPool,
    link_id: &str,
    kind: &str,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT payload FROM send_log WHERE link_id = $1 AND kind = $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(link_id)
    .bind(kind)
    .fetch_optional(pool)
    .await
}
