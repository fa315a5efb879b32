//! The exactly-once link between a processor and its coordinator.
//!
//! One engine serves both ends: the processor accepts streams
//! ([`Link::accept`]), the coordinator dials them ([`Link::dial`]); the wire
//! types of each direction are fixed by a [`Side`].
//!
//! * Inbound data frames are handled in batches, each batch in one Postgres
//!   transaction that holds the message effects, the journal rows and the new
//!   inbound watermark; the `Ack` leaves only after the commit.
//! * Outbound messages are rows of `send_log`, enqueued with [`enqueue`] in the
//!   transaction that caused them. A pump streams them in id order, keeps at
//!   most `max_in_flight` unacknowledged, and restarts after the peer's
//!   `last_handled_id` on every new stream.
//! * Heartbeats: a `Ping` every `heartbeat_interval`; a stream that hears
//!   nothing for `peer_timeout` is dropped.
//!
//! The crate owns its tables (`link_state`, `send_log`, `inbox`,
//! `quarantine`, `inbound_tries`; their SQL lives only in [`db`]) and their
//! migrations ([`MIGRATOR`]), which both ends apply to their own database.

pub mod db;
pub mod frame;

/// The link's migrations (`processor/link/migrations`, versions 1–99), applied
/// by both ends together with their own through `service::db::migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use prost::Message as _;
use proto::processor_v1::{Ack, Data, Hello, LinkError, LinkErrorCode, Ping, Pong};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

pub use db::OutMessage;
pub use frame::{CoordinatorSide, LinkFrame, ProcessorSide, Side};

/// Tuning of a link; the defaults suit a LAN or loopback.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    /// How often a heartbeat `Ping` is sent.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A stream that hears nothing from the peer for this long is dropped.
    /// Must be longer than the heartbeat interval.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// Most inbound messages handled in one transaction.
    pub max_batch: usize,
    /// Most outbound messages sent and not yet acknowledged.
    pub max_in_flight: u64,
    /// How often the pump looks for new outbound rows when nothing woke it
    /// (rows enqueued by another process).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Largest message payload, in bytes, that may be enqueued for the peer;
    /// a larger one is refused at [`enqueue`] with [`PayloadTooLarge`]. The
    /// link's gRPC frame limit (decoding and encoding, announced to the peer
    /// in `Hello`) is this plus [`FRAME_OVERHEAD`]. Set it alike on both ends.
    pub max_payload_bytes: usize,
    /// Most payload bytes of inbound messages handled in one transaction (a
    /// batch always takes at least one message), and of outbound rows read
    /// at once. The inbound buffer holds at most twice this.
    pub max_batch_bytes: usize,
    /// Tries of one inbound message whose handler panics, or during which
    /// the process dies, before the message is quarantined as
    /// `HANDLER_PANIC` (and acknowledged) so that later messages flow.
    pub max_handler_tries: u32,
    /// How long acknowledged send-log rows, inbox journal rows and resolved
    /// quarantine entries are kept before the pruning task deletes them. A
    /// send-log row's `uid` deduplicates enqueues for as long as the row is
    /// kept; every producer enqueues in the transaction of the state change
    /// that causes the message, so a `uid` only recurs within a retry of that
    /// transaction, far inside any sane retention.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often the pruning task runs.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// Most rows of each table one pruning statement deletes; a pass repeats
    /// statements until less than this went, so no statement holds locks
    /// long.
    pub prune_batch: u32,
}

/// The shortest `retention` accepted: far longer than any retry of the
/// transaction that enqueues a message (so its `uid` still deduplicates).
pub const MIN_RETENTION: Duration = Duration::from_secs(60);

/// Room a data frame needs beyond its payload (id, uid, trace context,
/// framing), added to `max_payload_bytes` to give the frame limit.
pub const FRAME_OVERHEAD: usize = 64 * 1024;

/// The longest `detail` of an error frame this side sends, so that an error
/// frame always fits the peer's frame limit.
const MAX_ERROR_DETAIL: usize = 8 * 1024;

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
            max_batch: 1000,
            max_in_flight: 20_000,
            poll_interval: Duration::from_millis(250),
            max_payload_bytes: 1024 * 1024,
            max_batch_bytes: 8 * 1024 * 1024,
            max_handler_tries: 3,
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(600),
            prune_batch: 1000,
        }
    }
}

impl LinkConfig {
    /// Checks the values make sense together; the error names the field.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if self.heartbeat_interval.is_zero() {
            return Err(format!("{prefix}.heartbeat_interval must be more than 0"));
        }
        if self.peer_timeout <= self.heartbeat_interval {
            return Err(format!(
                "{prefix}.peer_timeout ({:?}) must be longer than {prefix}.heartbeat_interval ({:?})",
                self.peer_timeout, self.heartbeat_interval
            ));
        }
        if self.max_batch == 0 {
            return Err(format!("{prefix}.max_batch must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(format!("{prefix}.max_in_flight must be at least 1"));
        }
        if self.poll_interval.is_zero() {
            return Err(format!("{prefix}.poll_interval must be more than 0"));
        }
        if !(1024..=MAX_PAYLOAD_LIMIT).contains(&self.max_payload_bytes) {
            return Err(format!(
                "{prefix}.max_payload_bytes ({}) must be between 1024 and {MAX_PAYLOAD_LIMIT} bytes",
                self.max_payload_bytes
            ));
        }
        if !(1..=MAX_PAYLOAD_LIMIT).contains(&self.max_batch_bytes) {
            return Err(format!(
                "{prefix}.max_batch_bytes ({}) must be between 1 and {MAX_PAYLOAD_LIMIT} bytes",
                self.max_batch_bytes
            ));
        }
        if self.max_handler_tries == 0 {
            return Err(format!("{prefix}.max_handler_tries must be at least 1"));
        }
        if self.retention < MIN_RETENTION {
            return Err(format!(
                "{prefix}.retention ({:?}) must be at least {MIN_RETENTION:?}: shorter, a message could be pruned while its enqueue is still being retried",
                self.retention
            ));
        }
        if self.prune_interval.is_zero() {
            return Err(format!("{prefix}.prune_interval must be more than 0"));
        }
        if self.prune_batch == 0 {
            return Err(format!("{prefix}.prune_batch must be at least 1"));
        }
        Ok(())
    }

    /// The largest frame this end reads or writes: its gRPC decoding and
    /// encoding limit, and what its `Hello` announces.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_payload_bytes.saturating_add(FRAME_OVERHEAD)
    }

    /// Bytes of inbound payload buffered between the stream and the handler.
    fn inbound_buffer_bytes(&self) -> usize {
        self.max_batch_bytes
            .saturating_mul(2)
            .max(self.max_frame_bytes())
    }
}

/// Upper bound of `max_payload_bytes` and `max_batch_bytes` (256 MiB): far
/// beyond any message of this contract, and it keeps byte counts in `u32`.
const MAX_PAYLOAD_LIMIT: usize = 256 * 1024 * 1024;

/// Why a handler did not act on a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The peer's fault: the message is well-formed but refused for good (it
    /// contradicts state, or this version does not act on its kind). It is
    /// quarantined and acknowledged, and the sender gets a `REJECTED` error
    /// frame.
    #[error("rejected: {0}")]
    Rejected(String),
    /// This side's fault, not the peer's: a sealed secret that does not open,
    /// a stored row that no longer decodes, an outbound message over the size
    /// limit. The batch is rolled back and NOT acknowledged; the message is
    /// retried with backoff until the fault clears (and its effect happens
    /// then), while the link's health, metrics and log say why.
    #[error("local fault: {0}")]
    Local(String),
    /// Storage trouble: the batch is rolled back and retried.
    #[error("storage: {0}")]
    Storage(sqlx::Error),
}

impl From<sqlx::Error> for HandleError {
    fn from(e: sqlx::Error) -> Self {
        // An oversized outbound message is not storage trouble that goes
        // away by itself, and not the peer's fault either.
        match too_large(&e) {
            Some(t) => Self::Local(t.to_string()),
            None => Self::Storage(e),
        }
    }
}

