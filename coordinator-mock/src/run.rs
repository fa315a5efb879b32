//! The coordinator-mock's runtime: start the coordinator, serve the admin
//! API, produce settlement blocks, stop cleanly.

use std::sync::Arc;
use std::time::Duration;

use proto::coordinator_v1::coordinator_admin_server::CoordinatorAdminServer;
use tokio_util::sync::CancellationToken;
use tower::Layer;
use tracing::{error, info, warn};

use service::auth::{Access, Role};
use service::db::DbError;
use service::server::{AdminGuardLayer, reflection_of, trace_call};

use crate::admin::Admin;
use crate::config::Config;
use crate::coordinator::Coordinator;

/// Why the coordinator-mock stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Database setup failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The coordinator could not start (database, TLS files).
    #[error(transparent)]
    Start(#[from] crate::coordinator::StartError),
    /// The metrics endpoint cannot start.
    #[error(transparent)]
    Metrics(#[from] service::metrics::MetricsError),
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
    /// A TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] service::tls::TlsError),
    /// Reflection could not be built.
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    if config.tls.insecure {
        warn!(
            "tls.insecure = true: links to processors and the admin API are plaintext and \
             unauthenticated; local runs only"
        );
    }
    if let Some(addr) = config.metrics_listen {
        service::metrics::install(addr, "coordinator-mock")?;
        info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let coordinator = Coordinator::start(&config, shutdown.clone()).await?;
    info!(
        processors = coordinator.peers.len(),
        "coordinator started; dialing processors"
    );
    if config.metrics_listen.is_some() {
        service::metrics::spawn_db_gauges(
            coordinator.pool.clone(),
            crate::metrics::db_gauges(),
            shutdown.clone(),
        );
    }
    serve(coordinator, &config, shutdown).await
}

/// Produces settlement blocks (if configured) and serves the admin API for
/// a started coordinator until `shutdown` is cancelled.
pub async fn serve(
    coordinator: Arc<Coordinator>,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // Certificates first: a bad file is a config error. The admin API
    // presents the coordinator's certificate and takes operators only.
    let tls = config.tls.server("tls")?;
    let access = Access::from_config(&config.tls);
    if access.enforced() && config.tls.operator_names.is_empty() {
        warn!("tls.operator_names is empty: no client may use the admin API");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Bind {
            field: "listen",
            addr: config.listen,
            source,
        })?;
    let (health, health_service) = tonic_health::server::health_reporter();
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
    health.set_serving::<CoordinatorAdminServer<Admin>>().await;
    // `link/<processor>`: NOT_SERVING while a local fault holds one of that
    // processor's messages back, or after one was quarantined for panics.
    for peer in &coordinator.peers {
        tokio::spawn(processor::run::report_link_faults(
            peer.link.faults(),
            health.clone(),
            format!("link/{}", peer.endpoint.name),
            shutdown.clone(),
        ));
    }
    // Reflection lists only what this port answers: the admin API and health.
    let (reflection_v1, reflection_v1alpha) = reflection_of(&[
        proto::coordinator_v1::coordinator_admin_server::SERVICE_NAME,
        tonic_health::pb::health_server::SERVICE_NAME,
    ])?;
    let guard = AdminGuardLayer::new(config.admin.concurrency_limit, config.admin.request_timeout);
    // The check comes before the guard, so refused calls take no permit.
    let admin = tonic::service::interceptor::InterceptedService::new(
        guard.layer(CoordinatorAdminServer::new(Admin::new(coordinator.clone()))),
        access.require(
            Role::Operator,
            proto::coordinator_v1::coordinator_admin_server::SERVICE_NAME,
        ),
    );
    info!(addr = %config.listen, "serving the admin API, health and reflection");
    let stop = {
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    };
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
        info!(
            operators = ?config.tls.operator_names,
            "mutual TLS on the admin API: operators' client certificates from tls.ca_file only"
        );
    }
    server
        .trace_fn(trace_call)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            // Small frames (acks, pings) must not wait for Nagle.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop,
        )
        .await?;
    // Let the links finish the transactions they are in.
    tokio::time::sleep(Duration::from_millis(100)).await;
    coordinator.pool.close().await;
    info!("stopped");
    Ok(())
}

/// Runs a loaded configuration until SIGTERM or Ctrl-C: the `run` command,
/// and the coordinator child process of the devnet and the chaos runner.
pub fn start(config: Config) -> std::process::ExitCode {
    use std::process::ExitCode;
    let Some((runtime, telemetry)) =
        processor::run::start_runtime(&config.log, "coordinator-mock", &config.node_id)
    else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(processor::run::stop_on_signal(shutdown.clone()));
        run(config, shutdown).await
    });
    drop(telemetry);
    processor::run::exit_code(result)
}

/// Loads `path` and runs it as [`start`] does; a configuration that does
/// not load exits with 2, saying why.
pub fn main(path: &std::path::Path) -> std::process::ExitCode {
    match Config::load(path) {
        Ok(config) => start(config),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
