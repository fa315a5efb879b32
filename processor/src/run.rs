//! The processor's runtime: lock, migrate, serve, stop cleanly.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use proto::processor_v1::processor_admin_server::ProcessorAdminServer;
use proto::processor_v1::processor_server::{Processor, ProcessorServer};
use proto::processor_v1::{CoordinatorFrame, ProcessorFrame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tower::Layer;
use tracing::{error, info, warn};

use crate::admin::{Admin, CoordinatorLink};
use crate::auth::{Access, Role};
use crate::config::Config;
use crate::db::{self, DbError, InstanceLock};
use crate::inbound::CoordinatorHandler;
use crate::keygen;
use crate::keystore::Keystore;
use crate::link::Link;
use crate::server::{AdminGuardLayer, reflection, trace_call};

/// The name of the processor's end of its coordinator link.
pub const COORDINATOR_LINK: &str = "coordinator";

/// Why the processor stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Database setup failed (including: another processor holds the lock).
    #[error(transparent)]
    Db(#[from] DbError),
    /// A listen address cannot be bound.
    #[error("cannot listen on {addr} (config field `{field}`): {source}")]
    Bind {
        /// The config field.
        field: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The keystore cannot be opened (KEK file, wrong KEK).
    #[error(transparent)]
    Keystore(#[from] crate::keystore::KeystoreError),
    /// Reflection could not be built from the contract.
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The metrics endpoint cannot start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The session holding the instance lock died; another processor could
    /// now take the database, so this one stops.
    #[error("lost the database session that holds the instance lock: {0}")]
    LockLost(sqlx::Error),
}

/// Serves `Processor.Connect`.
#[derive(Debug, Clone)]
pub struct LinkService {
    link: Arc<CoordinatorLink>,
    shutdown: CancellationToken,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<ProcessorFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Processor for LinkService {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        request: Request<Streaming<CoordinatorFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        if self.shutdown.is_cancelled() {
            return Err(Status::unavailable(
                "the processor is shutting down; reconnect later",
            ));
        }
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.link.channel_capacity());
        tokio::spawn(self.link.clone().accept(inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

/// Runs the processor until `shutdown` is cancelled (then drains and returns
/// `Ok`) or something fatal happens.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    // Certificates before anything else: a bad file is a config error.
    let tls = config.tls.server("tls")?;
    if tls.is_none() {
        warn!(
            "tls.insecure = true: the coordinator link and admin API are plaintext and unauthenticated; local runs only"
        );
    }
    if let Some(addr) = config.metrics_listen {
        crate::metrics::install(addr, "processor")?;
        info!(%addr, "serving Prometheus metrics at /metrics");
    }
    // Lock first: a second instance must not even run migrations.
    let mut lock = InstanceLock::acquire(&config.database_url).await?;
    let pool = db::connect(&config.database_url, config.max_db_connections).await?;
    db::migrate(&pool, &config.database_url).await?;
    info!(node_id = %config.node_id, "database ready, instance lock held");
    if config.metrics_listen.is_some() {
        crate::metrics::spawn_db_gauges(
            pool.clone(),
            vec![
                crate::metrics::BACKLOG_GAUGE,
                crate::metrics::DbGauge {
                    name: crate::metrics::PLANS,
                    label: "status",
                    query: "SELECT status, count(*) FROM plans GROUP BY status",
                },
                crate::metrics::DbGauge {
                    name: crate::metrics::KEY_BALANCE,
                    label: "session",
                    query: "SELECT session::text, COALESCE(SUM(amount), 0)::BIGINT FROM outputs
                            WHERE status IN ('locked', 'received', 'included', 'reserved')
                            GROUP BY session",
                },
                crate::metrics::DbGauge {
                    name: crate::metrics::BATCHES,
                    label: "status",
                    query: "SELECT status, count(*) FROM batches GROUP BY status",
                },
            ],
            shutdown.clone(),
        );
    }
    let keystore = Keystore::open(&pool, &config.keystore.kek_file).await?;
    info!(identity = %hex::encode(keystore.identity_public()), "keystore open");

    let link: Arc<CoordinatorLink> = Link::new(
        pool.clone(),
        COORDINATOR_LINK,
        config.node_id.clone(),
        config.link.clone(),
        CoordinatorHandler::new(keystore.clone()),
        shutdown.child_token(),
    )
    .await
    .map_err(DbError::from)?;
    link.spawn_pruner();
    // The coordinator needs our identity key before it can start a DKG.
    let mut tx = pool.begin().await.map_err(DbError::from)?;
    keygen::announce_identity(&mut tx, COORDINATOR_LINK, &keystore)
        .await
        .map_err(DbError::from)?;
    tx.commit().await.map_err(DbError::from)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    if let Some(monero) = config.monero.clone() {
        let daemon = Arc::new(crate::monero::Daemon::new(monero.daemon_url.clone()));
        info!(daemon = %monero.daemon_url, confirmations = monero.confirmations, "scanning monerod");
        // The scheduler acts on finalized blocks and on what the
        // coordinator relays: it runs as soon as either is committed.
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut handled = link.handled();
        let on_handled = wake.clone();
        tokio::spawn(async move {
            while handled.changed().await.is_ok() {
                on_handled.notify_one();
            }
        });
        let context = crate::scanner::ScanContext {
            keystore: keystore.clone(),
            link_id: COORDINATOR_LINK.to_owned(),
            outbox: link.outbox().clone(),
            health: health.clone(),
            blocks: Arc::new(config.scheduler.clone()),
            finalized: wake.clone(),
        };
        tokio::spawn(crate::scheduler::run(
            pool.clone(),
            daemon.clone(),
            crate::scheduler::SchedulerContext {
                keystore: keystore.clone(),
                link_id: COORDINATOR_LINK.to_owned(),
                outbox: link.outbox().clone(),
                config: config.scheduler.clone(),
            },
            wake,
            shutdown.clone(),
        ));
        tokio::spawn(crate::scanner::run(
            pool.clone(),
            daemon,
            monero,
            context,
            shutdown.clone(),
        ));
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Bind {
            field: "listen",
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| RunError::Bind {
        field: "listen",
        addr: config.listen,
        source,
    })?;
    if let Some(addr) = config.health_listen {
        // Probes (kubelet) cannot present a client certificate: health
        // alone, plaintext, on its own port.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind {
                field: "health_listen",
                addr,
                source,
            })?;
        let health_only = tonic::transport::Server::builder()
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown.clone().cancelled_owned(),
            );
        tokio::spawn(async move {
            if let Err(e) = health_only.await {
                error!("the health endpoint (health_listen) failed: {e}");
            }
        });
        info!(%addr, "serving grpc.health.v1 (plaintext) for probes");
    }

    health.set_serving::<ProcessorServer<LinkService>>().await;
    health.set_serving::<ProcessorAdminServer<Admin>>().await;
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let guard = AdminGuardLayer::new(config.admin.concurrency_limit, config.admin.request_timeout);
    // Who may call what, by client-certificate name (crate::auth): checked
    // before a service sees the call, so a refused Connect never touches
    // the live link session.
    let access = Access::from_config(&config.tls);
    if access.enforced() && config.tls.operator_names.is_empty() {
        warn!("tls.operator_names is empty: no client may use the admin API");
    }
    // The check comes before the guard, so refused calls take no permit.
    let admin = InterceptedService::new(
        guard.layer(ProcessorAdminServer::new(
            Admin::new(
                pool.clone(),
                link.clone(),
                config.node_id.clone(),
                keystore.identity_public(),
            )
            .with_scanning(config.monero.is_some()),
        )),
        access.require(
            Role::Operator,
            proto::processor_v1::processor_admin_server::SERVICE_NAME,
        ),
    );
    // The frame limit both ways is the link's: a frame at it passes, one
    // beyond is refused by the codec and reported to the peer.
    let frame_limit = config.link.max_frame_bytes();
    let link_service = InterceptedService::new(
        ProcessorServer::new(LinkService {
            link: link.clone(),
            shutdown: shutdown.clone(),
        })
        .max_decoding_message_size(frame_limit)
        .max_encoding_message_size(frame_limit),
        access.require(
            Role::Coordinator,
            proto::processor_v1::processor_server::SERVICE_NAME,
        ),
    );
    tokio::spawn(report_link_faults(
        link.faults(),
        health.clone(),
        LINK_HEALTH.to_owned(),
        shutdown.clone(),
    ));

    info!(addr = %local, "serving the coordinator link, admin API, health and reflection");
    let lock_lost = CancellationToken::new();
    let watchdog = {
        let shutdown = shutdown.clone();
        let lock_lost = lock_lost.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                if let Err(e) = lock.check().await {
                    error!("instance lock session lost: {e}");
                    lock_lost.cancel();
                    return Err(e);
                }
            }
        })
    };

    let stop = {
        let shutdown = shutdown.clone();
        let lock_lost = lock_lost.clone();
        async move {
            tokio::select! {
                () = shutdown.cancelled() => info!("shutdown requested: draining"),
                () = lock_lost.cancelled() => {}
            }
            // Links end their sessions (finishing any transaction in flight)
            // once the shutdown token is cancelled.
            shutdown.cancel();
        }
    };
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
        info!(
            coordinator = config.tls.coordinator_name.as_deref().unwrap_or_default(),
            operators = ?config.tls.operator_names,
            "mutual TLS: clients must present a certificate from tls.ca_file; the link is the \
             coordinator's, the admin API the operators'"
        );
    }
    let served = server
        .trace_fn(trace_call)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(link_service)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            // Small frames (acks, pings) must not wait for Nagle.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop,
        );
    // A peer that never closes its stream must not hold the exit hostage.
    let result = tokio::select! {
        r = served => r.map_err(RunError::from),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        } => {
            warn!("streams still open 10s after shutdown; exiting anyway");
            Ok(())
        }
    };
    if lock_lost.is_cancelled()
        && let Ok(Err(e)) = watchdog.await
    {
        return Err(RunError::LockLost(e));
    }
    pool.close().await;
    info!("stopped");
    result
}