impl From<EnqueueError> for HandleError {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::TooLarge(t) => Self::Local(t.to_string()),
            EnqueueError::Storage(e) => Self::Storage(e),
        }
    }
}

/// A message refused by [`enqueue`] because its payload is over the link's
/// `max_payload_bytes`. Nothing was written; the caller's transaction must
/// roll back (so nothing it did is half-committed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "message {uid} ({kind}) for link {link_id} is {size} bytes, more than the link's limit of {limit} \
     bytes (link.max_payload_bytes): nothing was enqueued; send less per message, or raise the limit \
     on both ends of the link"
)]
pub struct PayloadTooLarge {
    /// The link.
    pub link_id: String,
    /// The message's uid.
    pub uid: String,
    /// The message's kind.
    pub kind: String,
    /// Its payload size in bytes.
    pub size: usize,
    /// The link's limit in bytes.
    pub limit: usize,
}

/// Why [`enqueue`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// A payload is over the link's limit; nothing was enqueued.
    #[error(transparent)]
    TooLarge(#[from] PayloadTooLarge),
    /// Postgres trouble.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<EnqueueError> for sqlx::Error {
    /// Keeps callers that speak `sqlx::Error` working; the size refusal
    /// stays recoverable with [`too_large`].
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::TooLarge(t) => sqlx::Error::Encode(Box::new(t)),
            EnqueueError::Storage(e) => e,
        }
    }
}

/// The size refusal inside a `sqlx::Error` converted from an
/// [`EnqueueError`], if that is what it is.
pub fn too_large(e: &sqlx::Error) -> Option<&PayloadTooLarge> {
    match e {
        sqlx::Error::Encode(inner) => inner.downcast_ref::<PayloadTooLarge>(),
        _ => None,
    }
}

/// What a handler learns about the frame that carried a message.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// The link (peer name on this side).
    pub link_id: &'a str,
    /// The data frame's id.
    pub id: u64,
    /// The sender's idempotency key.
    pub uid: &'a str,
}

/// Acts on inbound messages inside the link's transaction.
pub trait Handler: Send + Sync + 'static {
    /// The message type carried in data frames to this side.
    type Message: prost::Message + Default + Send + 'static;

    /// The message's kind, or `None` for a kind this side does not know.
    fn kind(message: &Self::Message) -> Option<&'static str>;

    /// Applies a message's effects on `conn`, which is inside the transaction
    /// that also records the message as handled. Outbound messages it causes
    /// go through [`enqueue`] on the same connection.
    fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        inbound: Inbound<'a>,
        message: Self::Message,
    ) -> impl Future<Output = Result<(), HandleError>> + Send + 'a;
}

/// Wakes a link's pump after a commit that enqueued messages.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    notify: Arc<Notify>,
}

impl Outbox {
    /// Tells the pump new rows are committed. Harmless if there are none.
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

/// Enqueues messages for `link_id` in the caller's transaction; see
/// [`db::enqueue`]. Call [`Outbox::wake`] after the commit. A payload over
/// the link's `max_payload_bytes` refuses the whole call with
/// [`EnqueueError::TooLarge`] before anything is written.
pub async fn enqueue(
    conn: &mut PgConnection,
    link_id: &str,
    messages: &[OutMessage],
) -> Result<Vec<u64>, EnqueueError> {
    db::enqueue(conn, link_id, messages).await
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The peer sent a frame that breaks the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer's state does not match ours (see `STATE_MISMATCH`).
    #[error("state mismatch: {0}")]
    StateMismatch(String),
    /// Nothing heard from the peer for the peer timeout.
    #[error("peer silent for {0:?}")]
    PeerSilent(Duration),
    /// The transport failed or the peer closed the stream.
    #[error("stream closed: {0}")]
    Closed(String),
    /// The peer sent a frame larger than this side's frame limit; it cannot
    /// be read, so the stream closes (the peer withholds it next time).
    #[error("frame too large: {0}")]
    TooLarge(String),
    /// Storage trouble outside a retryable batch.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// A newer stream took over, or the process is shutting down.
    #[error("stopped")]
    Stopped,
}

/// What the admin API shows of a link that is not in Postgres.
#[derive(Debug, Clone, Default)]
pub struct LiveStatus {
    /// The peer's node id from its last `Hello`.
    pub peer: String,
    /// A stream is up.
    pub connected: bool,
    /// When the current or last stream came up.
    pub connected_since: Option<SystemTime>,
    /// When anything was last heard from the peer.
    pub last_heard: Option<SystemTime>,
}

/// What keeps a link from being healthy: shown in its status and health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFault {
    /// A local fault (or a handler panic) being retried: the message is not
    /// acknowledged until it clears. Cleared by the next commit.
    pub retrying: Option<String>,
    /// The last message quarantined because its handler kept panicking: its
    /// effect is missing and an operator must look at it. Stays until the
    /// process restarts (the quarantine row stays for good).
    pub quarantined: Option<String>,
}

impl LinkFault {
    /// Nothing is wrong.
    pub fn is_clear(&self) -> bool {
        self.retrying.is_none() && self.quarantined.is_none()
    }

