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

pub mod db;
pub mod frame;

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
use tracing::{Instrument, debug, info, info_span, warn};

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
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
            max_batch: 1000,
            max_in_flight: 20_000,
            poll_interval: Duration::from_millis(250),
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
        Ok(())
    }
}

/// Why a handler did not act on a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message is well-formed but refused for good (it contradicts state,
    /// or this version does not act on its kind). It is quarantined and
    /// acknowledged, and the sender gets a `REJECTED` error frame.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Storage trouble: the batch is rolled back and retried.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
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
/// [`db::enqueue`]. Call [`Outbox::wake`] after the commit.
pub async fn enqueue(
    conn: &mut PgConnection,
    link_id: &str,
    messages: &[OutMessage],
) -> Result<Vec<u64>, sqlx::Error> {
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
    /// The highest outbound id this process has sent, to tell first sends
    /// from redeliveries in the metrics.
    max_sent: AtomicU64,
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
        db::ensure_link(&pool, &link_id).await?;
        let mut conn = pool.acquire().await?;
        let counters = db::counters(&mut conn, &link_id).await?;
        drop(conn);
        Ok(Arc::new(Self {
            acked: watch::Sender::new(counters.acked_out),
            max_sent: AtomicU64::new(counters.acked_out),
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

    /// The link's id (the peer's name on this side).
    pub fn link_id(&self) -> &str {
        &self.link_id
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

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
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
        })
    }

    fn publish_ack(&self, id: u64) {
        self.acked.send_if_modified(|cur| {
            let newer = id > *cur;
            if newer {
                metrics::counter!(crate::metrics::LINK_ACKED, "link" => self.link_id.clone())
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
        })
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
    /// the caller's certificate: [`crate::auth`].)
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
        metrics::counter!(crate::metrics::LINK_SESSIONS, "link" => self.link_id.clone())
            .increment(1);
        metrics::gauge!(crate::metrics::LINK_CONNECTED, "link" => self.link_id.clone()).set(1.0);
        self.set_live(|l| {
            l.peer = peer;
            l.connected = true;
            l.connected_since = Some(now);
            l.last_heard = Some(now);
        });
        let clock = Instant::now();
        let heard = Arc::new(AtomicU64::new(0));
        let (data_tx, data_rx) = mpsc::channel::<Data>(self.config.max_batch.saturating_mul(4));
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
            r = self.read(inbound, data_tx, ack_tx, rewind_tx, out.clone(), heard.clone(), clock) => r,
            r = self.pump(out.clone(), ack_rx.clone(), rewind_rx, start_from, &token) => r,
            r = self.record_acks(ack_rx) => r,
            r = self.heartbeat(out.clone(), heard, clock) => r,
            () = token.cancelled() => Err(SessionError::Stopped),
        };
        token.cancel();
        metrics::gauge!(crate::metrics::LINK_CONNECTED, "link" => self.link_id.clone()).set(0.0);
        if let Err(e) = handler.await {
            warn!("inbound handler task failed: {e}");
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn read<I>(
        &self,
        mut inbound: I,
        data_tx: mpsc::Sender<Data>,
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
                    if data_tx.send(data).await.is_err() {
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
            let rows = match db::fetch_outbound(&self.pool, &self.link_id, next, limit).await {
                Ok(rows) => rows,
                Err(e) => {
                    crate::metrics::db_error("send_log_read");
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
                    crate::metrics::LINK_SENT
                } else {
                    crate::metrics::LINK_REDELIVERED
                };
                metrics::counter!(counter, "link" => self.link_id.clone()).increment(1);
                let frame = LinkFrame::Data(Data {
                    id: row.id,
                    payload: row.payload,
                    uid: row.uid,
                    traceparent: row.traceparent,
                });
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
                        crate::metrics::db_error("ack");
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
        mut data_rx: mpsc::Receiver<Data>,
        out: mpsc::Sender<S::Outbound>,
        mut last_handled: u64,
        token: CancellationToken,
    ) {
        let mut reported_gap: Option<u64> = None;
        loop {
            let first = tokio::select! {
                biased;
                () = token.cancelled() => return,
                first = data_rx.recv() => match first { Some(d) => d, None => return },
            };
            let mut batch = Vec::with_capacity(self.config.max_batch.min(64));
            let mut duplicate = false;
            let mut next = first;
            loop {
                let expected = last_handled + batch.len() as u64 + 1;
                if next.id < expected {
                    metrics::counter!(crate::metrics::LINK_DEDUPLICATED, "link" => self.link_id.clone())
                        .increment(1);
                }
                if next.id < expected && batch.is_empty() {
                    duplicate = true;
                } else if next.id == expected {
                    batch.push(next);
                } else if next.id > expected && reported_gap != Some(expected) {
                    reported_gap = Some(expected);
                    let detail = format!(
                        "got data id {} but the next id this side needs is {expected}; resend from {expected}",
                        next.id
                    );
                    warn!("{detail}");
                    send_error::<S>(
                        &out,
                        LinkErrorCode::OutOfSequence,
                        detail,
                        next.id,
                        expected,
                    )
                    .await;
                }
                if batch.len() >= self.config.max_batch {
                    break;
                }
                match data_rx.try_recv() {
                    Ok(d) => next = d,
                    Err(_) => break,
                }
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
            let to = match self.commit_batch(&batch, last_handled, &out).await {
                Some(to) => to,
                None => return,
            };
            last_handled = to;
            // Wake the pump first: what the batch enqueued may leave even if
            // the Ack is held back (the crash tests stop right here).
            self.outbox.wake();
            // Fault injection for crash tests: hold every later Ack back, as
            // a process stopped between commit and ack would. Awaiting (not
            // fail's blocking `pause`) keeps the runtime's threads free.
            if crate::failpoint::eval("link-after-commit", |_| ()).is_some() {
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

    /// Commits one batch, retrying storage trouble with capped backoff.
    /// Returns the new watermark, or `None` if the process is shutting down
    /// before the batch could commit (the peer will resend it).
    async fn commit_batch(
        &self,
        batch: &[Data],
        last_handled: u64,
        out: &mpsc::Sender<S::Outbound>,
    ) -> Option<u64> {
        let mut delay = Duration::from_millis(50);
        let mut careful = false;
        loop {
            match self.try_batch(batch, last_handled, careful).await {
                Ok(rejections) => {
                    for (id, code, detail) in rejections {
                        send_error::<S>(out, code, detail, id, 0).await;
                    }
                    return batch.last().map(|d| d.id);
                }
                Err(BatchError::NeedsSavepoints) => careful = true,
                Err(BatchError::Storage(e)) => {
                    crate::metrics::db_error("inbound_batch");
                    warn!(
                        first = batch.first().map(|d| d.id),
                        len = batch.len(),
                        "handling batch failed, retrying in {delay:?}: {e}"
                    );
                    if self.shutdown.is_cancelled() {
                        return None;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One attempt at a batch. Without `careful`, a rejection aborts the whole
    /// batch (its effects may be half-written) and asks for a careful retry,
    /// which wraps each message in a savepoint; the fast path needs none.
    async fn try_batch(
        &self,
        batch: &[Data],
        last_handled: u64,
        careful: bool,
    ) -> Result<Vec<(u64, LinkErrorCode, String)>, BatchError> {
        let mut tx = self.pool.begin().await?;
        let mut handled = Vec::with_capacity(batch.len());
        let mut rejected: Vec<(u64, LinkErrorCode, String)> = Vec::new();
        for data in batch {
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
            crate::telemetry::set_remote_parent(&span, &data.traceparent);
            if careful {
                let mut sp = sqlx::Connection::begin(&mut *tx).await?;
                match self
                    .handler
                    .handle(&mut sp, inbound, message)
                    .instrument(span)
                    .await
                {
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
                    Err(HandleError::Storage(e)) => return Err(e.into()),
                }
            } else {
                match self
                    .handler
                    .handle(&mut tx, inbound, message)
                    .instrument(span)
                    .await
                {
                    Ok(()) => handled.push((data, kind)),
                    Err(HandleError::Rejected(_)) => return Err(BatchError::NeedsSavepoints),
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
        )
        .await?;
        tx.commit().await?;
        metrics::counter!(crate::metrics::LINK_HANDLED, "link" => self.link_id.clone())
            .increment(handled.len() as u64);
        metrics::counter!(crate::metrics::LINK_QUARANTINED, "link" => self.link_id.clone())
            .increment(rejected.len() as u64);
        for (id, code, reason) in &rejected {
            warn!(id, code = code.as_str_name(), "quarantined: {reason}");
        }
        Ok(rejected)
    }
}

#[derive(Debug)]
enum BatchError {
    NeedsSavepoints,
    Storage(sqlx::Error),
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
    let frame = LinkFrame::Error(LinkError {
        code: code.into(),
        detail,
        id,
        expected_id,
    });
    // The peer may already be gone; the error is also logged by the caller.
    let _ = out.send(S::wrap(frame)).await;
}
