//! The coordinator: its database, one link per processor, the dialers that
//! keep those links up, and the procedures it drives.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use proto::processor_v1::processor_client::ProcessorClient;
use proto::processor_v1::{LinkProbe, coordinator_message::Kind};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::{ClientTlsConfig, Endpoint};

use tracing::{Instrument, info, info_span, warn};

use link::{CoordinatorSide, Link, SessionError};
use service::db::{self, DbError, InstanceLock};

use crate::backoff::Backoff;
use crate::common::out;
use crate::config::{Config, ProcessorEndpoint, ReconnectConfig};
use crate::dispatch::ProcessorHandler;
pub use crate::error::CoordinatorError;
use crate::settlement;

/// The coordinator's end of a link to one processor.
pub type ProcessorLink = Link<CoordinatorSide, ProcessorHandler>;

/// Advisory-lock key of a running coordinator-mock ("MNRCOORD").
pub const COORDINATOR_LOCK_KEY: i64 = 0x4D4E_5243_4F4F_5244;

/// Connection attempts to one processor, for the admin API.
#[derive(Debug, Default)]
pub struct DialState {
    /// Failed attempts since the last stream came up.
    pub failed_connects: AtomicU32,
    /// The last failure.
    pub last_error: Mutex<String>,
}

/// One processor the coordinator serves.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its configuration.
    pub endpoint: ProcessorEndpoint,
    /// Mutual TLS towards it (`None`: plaintext, `tls.insecure`).
    pub tls: Option<ClientTlsConfig>,
    /// The link to it.
    pub link: Arc<ProcessorLink>,
    /// Its dialer's state.
    pub dial: Arc<DialState>,
}

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Database setup failed (including: another coordinator holds it).
    #[error(transparent)]
    Db(#[from] DbError),
    /// The TLS files cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] service::tls::TlsError),
}

impl Peer {
    /// An endpoint for this processor (TLS as configured), for the link and
    /// for admin calls.
    pub fn endpoint(&self) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(self.endpoint.endpoint.clone())?;
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone()),
            None => Ok(endpoint),
        }
    }
}

/// A running coordinator.
#[derive(Debug)]
pub struct Coordinator {
    /// Its database.
    pub pool: PgPool,
    /// Its node id.
    pub node_id: String,
    /// The processors, in configuration order.
    pub peers: Vec<Peer>,
    /// What each new key fixes for its processors.
    pub chain: crate::config::ChainParams,
    /// Where the Monero horizon of settlement blocks comes from.
    pub daemon: Option<Arc<processor::monero::Daemon>>,
    /// Most burns one settlement block carries (`settlement.max_burns_per_block`).
    pub max_burns_per_block: usize,
    _lock: InstanceLock,
}