/// The health service's name for the coordinator link's handling: NOT_SERVING
/// while a local fault is retried or after a message was quarantined because
/// its handler kept panicking (the reason is in `GetStatus`, the log and
/// `custody_link_handler_faults_total`).
pub const LINK_HEALTH: &str = "link";

/// Mirrors a link's faults into the health service as `service` (also used
/// by the coordinator-mock, one service per processor link).
pub async fn report_link_faults(
    mut faults: tokio::sync::watch::Receiver<crate::link::LinkFault>,
    health: tonic_health::server::HealthReporter,
    service: String,
    shutdown: CancellationToken,
) {
    loop {
        let status = if faults.borrow_and_update().is_clear() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health.set_service_status(&service, status).await;
        tokio::select! {
            r = faults.changed() => if r.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen for SIGTERM: {e}");
            return;
        }
    };
    let what = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "interrupt",
    };
    // Cancel before logging: stopping must not depend on the log sink.
    shutdown.cancel();
    info!("{what} received");
}

/// The whole `run` command for a configuration file: load it (exit 2 on a
/// bad one, naming the field), start logging and the runtime, run until
/// SIGTERM or Ctrl-C. Also how the devnet starts its processors.
pub fn main(config_path: &std::path::Path) -> std::process::ExitCode {
    use std::process::ExitCode;
    // Before anything else: a fault the operator asked for and this build
    // cannot inject must not be silently skipped.
    if let Err(e) = crate::failpoint::check_environment() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some((runtime, telemetry)) = start_runtime(&config.log, "processor", &config.node_id)
    else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async move {
        let _failpoints = crate::failpoint::setup();
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        run(config, shutdown).await
    });
    drop(telemetry);
    exit_code(result)
}

/// How a service's run ended, as its exit code; an error is logged and
/// printed on stderr (the processor and the coordinator-mock alike).
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The multi-threaded runtime and, made on it, logging and trace export as
/// `service` (see [`crate::telemetry::init`]). Drop the [`Telemetry`] before
/// the runtime so the last spans are flushed. `None` (after saying why on
/// stderr) when the runtime cannot start.
///
/// [`Telemetry`]: crate::telemetry::Telemetry
pub fn start_runtime(
    log: &crate::config::LogConfig,
    service: &str,
    instance: &str,
) -> Option<(tokio::runtime::Runtime, crate::telemetry::Telemetry)> {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return None;
        }
    };
    // The exporter's gRPC channel lives on the runtime.
    let telemetry = {
        let _on_runtime = runtime.enter();
        crate::telemetry::init(&log.filter, log.json, service, instance)
    };
    Some((runtime, telemetry))
}