    /// One line for the admin API and logs ("" when clear).
    pub fn describe(&self) -> String {
        [self.retrying.as_deref(), self.quarantined.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One end of an exactly-once link.
pub struct Link<S: Side, H: Handler> {
    pool: PgPool,
    link_id: String,
    node_id: String,
    config: LinkConfig,
    handler: H,
    outbox: Outbox,
    live: std::sync::Mutex<LiveStatus>,
    /// Held by the running session; a new stream waits for the old to end.
    session: tokio::sync::Mutex<()>,
    /// Cancels the running session when a newer stream arrives.
    current: std::sync::Mutex<CancellationToken>,
    /// The durable outbound ack watermark, for waiters.
    acked: watch::Sender<u64>,
    /// The durable inbound watermark (last handled id), for waiters.
    handled: watch::Sender<u64>,
    /// The highest outbound id this process has sent, to tell first sends
    /// from redeliveries in the metrics.
    max_sent: AtomicU64,
    /// The frame limit the peer announced in its last `Hello` (0: none).
    peer_max_frame: AtomicU64,
    /// Random per process start: tells this process's handling marks from
    /// a predecessor's.
    boot: String,
    /// Local faults and panic quarantines, for health and status.
    faults: watch::Sender<LinkFault>,
    shutdown: CancellationToken,
    _side: std::marker::PhantomData<S>,
}

impl<S: Side, H: Handler> std::fmt::Debug for Link<S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("side", &S::NAME)
            .field("link_id", &self.link_id)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn unix_ms(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds since `start`, for the shared "last heard" clock.
fn since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl<S: Side, H: Handler> Link<S, H> {
    /// Creates the link's bookkeeping row if needed.
    pub async fn new(
        pool: PgPool,
        link_id: impl Into<String>,
        node_id: impl Into<String>,
        config: LinkConfig,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, sqlx::Error> {
        let link_id = link_id.into();
        db::ensure_link(&pool, &link_id, config.max_payload_bytes).await?;
        let mut conn = pool.acquire().await?;
        let counters = db::counters(&mut conn, &link_id).await?;
        drop(conn);
        Ok(Arc::new(Self {
            acked: watch::Sender::new(counters.acked_out),
            handled: watch::Sender::new(counters.last_handled_in),
            max_sent: AtomicU64::new(counters.acked_out),
            peer_max_frame: AtomicU64::new(0),
            boot: format!("{:016x}", rand::random::<u64>()),
            faults: watch::Sender::new(LinkFault::default()),
            pool,
            link_id,
            node_id: node_id.into(),
            config,
            handler,
            outbox: Outbox::default(),
            live: std::sync::Mutex::new(LiveStatus::default()),
            session: tokio::sync::Mutex::new(()),
            current: std::sync::Mutex::new(CancellationToken::new()),
            shutdown,
            _side: std::marker::PhantomData,
        }))
    }

    /// Deletes what the retention allows on this link, in batches of
    /// `prune_batch` rows per table, until a batch comes back short.
    pub async fn prune(&self) -> Result<db::Pruned, sqlx::Error> {
        let batch = i64::from(self.config.prune_batch);
        let older_than = self.config.retention.as_secs_f64();
        let mut total = db::Pruned::default();
        loop {
            let step = db::prune_batch(&self.pool, &self.link_id, older_than, batch).await?;
            for (table, rows) in [
                ("send_log", step.send_log),
                ("inbox", step.inbox),
                ("quarantine", step.quarantine),
            ] {
                if rows > 0 {
                    metrics::counter!(service::metrics::LINK_PRUNED, "link" => self.link_id.clone(), "table" => table)
                        .increment(rows);
                }
            }
            total.send_log += step.send_log;
            total.inbox += step.inbox;
            total.quarantine += step.quarantine;
            let full = |rows: u64| i64::try_from(rows).unwrap_or(i64::MAX) >= batch;
            if !(full(step.send_log) || full(step.inbox) || full(step.quarantine)) {
                return Ok(total);
            }
            if self.shutdown.is_cancelled() {
                return Ok(total);
            }
        }
    }

    /// Runs [`Self::prune`] every `prune_interval` until shutdown. A failed
    /// pass is logged and tried again at the next interval: pruning is
    /// housekeeping, never a reason to stop the link.
    pub fn spawn_pruner(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let link = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(link.config.prune_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = link.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match link.prune().await {
                    Ok(p) if p.total() > 0 => info!(
                        link = %link.link_id,
                        send_log = p.send_log,
                        inbox = p.inbox,
                        quarantine = p.quarantine,
                        retention = ?link.config.retention,
                        "pruned link rows past their retention"
                    ),
                    Ok(_) => debug!(link = %link.link_id, "nothing to prune"),
                    Err(e) => {
                        warn!(link = %link.link_id, error = %e, "pruning failed; trying again at the next interval")
                    }
                }
            }
        })
    }

    /// Marks a quarantined inbound message resolved (admin API); it is
    /// pruned once older than the retention. `Ok(false)`: no such entry.
    pub async fn resolve_quarantine(&self, id: u64, note: &str) -> Result<bool, sqlx::Error> {
        db::resolve_quarantine(&self.pool, &self.link_id, id, note).await
    }

    /// The link's id (the peer's name on this side).
    pub fn link_id(&self) -> &str {
        &self.link_id
    }

    /// This end's frame limit (from `max_payload_bytes`): what the gRPC
    /// client or server carrying the link must use as its decoding and
    /// encoding limit.
    pub fn max_frame_bytes(&self) -> usize {
        self.config.max_frame_bytes()
    }

    /// The handle that wakes this link's pump.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The highest outbound id the peer acknowledged and this side recorded;
    /// changes as acknowledgements are committed.
    pub fn acked(&self) -> watch::Receiver<u64> {
        self.acked.subscribe()
    }

    /// The highest inbound id whose effects are committed; changes after
    /// each committed batch (what a task acting on those effects waits for).
    pub fn handled(&self) -> watch::Receiver<u64> {
        self.handled.subscribe()
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Local faults and panic quarantines of this link, as they change (for
    /// the health service).
    pub fn faults(&self) -> watch::Receiver<LinkFault> {
        self.faults.subscribe()
    }

    fn set_fault(&self, f: impl FnOnce(&mut LinkFault)) {
        self.faults.send_if_modified(|cur| {
            let before = cur.clone();
            f(cur);
            *cur != before
        });
    }

    /// The live (not persisted) part of the link's status.
    pub fn live_status(&self) -> LiveStatus {
        self.live.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The full status, for the admin APIs.
    pub async fn status(&self) -> Result<proto::processor_v1::LinkStatus, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let counters = db::counters(&mut conn, &self.link_id).await?;
        drop(conn);
        let quarantined = db::quarantined_count(&self.pool, &self.link_id).await?;
        let pruned = db::pruned_totals(&self.pool, &self.link_id).await?;
        let live = self.live_status();
        Ok(proto::processor_v1::LinkStatus {
            peer: live.peer,
            connected: live.connected,
            last_handled_inbound_id: counters.last_handled_in,
            last_enqueued_outbound_id: counters.last_enqueued_out,
            acked_outbound_id: counters.acked_out,
            backlog: counters.last_enqueued_out - counters.acked_out,
            quarantined,
            connected_since_unix_ms: unix_ms(live.connected_since),
            last_heard_unix_ms: unix_ms(live.last_heard),
            fault: self.faults.borrow().describe(),
            pruned_send_log: pruned.rows.send_log,
            pruned_inbox: pruned.rows.inbox,
            pruned_quarantine: pruned.rows.quarantine,
            last_pruned_unix_ms: pruned.last_pruned_unix_ms,
        })
    }

    fn publish_ack(&self, id: u64) {
        self.acked.send_if_modified(|cur| {
            let newer = id > *cur;
            if newer {
                metrics::counter!(service::metrics::LINK_ACKED, "link" => self.link_id.clone())
                    .increment(id - *cur);
                *cur = id;
            }
            newer
        });
    }

    fn set_live(&self, f: impl FnOnce(&mut LiveStatus)) {
        if let Ok(mut live) = self.live.lock() {
            f(&mut live);
        }
    }

    /// Takes the session slot: cancels the running session (a newer stream
    /// supersedes it) and waits until it has finished its transaction.
    async fn take_over(&self) -> (tokio::sync::MutexGuard<'_, ()>, CancellationToken) {
        let token = self.shutdown.child_token();
        if let Ok(mut current) = self.current.lock() {
            current.cancel();
            *current = token.clone();
        }
        let guard = self.session.lock().await;
        (guard, token)
    }

    fn hello(&self, last_handled: u64) -> LinkFrame {
        LinkFrame::Hello(Hello {
            node_id: self.node_id.clone(),
            contract_version: proto::CONTRACT_VERSION,
            last_handled_id: last_handled,
            max_frame_bytes: self.config.max_frame_bytes() as u64,
        })
    }

    /// The largest frame the pump may send: the peer's announced limit, and
    /// never more than this side's own.
    fn send_limit(&self) -> usize {
        let own = self.config.max_frame_bytes();
        match usize::try_from(self.peer_max_frame.load(Ordering::Relaxed)) {
            Ok(0) | Err(_) => own,
            Ok(peer) => peer.min(own),
        }
    }

    /// Checks the peer's `Hello` against our state and returns the first
    /// outbound id to send.
    async fn check_hello(&self, hello: &Hello) -> Result<u64, (LinkErrorCode, String)> {
        if hello.contract_version != proto::CONTRACT_VERSION {
            return Err((
                LinkErrorCode::UnsupportedVersion,
                format!(
                    "peer speaks contract version {}, this {} speaks {}; upgrade one of them",
                    hello.contract_version,
                    S::NAME,
                    proto::CONTRACT_VERSION
                ),
            ));
        }
        let mut conn = self.pool.acquire().await.map_err(|e| {
            (
                LinkErrorCode::ShuttingDown,
                format!("database unavailable: {e}"),
            )
        })?;
        let counters = db::counters(&mut conn, &self.link_id).await.map_err(|e| {
            (
                LinkErrorCode::ShuttingDown,
                format!("database unavailable: {e}"),
            )
        })?;
        drop(conn);
        self.peer_max_frame
            .store(hello.max_frame_bytes, Ordering::Relaxed);
        let claimed = hello.last_handled_id;
        if claimed > counters.last_enqueued_out {
            return Err((
                LinkErrorCode::StateMismatch,
                format!(
                    "peer {} says it handled up to id {claimed}, but this {} only ever sent up to {}; \
                     was this side's database replaced? An operator must reconcile the two",
                    hello.node_id,
                    S::NAME,
                    counters.last_enqueued_out
                ),
            ));
        }
        if claimed < counters.acked_out {
            return Err((
                LinkErrorCode::StateMismatch,
                format!(
                    "peer {} says it handled up to id {claimed}, but it had acknowledged up to {}; \
                     was the peer's database restored from a backup? An operator must reconcile the two",
                    hello.node_id, counters.acked_out
                ),
            ));
        }
        if claimed > counters.acked_out {
            // The peer committed these but its Ack was lost (e.g. it was
            // killed between commit and ack): its Hello is the ack.
            db::record_ack(&self.pool, &self.link_id, claimed)
                .await
                .map_err(|e| {
                    (
                        LinkErrorCode::ShuttingDown,
                        format!("database unavailable: {e}"),
                    )
                })?;
            self.publish_ack(claimed);
        }
        Ok(claimed + 1)
    }

    /// Serves a stream opened by the peer (the processor's `Connect`): waits
    /// for its `Hello`, answers, then runs the session until it ends.
    ///
    /// The newcomer supersedes the live session only once its `Hello` has
    /// arrived and checked out (contract version, ids): a stream that stays
    /// silent or greets wrongly is refused while the live one keeps
    /// flowing. (Who may open a stream at all is decided before this, by
    /// the caller's certificate: `service::auth`.)
    pub async fn accept<I>(self: Arc<Self>, mut inbound: I, out: mpsc::Sender<S::Outbound>)
    where
        I: Stream<Item = Result<S::Inbound, tonic::Status>> + Unpin + Send + 'static,
    {
        let first = tokio::select! {
            first = tokio::time::timeout(self.config.peer_timeout, inbound.next()) => first,
            () = self.shutdown.cancelled() => return,
        };
        let hello = match first {
            Ok(Some(Ok(frame))) => match S::open(frame) {
                Some(LinkFrame::Hello(hello)) => hello,
                other => {
                    let detail = format!(
                        "the first frame must be Hello, got {}",
                        other.as_ref().map_or("an empty frame", frame_name)
                    );
                    warn!(link = %self.link_id, "{detail}");
                    send_error::<S>(&out, LinkErrorCode::ProtocolViolation, detail, 0, 0).await;
                    return;
                }
            },
            Ok(Some(Err(status))) => {
                warn!(link = %self.link_id, %status, "stream failed before Hello");
                return;
            }
            Ok(None) => return,
            Err(_) => {
                let detail = format!("no Hello within {:?}", self.config.peer_timeout);
                warn!(link = %self.link_id, "{detail}");
                send_error::<S>(&out, LinkErrorCode::ProtocolViolation, detail, 0, 0).await;
                return;
            }
        };
        // Checking the Hello reads (and may advance, monotonically) the
        // outbound ack watermark while the live session still runs; that is
        // safe because the peer acknowledged up to its claim before saying
        // Hello, and the pump resends anything from `start_from` on anyway.
        let start_from = match self.check_hello(&hello).await {
            Ok(start) => start,
            Err((code, detail)) => {
                warn!(link = %self.link_id, peer = %hello.node_id, "refusing stream: {detail}");
                send_error::<S>(&out, code, detail, 0, 0).await;
                return;
            }
        };
        // Now supersede the live session and wait until it has finished its
        // transaction, so the watermark read next is final.
        let (_guard, token) = self.take_over().await;
        if token.is_cancelled() {
            // An even newer stream, or shutdown, came while this one waited.
            let (code, detail) = if self.shutdown.is_cancelled() {
                (
                    LinkErrorCode::ShuttingDown,
                    "shutting down; reconnect later",
                )
            } else {
                (
                    LinkErrorCode::Superseded,
                    "a newer stream from the peer took over",
                )
            };
            send_error::<S>(&out, code, detail.to_owned(), 0, 0).await;
            return;
        }
        let last_handled = match self.read_last_handled().await {
            Ok(v) => v,
            Err(e) => {
                send_error::<S>(
                    &out,
                    LinkErrorCode::ShuttingDown,
                    format!("database unavailable: {e}"),
                    0,
                    0,
                )
                .await;
                return;
            }
        };
        if out.send(S::wrap(self.hello(last_handled))).await.is_err() {
            return;
        }
        let span = info_span!("link", side = S::NAME, link = %self.link_id, peer = %hello.node_id);
        let result = self
            .clone()
            .run(
                inbound,
                out.clone(),
                hello.node_id.clone(),
                start_from,
                last_handled,
                token,
            )
            .instrument(span)
            .await;
        // `finish` logs why the stream ended; the peer will reconnect.
        let _ = self.finish(&out, result).await;
    }

    /// Opens a stream to the peer with `connect` (the coordinator's side):
    /// sends `Hello`, waits for the peer's, then runs the session until it
    /// ends. Returns why it ended; `Ok` once a session ran and stopped.
    pub async fn dial<F, Fut, I>(self: Arc<Self>, connect: F) -> Result<(), SessionError>
    where
        F: FnOnce(tokio_stream::wrappers::ReceiverStream<S::Outbound>) -> Fut,
        Fut: Future<Output = Result<I, tonic::Status>>,
        I: Stream<Item = Result<S::Inbound, tonic::Status>> + Unpin + Send + 'static,
    {
        let (_guard, token) = self.take_over().await;
        let last_handled = self.read_last_handled().await?;
        let (out, rx) = mpsc::channel(self.channel_capacity());
        out.send(S::wrap(self.hello(last_handled)))
            .await
            .map_err(|_| SessionError::Closed("outbound channel closed".into()))?;
        let mut inbound = tokio::select! {
            r = connect(tokio_stream::wrappers::ReceiverStream::new(rx)) => {
                r.map_err(|s| SessionError::Closed(format!("connect failed: {}", s.message())))?
            }
            () = token.cancelled() => return Err(SessionError::Stopped),
        };
        let first = tokio::select! {
            first = tokio::time::timeout(self.config.peer_timeout, inbound.next()) => first,
            () = token.cancelled() => return Err(SessionError::Stopped),
        };
        let hello = match first {
            Ok(Some(Ok(frame))) => match S::open(frame) {
                Some(LinkFrame::Hello(hello)) => hello,
                Some(LinkFrame::Error(e)) => {
                    return Err(SessionError::Closed(format!(
                        "peer refused the stream ({}): {}",
                        code_name(e.code),
                        e.detail
                    )));
                }
                other => {
                    return Err(SessionError::Protocol(format!(
                        "the first frame must be Hello, got {}",
                        other.as_ref().map_or("an empty frame", frame_name)
                    )));
                }
            },
            Ok(Some(Err(status))) => {
                return Err(SessionError::Closed(format!(
                    "stream failed: {}",
                    status.message()
                )));
            }
            Ok(None) => return Err(SessionError::Closed("peer closed the stream".into())),
            Err(_) => {
                return Err(SessionError::PeerSilent(self.config.peer_timeout));
            }
        };
        let start_from = match self.check_hello(&hello).await {
            Ok(start) => start,
            Err((code, detail)) => {
                send_error::<S>(&out, code, detail.clone(), 0, 0).await;
                return Err(SessionError::StateMismatch(detail));
            }
        };
        let span = info_span!("link", side = S::NAME, link = %self.link_id, peer = %hello.node_id);
        let result = self
            .clone()
            .run(
                inbound,
                out.clone(),
                hello.node_id,
                start_from,
                last_handled,
                token,
            )
            .instrument(span)
            .await;
        self.finish(&out, result).await
    }

    /// Capacity of the outbound frame channel.
    pub fn channel_capacity(&self) -> usize {
        usize::try_from(self.config.max_in_flight)
            .unwrap_or(usize::MAX)
            .clamp(64, 4096)
    }

    async fn read_last_handled(&self) -> Result<u64, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        Ok(db::counters(&mut conn, &self.link_id)
            .await?
            .last_handled_in)
    }

    async fn finish(
        &self,
        out: &mpsc::Sender<S::Outbound>,
        result: Result<(), SessionError>,
    ) -> Result<(), SessionError> {
        self.set_live(|l| l.connected = false);
        match &result {
            Ok(()) | Err(SessionError::Stopped) => {
                let (code, detail) = if self.shutdown.is_cancelled() {
                    (
                        LinkErrorCode::ShuttingDown,
                        "shutting down; reconnect later",
                    )
                } else {
                    (
                        LinkErrorCode::Superseded,
                        "a newer stream from the peer took over",
                    )
                };
                info!(link = %self.link_id, "stream closed: {detail}");
                send_error::<S>(out, code, detail.to_owned(), 0, 0).await;
                Ok(())
            }
            Err(SessionError::Protocol(detail)) => {
                warn!(link = %self.link_id, "closing stream: protocol violation: {detail}");
                send_error::<S>(out, LinkErrorCode::ProtocolViolation, detail.clone(), 0, 0).await;
                result
            }
            Err(SessionError::StateMismatch(detail)) => {
                warn!(link = %self.link_id, "closing stream: {detail}");
                send_error::<S>(out, LinkErrorCode::StateMismatch, detail.clone(), 0, 0).await;
                result
            }
            Err(SessionError::TooLarge(detail)) => {
                warn!(link = %self.link_id, "closing stream: {detail}");
                send_error::<S>(out, LinkErrorCode::PayloadTooLarge, detail.clone(), 0, 0).await;
                result
            }
            Err(e) => {
                warn!(link = %self.link_id, "stream ended: {e}");
                result
            }
        }
    }

    /// The symmetric part of a session, after both `Hello`s.
    async fn run<I>(
        self: Arc<Self>,
        inbound: I,
        out: mpsc::Sender<S::Outbound>,
        peer: String,
        start_from: u64,
        last_handled: u64,
        token: CancellationToken,
    ) -> Result<(), SessionError>
    where
        I: Stream<Item = Result<S::Inbound, tonic::Status>> + Unpin + Send + 'static,
    {
        info!(
            resume_out_from = start_from,
            last_handled_in = last_handled,
            "stream up"
        );
        let now = SystemTime::now();
        metrics::counter!(service::metrics::LINK_SESSIONS, "link" => self.link_id.clone())
            .increment(1);
        metrics::gauge!(service::metrics::LINK_CONNECTED, "link" => self.link_id.clone()).set(1.0);
        self.set_live(|l| {
            l.peer = peer;
            l.connected = true;
            l.connected_since = Some(now);
            l.last_heard = Some(now);
        });
        let clock = Instant::now();
        let heard = Arc::new(AtomicU64::new(0));
        let (data_tx, data_rx) =
            mpsc::channel::<InboundData>(self.config.max_batch.saturating_mul(4));
        // Bounds the inbound buffer by bytes too (the channel counts frames).
        let room = Arc::new(tokio::sync::Semaphore::new(
            self.config.inbound_buffer_bytes(),
        ));
        let (ack_tx, ack_rx) = watch::channel(start_from - 1);
        let (rewind_tx, rewind_rx) = watch::channel(0_u64);

        // The handler finishes the batch it has begun even when the session
        // ends, so it runs as its own task and is awaited below.
        let handler = tokio::spawn(
            self.clone()
                .handle_inbound(data_rx, out.clone(), last_handled, token.clone())
                .in_current_span(),
        );

        let result = tokio::select! {
            r = self.read(inbound, (data_tx, room), ack_tx, rewind_tx, out.clone(), heard.clone(), clock) => r,
            r = self.pump(out.clone(), ack_rx.clone(), rewind_rx, start_from, &token) => r,
            r = self.record_acks(ack_rx) => r,
            r = self.heartbeat(out.clone(), heard, clock) => r,
            () = token.cancelled() => Err(SessionError::Stopped),
        };
        token.cancel();
        metrics::gauge!(service::metrics::LINK_CONNECTED, "link" => self.link_id.clone()).set(0.0);
        if let Err(e) = handler.await {
            warn!("inbound handler task failed: {e}");
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn read<I>(
        &self,
        mut inbound: I,
        (data_tx, room): (mpsc::Sender<InboundData>, Arc<tokio::sync::Semaphore>),
        ack_tx: watch::Sender<u64>,
        rewind_tx: watch::Sender<u64>,
        out: mpsc::Sender<S::Outbound>,
        heard: Arc<AtomicU64>,
        clock: Instant,
    ) -> Result<(), SessionError>
    where
        I: Stream<Item = Result<S::Inbound, tonic::Status>> + Unpin,
    {
        loop {
            let frame = match inbound.next().await {
                None => return Err(SessionError::Closed("peer closed the stream".into())),
                Some(Err(status)) => {
                    // A frame over the gRPC decoding limit (this side's frame
                    // limit) is refused by the codec before it is read: the
                    // stream cannot carry on, and the peer is told to
                    // withhold it (its Hello told it the limit already).
                    if status.code() == tonic::Code::OutOfRange {
                        return Err(SessionError::TooLarge(format!(
                            "a frame beyond this {}'s limit of {} bytes (link.max_payload_bytes plus \
                             framing): {}; send such a message as a withheld Data frame",
                            S::NAME,
                            self.config.max_frame_bytes(),
                            status.message()
                        )));
                    }
                    // A frame that does not decode arrives here as a status
                    // from the codec; the stream cannot carry on after it.
                    // Anything else is the transport (a cut connection).
                    return Err(if status.message().contains("decode") {
                        SessionError::Protocol(format!("unreadable frame: {}", status.message()))
                    } else {
                        SessionError::Closed(format!("stream failed: {}", status.message()))
                    });
                }
                Some(Ok(frame)) => frame,
            };
            heard.store(since(clock), Ordering::Relaxed);
            self.set_live(|l| l.last_heard = Some(SystemTime::now()));
            match S::open(frame) {
                None => {
                    return Err(SessionError::Protocol(
                        "a frame with no kind set (unknown frame kind from a newer contract?)"
                            .into(),
                    ));
                }
                Some(LinkFrame::Hello(_)) => {
                    return Err(SessionError::Protocol(
                        "a second Hello on one stream".into(),
                    ));
                }
                Some(LinkFrame::Data(data)) => {
                    // Waits while the handler is this many bytes behind.
                    let cost = u32::try_from(
                        data.payload
                            .len()
                            .clamp(1, self.config.inbound_buffer_bytes()),
                    )
                    .unwrap_or(u32::MAX);
                    let Ok(permit) = room.clone().acquire_many_owned(cost).await else {
                        return Err(SessionError::Stopped);
                    };
                    let item = InboundData {
                        data,
                        _room: permit,
                    };
                    if data_tx.send(item).await.is_err() {
                        return Err(SessionError::Stopped);
                    }
                }
                Some(LinkFrame::Ack(Ack { id })) => {
                    ack_tx.send_if_modified(|cur| {
                        let newer = id > *cur;
                        if newer {
                            *cur = id;
                        }
                        newer
                    });
                }
                Some(LinkFrame::Ping(Ping { nonce })) => {
                    if out
                        .send(S::wrap(LinkFrame::Pong(Pong { nonce })))
                        .await
                        .is_err()
                    {
                        return Err(SessionError::Closed("outbound channel closed".into()));
                    }
                }
                Some(LinkFrame::Pong(Pong { nonce })) => {
                    // Our pings carry their send time (ms on `clock`).
                    let rtt = since(clock).saturating_sub(nonce);
                    debug!(rtt_ms = rtt, "heartbeat answered");
                }
                Some(LinkFrame::Error(error)) => {
                    let code = LinkErrorCode::try_from(error.code).unwrap_or_default();
                    if matches!(
                        code,
                        LinkErrorCode::ShuttingDown | LinkErrorCode::Superseded
                    ) {
                        // Routine: the peer is stopping or replaced this stream.
                        return Err(SessionError::Closed(format!(
                            "peer closed the stream: {}",
                            error.detail
                        )));
                    }
                    warn!(
                        code = code_name(error.code),
                        id = error.id,
                        expected_id = error.expected_id,
                        "peer reported: {}",
                        error.detail
                    );
                    match code {
                        LinkErrorCode::OutOfSequence if error.expected_id > 0 => {
                            rewind_tx.send_replace(error.expected_id);
                        }
                        LinkErrorCode::StateMismatch
                        | LinkErrorCode::UnsupportedVersion
                        | LinkErrorCode::ProtocolViolation => {
                            return Err(SessionError::Closed(format!(
                                "peer refused the stream ({}): {}",
                                code_name(error.code),
                                error.detail
                            )));
                        }
                        // Quarantined by the peer and acknowledged: recorded in
                        // its quarantine; our log keeps the message too.
                        _ => {}
                    }
                }
            }
        }
    }

    async fn pump(
        &self,
        out: mpsc::Sender<S::Outbound>,
        mut ack_rx: watch::Receiver<u64>,
        mut rewind_rx: watch::Receiver<u64>,
        start_from: u64,
        token: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut next = start_from;
        loop {
            if rewind_rx.has_changed().unwrap_or(false) {
                let to = *rewind_rx.borrow_and_update();
                let acked = *ack_rx.borrow();
                if to > acked && to < next {
                    info!(from = to, "peer asked to resend");
                    next = to;
                }
            }
            let acked = *ack_rx.borrow_and_update();
            let room = (acked + self.config.max_in_flight + 1).saturating_sub(next);
            if room == 0 {
                tokio::select! {
                    r = ack_rx.changed() => if r.is_err() { return Err(SessionError::Stopped) },
                    r = rewind_rx.changed() => if r.is_err() { return Err(SessionError::Stopped) },
                    () = token.cancelled() => return Err(SessionError::Stopped),
                }
                continue;
            }
            // Register for wake-ups before reading so a commit between the
            // read and the wait is not missed.
            let mut notified = pin!(self.outbox.notify.notified());
            notified.as_mut().enable();
            let limit = room.min(self.config.max_batch as u64);
            let rows = match db::fetch_outbound(
                &self.pool,
                &self.link_id,
                next,
                limit,
                self.config.max_batch_bytes,
            )
            .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    service::metrics::db_error("send_log_read");
                    warn!("reading send_log failed, retrying: {e}");
                    tokio::time::sleep(self.config.poll_interval).await;
                    continue;
                }
            };
            if rows.is_empty() {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                    r = rewind_rx.changed() => if r.is_err() { return Err(SessionError::Stopped) },
                    () = token.cancelled() => return Err(SessionError::Stopped),
                }
                continue;
            }
            for row in rows {
                if row.id != next {
                    // Ids are gapless by construction; a hole means the table
                    // was edited by hand. Stop rather than skip a message.
                    return Err(SessionError::StateMismatch(format!(
                        "send_log of link {} jumps from id {next} to {}",
                        self.link_id, row.id
                    )));
                }
                let first_send = self.max_sent.fetch_max(row.id, Ordering::Relaxed) < row.id;
                let counter = if first_send {
                    service::metrics::LINK_SENT
                } else {
                    service::metrics::LINK_REDELIVERED
                };
                metrics::counter!(counter, "link" => self.link_id.clone()).increment(1);
                let mut data = Data {
                    id: row.id,
                    payload: row.payload,
                    uid: row.uid,
                    traceparent: row.traceparent,
                    withheld_bytes: 0,
                };
                // A frame the peer could not read would close the stream
                // and come back forever: send it withheld instead (the peer
                // quarantines the id, the row stays here).
                let limit = self.send_limit();
                if data.encoded_len() + 16 > limit {
                    warn!(
                        id = data.id,
                        uid = %data.uid,
                        size = data.payload.len(),
                        limit,
                        "message too large for the peer's frame limit: sent withheld"
                    );
                    data.withheld_bytes = data.payload.len().max(1) as u64;
                    data.payload = Vec::new();
                    if data.encoded_len() + 16 > limit {
                        // Only a uid of absurd length gets here; the
                        // receiver needs the id, the uid is for logs.
                        let mut cut = 256.min(data.uid.len());
                        while !data.uid.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        data.uid.truncate(cut);
                    }
                }
                let frame = LinkFrame::Data(data);
                if out.send(S::wrap(frame)).await.is_err() {
                    return Err(SessionError::Closed("outbound channel closed".into()));
                }
                next += 1;
            }
        }
    }

    async fn record_acks(&self, mut ack_rx: watch::Receiver<u64>) -> Result<(), SessionError> {
        loop {
            if ack_rx.changed().await.is_err() {
                return Err(SessionError::Stopped);
            }
            let id = *ack_rx.borrow_and_update();
            let mut delay = Duration::from_millis(50);
            loop {
                match db::record_ack(&self.pool, &self.link_id, id).await {
                    Ok(true) => {
                        debug!(id, "acknowledged");
                        self.publish_ack(id);
                        break;
                    }
                    Ok(false) => {
                        return Err(SessionError::StateMismatch(format!(
                            "peer acknowledged id {id}, beyond anything sent on link {}",
                            self.link_id
                        )));
                    }
                    Err(e) => {
                        service::metrics::db_error("ack");
                        warn!("recording ack {id} failed, retrying: {e}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }

    async fn heartbeat(
        &self,
        out: mpsc::Sender<S::Outbound>,
        heard: Arc<AtomicU64>,
        clock: Instant,
    ) -> Result<(), SessionError> {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = u64::try_from(self.config.peer_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            tick.tick().await;
            let silent = since(clock).saturating_sub(heard.load(Ordering::Relaxed));
            if silent > timeout {
                return Err(SessionError::PeerSilent(Duration::from_millis(silent)));
            }
            // The nonce is the send time, so the Pong tells the round trip.
            let nonce = since(clock);
            if out
                .send(S::wrap(LinkFrame::Ping(Ping { nonce })))
                .await
                .is_err()
            {
                return Err(SessionError::Closed("outbound channel closed".into()));
            }
        }
    }

    /// Handles inbound data frames in batches until the session ends.
    async fn handle_inbound(
        self: Arc<Self>,
        mut data_rx: mpsc::Receiver<InboundData>,
        out: mpsc::Sender<S::Outbound>,
        mut last_handled: u64,
        token: CancellationToken,
    ) {
        let mut reported_gap: Option<u64> = None;
        // Failed tries of messages not yet handled, as persisted.
        let mut tries = match db::inbound_tries(&self.pool, &self.link_id, last_handled).await {
            Ok(t) => t,
            Err(e) => {
                service::metrics::db_error("inbound_tries");
                warn!("reading failed handler tries failed, counting from zero: {e}");
                Default::default()
            }
        };
        // Up to this id, batches hold one message each: an earlier process
        // died handling a batch that reached it, and one of its messages may
        // be the cause.
        let mut singles_until = self.crash_check(last_handled, &mut tries).await;
        // Messages of a batch not committed yet (behind a local fault).
        let mut carry: Vec<InboundData> = Vec::new();
        loop {
            let mut batch = std::mem::take(&mut carry);
            let mut duplicate = false;
            let single = last_handled < singles_until;
            let mut bytes: usize = batch.iter().map(|d| d.data.payload.len()).sum();
            let full = |len: usize, bytes: usize| {
                len >= self.config.max_batch
                    || bytes >= self.config.max_batch_bytes
                    || (single && len > 0)
            };
            let mut next = if batch.is_empty() {
                tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    first = data_rx.recv() => match first { Some(d) => Some(d), None => return },
                }
            } else if full(batch.len(), bytes) {
                None
            } else {
                data_rx.try_recv().ok()
            };
            while let Some(item) = next.take() {
                let expected = last_handled + batch.len() as u64 + 1;
                if item.data.id < expected {
                    metrics::counter!(service::metrics::LINK_DEDUPLICATED, "link" => self.link_id.clone())
                        .increment(1);
                }
                if item.data.id < expected && batch.is_empty() {
                    duplicate = true;
                } else if item.data.id == expected {
                    bytes = bytes.saturating_add(item.data.payload.len());
                    batch.push(item);
                } else if item.data.id > expected && reported_gap != Some(expected) {
                    reported_gap = Some(expected);
                    let detail = format!(
                        "got data id {} but the next id this side needs is {expected}; resend from {expected}",
                        item.data.id
                    );
                    warn!("{detail}");
                    send_error::<S>(
                        &out,
                        LinkErrorCode::OutOfSequence,
                        detail,
                        item.data.id,
                        expected,
                    )
                    .await;
                }
                if full(batch.len(), bytes) {
                    break;
                }
                next = data_rx.try_recv().ok();
            }
            if batch.is_empty() {
                if duplicate {
                    // Redelivered after a lost ack: acknowledge, do not handle.
                    let _ = out
                        .send(S::wrap(LinkFrame::Ack(Ack { id: last_handled })))
                        .await;
                }
                continue;
            }
            reported_gap = None;
            let data: Vec<&Data> = batch.iter().map(|d| &d.data).collect();
            let (to, done) = match self
                .commit_batch(&data, last_handled, &out, &token, &mut tries)
                .await
            {
                Some(r) => r,
                None => return,
            };
            drop(data);
            // What follows a local fault waits for the next round; the
            // rest's buffer space is released with the committed messages.
            carry = batch.split_off(done);
            drop(batch);
            last_handled = to;
            if last_handled >= singles_until {
                singles_until = 0;
            }
            // Wake the pump first: what the batch enqueued may leave even if
            // the Ack is held back (the crash tests stop right here).
            self.outbox.wake();
            // Fault injection for crash tests: hold every later Ack back, as
            // a process stopped between commit and ack would. Awaiting (not
            // fail's blocking `pause`) keeps the runtime's threads free.
            if service::failpoint::eval("link-after-commit", |_| ()).is_some() {
                warn!(id = to, "fault injection: committed, never acknowledging");
                std::future::pending::<()>().await;
            }
            if out
                .send(S::wrap(LinkFrame::Ack(Ack { id: to })))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Looks at the handling mark an earlier process left: if it died while
    /// handling ids past `last_handled`, counts a try against the message
    /// it was handling alone, or returns the end of its batch, up to which
    /// messages are then handled one per batch to find the culprit.
    async fn crash_check(
        &self,
        last_handled: u64,
        tries: &mut std::collections::BTreeMap<u64, (u32, String)>,
    ) -> u64 {
        let mark = match db::handling_mark(&self.pool, &self.link_id).await {
            Ok(m) => m,
            Err(e) => {
                service::metrics::db_error("handling_mark");
                warn!("reading the handling mark failed: {e}");
                return 0;
            }
        };
        let next = last_handled + 1;
        if mark.boot.is_empty() || mark.boot == self.boot || !(mark.from..=mark.to).contains(&next)
        {
            return 0;
        }
        metrics::counter!(service::metrics::LINK_FAULTS, "link" => self.link_id.clone(), "kind" => "crash")
            .increment(1);
        if mark.from < mark.to {
            warn!(
                from = next,
                to = mark.to,
                "an earlier process stopped while handling these messages; handling them one at a time"
            );
            return mark.to;
        }
        let failure =
            "the process stopped while handling this message (a crash, an abort or a kill)";
        match db::record_try(&self.pool, &self.link_id, next, failure).await {
            Ok(n) => {
                error!(id = next, tries = n, "{failure}");
                tries.insert(next, (n, failure.to_owned()));
            }
            Err(e) => {
                service::metrics::db_error("record_try");
                warn!("counting a try of message {next} failed: {e}");
            }
        }
        0
    }

    /// Commits one batch, or the part of it before a local fault, retrying
    /// storage trouble, local faults and handler panics with capped backoff.
    /// Returns the new watermark and how many messages of `batch` it covers,
    /// or `None` if the session or the process ends before anything could
    /// commit (the peer will resend).
    async fn commit_batch(
        &self,
        batch: &[&Data],
        last_handled: u64,
        out: &mpsc::Sender<S::Outbound>,
        token: &CancellationToken,
        tries: &mut std::collections::BTreeMap<u64, (u32, String)>,
    ) -> Option<(u64, usize)> {
        let mut delay = Duration::from_millis(50);
        let mut careful = false;
        let mut len = batch.len();
        let mut marked = false;
        loop {
            let part = &batch[..len];
            let first = part.first().map_or(0, |d| d.id);
            let last = part.last().map_or(0, |d| d.id);
            if !marked {
                let mark = db::HandlingMark {
                    from: first,
                    to: last,
                    boot: self.boot.clone(),
                };
                match db::mark_handling(&self.pool, &self.link_id, &mark).await {
                    Ok(()) => marked = true,
                    Err(e) => {
                        service::metrics::db_error("handling_mark");
                        warn!("marking batch {first}..={last} failed, retrying in {delay:?}: {e}");
                        if !self.back_off(&mut delay, token).await {
                            return None;
                        }
                        continue;
                    }
                }
            }
            let fault = match self.try_batch(part, last_handled, careful, tries).await {
                Ok(rejections) => {
                    for (id, code, detail) in rejections {
                        if code == LinkErrorCode::HandlerPanic {
                            self.set_fault(|f| f.quarantined = Some(detail.clone()));
                        }
                        send_error::<S>(out, code, detail, id, 0).await;
                    }
                    tries.retain(|id, _| *id > last);
                    if self.faults.borrow().retrying.is_some() {
                        info!(
                            link = %self.link_id,
                            "the local fault cleared: messages up to {last} handled"
                        );
                        self.set_fault(|f| f.retrying = None);
                    }
                    return Some((last, len));
                }
                Err(BatchError::NeedsSavepoints) => {
                    careful = true;
                    continue;
                }
                Err(BatchError::Storage(e)) => {
                    service::metrics::db_error("inbound_batch");
                    warn!(
                        first,
                        len, "handling batch failed, retrying in {delay:?}: {e}"
                    );
                    if self.shutdown.is_cancelled() {
                        self.unmark().await;
                        return None;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(BatchError::Local { index, reason }) => {
                    let d = part[index];
                    metrics::counter!(service::metrics::LINK_FAULTS, "link" => self.link_id.clone(), "kind" => "local")
                        .increment(1);
                    let fault = format!(
                        "message {} ({}) not handled, retrying (not acknowledged): local fault: {reason}",
                        d.id, d.uid
                    );
                    error!(link = %self.link_id, id = d.id, "{fault}; retrying in {delay:?}");
                    (index, fault)
                }
                Err(BatchError::Panicked { index, text }) => {
                    let d = part[index];
                    metrics::counter!(service::metrics::LINK_FAULTS, "link" => self.link_id.clone(), "kind" => "panic")
                        .increment(1);
                    let failure = format!("the handler panicked: {text}");
                    let n = match db::record_try(&self.pool, &self.link_id, d.id, &failure).await {
                        Ok(n) => n,
                        Err(e) => {
                            service::metrics::db_error("record_try");
                            warn!("counting a try of message {} failed: {e}", d.id);
                            tries.get(&d.id).map_or(0, |t| t.0)
                        }
                    };
                    tries.insert(d.id, (n, failure.clone()));
                    let fault = format!(
                        "message {} ({}): {failure} (try {n} of {}; then it is quarantined)",
                        d.id, d.uid, self.config.max_handler_tries
                    );
                    error!(link = %self.link_id, id = d.id, "{fault}");
                    (index, fault)
                }
            };
            let (index, fault) = fault;
            self.set_fault(|f| f.retrying = Some(fault));
            if index > 0 {
                // What came before the faulty message commits (and is
                // acknowledged) first.
                len = index;
                continue;
            }
            if !self.back_off(&mut delay, token).await {
                self.unmark().await;
                return None;
            }
        }
    }

    /// Waits `delay` (then doubles it, up to 5 s); false if the session or
    /// the process ends first.
    async fn back_off(&self, delay: &mut Duration, token: &CancellationToken) -> bool {
        let wait = *delay;
        *delay = (*delay * 2).min(Duration::from_secs(5));
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = token.cancelled() => false,
            () = self.shutdown.cancelled() => false,
        }
    }

    /// Clears this process's handling mark when it gives a batch up without
    /// dying, so its successor does not count a try against it.
    async fn unmark(&self) {
        if let Err(e) =
            db::mark_handling(&self.pool, &self.link_id, &db::HandlingMark::default()).await
        {
            warn!("clearing the handling mark failed: {e}");
        }
    }

    /// One attempt at a batch. Without `careful`, a rejection aborts the whole
    /// batch (its effects may be half-written) and asks for a careful retry,
    /// which wraps each message in a savepoint; the fast path needs none. A
    /// local fault or a panic aborts the whole batch and names the message.
    async fn try_batch(
        &self,
        batch: &[&Data],
        last_handled: u64,
        careful: bool,
        tries: &std::collections::BTreeMap<u64, (u32, String)>,
    ) -> Result<Vec<(u64, LinkErrorCode, String)>, BatchError> {
        let mut tx = self.pool.begin().await?;
        let mut handled = Vec::with_capacity(batch.len());
        let mut rejected: Vec<(u64, LinkErrorCode, String)> = Vec::new();
        for (index, &data) in batch.iter().enumerate() {
            if let Some((n, failure)) = tries.get(&data.id)
                && *n >= self.config.max_handler_tries
            {
                rejected.push((
                    data.id,
                    LinkErrorCode::HandlerPanic,
                    format!(
                        "data id {} ({}) quarantined without its effect after {n} failed tries on this {}: \
                         {failure}; a bug on this side: keep the quarantined payload for the fix",
                        data.id,
                        data.uid,
                        S::NAME
                    ),
                ));
                continue;
            }
            if data.withheld_bytes > 0 {
                rejected.push((
                    data.id,
                    LinkErrorCode::PayloadTooLarge,
                    format!(
                        "data id {} ({}): the sender withheld a message of {} bytes, more than this {}'s \
                         frame limit of {} bytes (link.max_payload_bytes); it stays in the sender's send log",
                        data.id,
                        data.uid,
                        data.withheld_bytes,
                        S::NAME,
                        self.config.max_frame_bytes()
                    ),
                ));
                continue;
            }
            let message = match H::Message::decode(data.payload.as_slice()) {
                Ok(m) => m,
                Err(e) => {
                    rejected.push((
                        data.id,
                        LinkErrorCode::MalformedPayload,
                        format!("payload of data id {} is not a valid message: {e}", data.id),
                    ));
                    continue;
                }
            };
            let Some(kind) = H::kind(&message) else {
                rejected.push((
                    data.id,
                    LinkErrorCode::UnknownMessage,
                    format!(
                        "data id {} carries a message kind this {} does not know (newer contract?)",
                        data.id,
                        S::NAME
                    ),
                ));
                continue;
            };
            let inbound = Inbound {
                link_id: &self.link_id,
                id: data.id,
                uid: &data.uid,
            };
            // The sender's span (carried with the message, persisted in its
            // send log) is the parent, so one procedure is one trace across
            // services and restarts.
            let span = tracing::info_span!(
                "handle",
                otel.name = %format!("handle {kind}"),
                link = %self.link_id,
                message_id = data.id,
                uid = %data.uid,
                kind,
            );
            service::telemetry::set_remote_parent(&span, &data.traceparent);
            // A panic is caught and the transaction dropped (rolled back):
            // whatever the handler half-did is discarded with it.
            if careful {
                let mut sp = sqlx::Connection::begin(&mut *tx).await?;
                let result = guarded(kind, self.handler.handle(&mut sp, inbound, message))
                    .instrument(span)
                    .await
                    .map_err(|text| BatchError::Panicked { index, text })?;
                match result {
                    Ok(()) => {
                        sp.commit().await?;
                        handled.push((data, kind));
                    }
                    Err(HandleError::Rejected(reason)) => {
                        sp.rollback().await?;
                        rejected.push((
                            data.id,
                            LinkErrorCode::Rejected,
                            format!("{kind} (data id {}) rejected: {reason}", data.id),
                        ));
                    }
                    Err(HandleError::Local(reason)) => {
                        return Err(BatchError::Local {
                            index,
                            reason: format!("{kind}: {reason}"),
                        });
                    }
                    Err(HandleError::Storage(e)) => return Err(e.into()),
                }
            } else {
                let result = guarded(kind, self.handler.handle(&mut tx, inbound, message))
                    .instrument(span)
                    .await
                    .map_err(|text| BatchError::Panicked { index, text })?;
                match result {
                    Ok(()) => handled.push((data, kind)),
                    Err(HandleError::Rejected(_)) => return Err(BatchError::NeedsSavepoints),
                    Err(HandleError::Local(reason)) => {
                        return Err(BatchError::Local {
                            index,
                            reason: format!("{kind}: {reason}"),
                        });
                    }
                    Err(HandleError::Storage(e)) => return Err(e.into()),
                }
            }
        }
        let inbox: Vec<db::InboxRow<'_>> = handled
            .iter()
            .map(|(d, kind)| db::InboxRow {
                id: d.id,
                uid: &d.uid,
                kind,
                payload: &d.payload,
            })
            .collect();
        let quarantine: Vec<db::QuarantineRow<'_>> = rejected
            .iter()
            .map(|(id, code, reason)| {
                let data = batch.iter().find(|d| d.id == *id);
                db::QuarantineRow {
                    id: *id,
                    uid: data.map_or("", |d| d.uid.as_str()),
                    code: code.as_str_name(),
                    reason,
                    payload: data.map_or(&[], |d| d.payload.as_slice()),
                }
            })
            .collect();
        let to = batch.last().map_or(last_handled, |d| d.id);
        db::record_inbound(
            &mut tx,
            &self.link_id,
            &inbox,
            &quarantine,
            last_handled,
            to,
            !tries.is_empty(),
        )
        .await?;
        tx.commit().await?;
        self.handled.send_replace(to);
        metrics::counter!(service::metrics::LINK_HANDLED, "link" => self.link_id.clone())
            .increment(handled.len() as u64);
        metrics::counter!(service::metrics::LINK_QUARANTINED, "link" => self.link_id.clone())
            .increment(rejected.len() as u64);
        for (id, code, reason) in &rejected {
            warn!(id, code = code.as_str_name(), "quarantined: {reason}");
        }
        Ok(rejected)
    }
}

/// Runs a handler's future, turning a panic into its text. Fault injection
/// (for tests) makes it panic (`link-handler-panic`) or kill the process
/// (`link-handler-abort`) instead of running, on every message or, with
/// `return(KIND)`, on messages of that kind.
async fn guarded<T>(kind: &str, handle: impl Future<Output = T>) -> Result<T, String> {
    use futures::FutureExt as _;
    if let Some(only) = service::failpoint::eval("link-handler-abort", |arg| arg)
        && only.as_deref().is_none_or(|k| k == kind)
    {
        // As an out-of-memory kill or a native crash would: no unwinding.
        error!("fault injection: link-handler-abort on {kind}: aborting the process");
        std::process::abort();
    }
    std::panic::AssertUnwindSafe(async move {
        if let Some(only) = service::failpoint::eval("link-handler-panic", |arg| arg)
            && only.as_deref().is_none_or(|k| k == kind)
        {
            panic!("fault injection: link-handler-panic on {kind}");
        }
        handle.await
    })
    .catch_unwind()
    .await
    .map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned())
    })
}

/// A data frame waiting to be handled, holding its share of the inbound
/// buffer until it is committed.
#[derive(Debug)]
struct InboundData {
    data: Data,
    _room: tokio::sync::OwnedSemaphorePermit,
}

#[derive(Debug)]
enum BatchError {
    NeedsSavepoints,
    Storage(sqlx::Error),
    /// A handler reported a local fault on `batch[index]`.
    Local {
        index: usize,
        reason: String,
    },
    /// A handler panicked on `batch[index]`.
    Panicked {
        index: usize,
        text: String,
    },
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(e)
    }
}

fn frame_name(frame: &LinkFrame) -> &'static str {
    match frame {
        LinkFrame::Hello(_) => "Hello",
        LinkFrame::Data(_) => "Data",
        LinkFrame::Ack(_) => "Ack",
        LinkFrame::Ping(_) => "Ping",
        LinkFrame::Pong(_) => "Pong",
        LinkFrame::Error(_) => "Error",
    }
}

fn code_name(code: i32) -> &'static str {
    LinkErrorCode::try_from(code).map_or("UNKNOWN_CODE", |c| c.as_str_name())
}

async fn send_error<S: Side>(
    out: &mpsc::Sender<S::Outbound>,
    code: LinkErrorCode,
    detail: String,
    id: u64,
    expected_id: u64,
) {
    let mut detail = detail;
    if detail.len() > MAX_ERROR_DETAIL {
        let mut cut = MAX_ERROR_DETAIL;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    let frame = LinkFrame::Error(LinkError {
        code: code.into(),
        detail,
        id,
        expected_id,
    });
    // The peer may already be gone; the error is also logged by the caller.
    let _ = out.send(S::wrap(frame)).await;
}