impl Coordinator {
    /// Takes the instance lock, migrates, creates the links and starts one
    /// dialer per processor. Dialers stop when `shutdown` is cancelled.
    pub async fn start(
        config: &Config,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StartError> {
        let tls = config.tls.client("tls")?;
        let lock = InstanceLock::acquire_key(
            &config.database_url,
            COORDINATOR_LOCK_KEY,
            "coordinator-mock",
        )
        .await?;
        let pool = db::connect(&config.database_url, config.max_db_connections).await?;
        // The link's tables (link::MIGRATOR, versions 1-99) and the
        // coordinator's own (./migrations, 100-199), as one migrator.
        db::migrate(
            &pool,
            &config.database_url,
            &[&link::MIGRATOR, &sqlx::migrate!("./migrations")],
        )
        .await?;
        let mut peers = Vec::with_capacity(config.processors.len());
        for endpoint in &config.processors {
            let link = Link::new(
                pool.clone(),
                endpoint.name.clone(),
                config.node_id.clone(),
                config.link.clone(),
                ProcessorHandler,
                shutdown.child_token(),
            )
            .await
            .map_err(DbError::from)?;
            link.spawn_pruner();
            peers.push(Peer {
                endpoint: endpoint.clone(),
                tls: tls.clone(),
                link,
                dial: Arc::new(DialState::default()),
            });
        }
        let coordinator = Arc::new(Self {
            pool,
            node_id: config.node_id.clone(),
            peers,
            chain: config.keygen.chain(),
            daemon: config
                .settlement
                .monero_daemon_url
                .clone()
                .map(|url| Arc::new(processor::monero::Daemon::new(url))),
            max_burns_per_block: config.settlement.max_burns_per_block,
            _lock: lock,
        });
        tokio::spawn(keygen_timer(
            coordinator.clone(),
            config.keygen.clone(),
            config.signing.round_timeout,
            shutdown.clone(),
        ));
        if let Some(interval) = config.settlement.block_interval {
            tokio::spawn(produce_blocks(
                coordinator.clone(),
                interval,
                shutdown.clone(),
            ));
        }
        for peer in &coordinator.peers {
            let span = info_span!("dialer", processor = %peer.endpoint.name);
            tokio::spawn(
                dial_loop(peer.clone(), config.reconnect.clone(), shutdown.clone())
                    .instrument(span),
            );
        }
        Ok(coordinator)
    }

    /// The processor named `name`.
    pub fn peer(&self, name: &str) -> Result<&Peer, CoordinatorError> {
        self.peers
            .iter()
            .find(|p| p.endpoint.name == name)
            .ok_or_else(|| CoordinatorError::UnknownProcessor(name.to_owned()))
    }

    /// The Monero horizon this coordinator sees now: its daemon's tip less
    /// the confirmation depth. 0 without a daemon, or when the daemon cannot
    /// be reached: a settlement block never lowers the horizon (see
    /// `settlement::emit_block`), so the chain keeps the last one and never
    /// waits on the daemon.
    pub async fn monero_horizon(&self) -> u64 {
        let Some(daemon) = &self.daemon else { return 0 };
        match daemon.tip().await {
            Ok(tip) => tip.saturating_sub(self.chain.confirmations),
            Err(e) => {
                warn!("the Monero horizon does not advance: {e}");
                0
            }
        }
    }

    /// Produces the next settlement block and sends it to every processor.
    pub async fn emit_settlement_block(&self) -> Result<u64, CoordinatorError> {
        Ok(self.emit().await?.number)
    }

    async fn emit(&self) -> Result<settlement::Emitted, CoordinatorError> {
        let links: Vec<String> = self.peers.iter().map(|p| p.endpoint.name.clone()).collect();
        let horizon = self.monero_horizon().await;
        let emitted =
            settlement::emit_block(&self.pool, &links, horizon, self.max_burns_per_block).await?;
        self.wake_all();
        Ok(emitted)
    }

    /// Starts a key generation among `processors` (names; empty: all, in
    /// configuration order). Returns the session number.
    pub async fn start_keygen(
        &self,
        threshold: u32,
        processors: &[String],
    ) -> Result<u64, CoordinatorError> {
        let names: Vec<String> = if processors.is_empty() {
            self.peers.iter().map(|p| p.endpoint.name.clone()).collect()
        } else {
            for name in processors {
                self.peer(name)?;
            }
            processors.to_vec()
        };
        let session = crate::keygen::start(&self.pool, threshold, &names, &self.chain).await?;
        for peer in &self.peers {
            peer.link.outbox().wake();
        }
        Ok(session)
    }

    /// Registers a deposit account with every processor, in the next
    /// settlement block (produced now), which fixes the Monero block it is
    /// credited from. Returns whether it is new, and that block.
    pub async fn register_account(&self, account: u32) -> Result<(bool, u64), CoordinatorError> {
        let stored = i32::try_from(account)
            .ok()
            .filter(|&a| a >= 1)
            .ok_or_else(|| {
                CoordinatorError::InvalidArgument(format!(
                    "account {account} cannot be registered: accounts start at 1 (0 is the processors' own)"
                ))
            })?;
        let inserted = settlement::db::insert_account(&self.pool, stored).await?;
        if inserted {
            self.emit().await?;
        }
        let active_from = settlement::db::account_active_from(&self.pool, stored)
            .await?
            .and_then(|a| u64::try_from(a).ok())
            .ok_or_else(|| {
                CoordinatorError::FailedPrecondition(format!(
                    "account {account} waits for the next settlement block; ask again shortly"
                ))
            })?;
        Ok((inserted, active_from))
    }

    /// Wakes every link's pump (after a commit that enqueued to several).
    pub fn wake_all(&self) {
        for peer in &self.peers {
            peer.link.outbox().wake();
        }
    }

    /// Sends a link probe to one processor; returns its data id.
    pub async fn send_probe(
        &self,
        processor: &str,
        payload: Vec<u8>,
    ) -> Result<u64, CoordinatorError> {
        let peer = self.peer(processor)?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut tx = self.pool.begin().await?;
        let ids = link::enqueue(
            &mut tx,
            peer.link.link_id(),
            &[out(
                format!("link-probe/{nanos}"),
                "link_probe",
                Kind::LinkProbe(LinkProbe { payload }),
            )],
        )
        .await?;
        tx.commit().await?;
        peer.link.outbox().wake();
        Ok(ids.first().copied().unwrap_or(0))
    }
}

/// Fails key generations whose round outlived the timeout, and starts the
/// automatic first key generation once every processor has an identity.
async fn keygen_timer(
    coordinator: Arc<Coordinator>,
    config: crate::config::KeygenConfig,
    signing_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut auto = config.auto_start_threshold;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        match crate::keygen::expire(&coordinator.pool, config.round_timeout).await {
            Ok(0) => {}
            // A re-attempt's KeyGenStart messages are waiting to leave.
            Ok(_) => coordinator.wake_all(),
            Err(e) => warn!("checking key generation timeouts failed: {e}"),
        }
        // A confirmed key or a registration takes effect with the next
        // settlement block: produce it now rather than at the next interval.
        match settlement::pending(&coordinator.pool).await {
            Ok(true) => {
                if let Err(e) = coordinator.emit().await {
                    warn!("producing a settlement block for pending registrations failed: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => warn!("checking pending registrations failed: {e}"),
        }
        match crate::signing::reattempt_stalled(&coordinator.pool, signing_timeout).await {
            Ok(0) => {}
            Ok(_) => coordinator.wake_all(),
            Err(e) => warn!("checking signing timeouts failed: {e}"),
        }
        if let Some(threshold) = auto {
            let existing = crate::keygen::db::session_count(&coordinator.pool).await;
            if existing.is_ok_and(|n| n > 0) {
                auto = None;
                continue;
            }
            match coordinator
                .start_keygen(threshold, &config.auto_start_processors)
                .await
            {
                Ok(session) => {
                    info!(session, threshold, "automatic key generation started");
                    auto = None;
                }
                Err(CoordinatorError::FailedPrecondition(why)) => {
                    tracing::debug!("automatic key generation waits: {why}");
                }
                Err(e) => warn!("automatic key generation failed to start: {e}"),
            }
        }
    }
}

/// Produces a settlement block every `interval`: the chain's clock, which
/// also moves the Monero horizon processors scan up to.
async fn produce_blocks(
    coordinator: Arc<Coordinator>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match coordinator.emit().await {
            Ok(block) => tracing::debug!(
                number = block.number,
                monero_horizon = block.monero_horizon,
                "settlement block produced and sent to every processor"
            ),
            Err(e) => warn!("producing a settlement block failed: {e}"),
        }
    }
}

/// Keeps one processor's link up: connect, run the session, back off, again.
async fn dial_loop(peer: Peer, reconnect: ReconnectConfig, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(reconnect.initial, reconnect.max);
    while !shutdown.is_cancelled() {
        let attempt_started = SystemTime::now();
        let result = dial_once(&peer, &reconnect).await;
        let came_up = peer
            .link
            .live_status()
            .connected_since
            .is_some_and(|t| t >= attempt_started);
        if came_up {
            backoff.reset();
            peer.dial.failed_connects.store(0, Ordering::Relaxed);
        }
        match result {
            Ok(()) | Err(SessionError::Stopped) if shutdown.is_cancelled() => return,
            Ok(()) => info!("stream to {} ended", peer.endpoint.endpoint),
            Err(e) => {
                if !came_up {
                    peer.dial.failed_connects.fetch_add(1, Ordering::Relaxed);
                }
                warn!("link to {} down: {e}", peer.endpoint.endpoint);
                if let Ok(mut last) = peer.dial.last_error.lock() {
                    *last = e.to_string();
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn dial_once(peer: &Peer, reconnect: &ReconnectConfig) -> Result<(), SessionError> {
    let endpoint = peer
        .endpoint()
        .map_err(|e| SessionError::Closed(format!("bad endpoint or TLS setup: {e}")))?
        .connect_timeout(reconnect.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| SessionError::Closed(format!("cannot connect: {e}")))?;
    // The link's frame limit both ways: a frame at it passes, one beyond is
    // refused by the codec and reported to the processor.
    let frame_limit = peer.link.max_frame_bytes();
    let mut client = ProcessorClient::new(channel)
        .max_decoding_message_size(frame_limit)
        .max_encoding_message_size(frame_limit);
    peer.link
        .clone()
        .dial(move |stream| async move {
            let mut request = tonic::Request::new(stream);
            service::telemetry::inject(request.metadata_mut());
            client.connect(request).await.map(|r| r.into_inner())
        })
        .await
}
