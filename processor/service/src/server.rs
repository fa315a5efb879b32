//! gRPC plumbing shared by the processor and the coordinator-mock: the tower
//! layer guarding admin services, reflection (v1 and v1alpha, for grpcurl
//! 1.8) listing only the services each server answers, and the standard
//! health service.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower::{Layer, Service};

/// Limits an admin service: at most `limit` calls at once (the rest wait) and
/// each call at most `timeout` (then DEADLINE_EXCEEDED).
#[derive(Debug, Clone)]
pub struct AdminGuardLayer {
    semaphore: Arc<Semaphore>,
    timeout: Duration,
}

impl AdminGuardLayer {
    /// A guard admitting `limit` concurrent calls of at most `timeout` each.
    pub fn new(limit: usize, timeout: Duration) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            timeout,
        }
    }
}

impl<S> Layer<S> for AdminGuardLayer {
    type Service = AdminGuard<S>;

    fn layer(&self, inner: S) -> AdminGuard<S> {
        AdminGuard {
            inner,
            semaphore: self.semaphore.clone(),
            timeout: self.timeout,
        }
    }
}

/// The service made by [`AdminGuardLayer`]; keeps the inner service's gRPC
/// name so it can be routed like the original.
#[derive(Debug, Clone)]
pub struct AdminGuard<S> {
    inner: S,
    semaphore: Arc<Semaphore>,
    timeout: Duration,
}

impl<S: NamedService> NamedService for AdminGuard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for AdminGuard<S>
where
    S: Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, std::convert::Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // tonic's generated services are always ready, so calling a clone
        // (rather than the instance polled ready) is sound here.
        let mut inner = self.inner.clone();
        let semaphore = self.semaphore.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let work = async {
                // The semaphore is never closed, so acquiring cannot fail.
                let _permit = semaphore.acquire_owned().await;
                inner.call(request).await
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(response) => response,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the call took longer than {timeout:?} (admin.request_timeout); \
                     narrow the query or retry"
                ))
                .into_http()),
            }
        })
    }
}

/// The reflection services' own names (both are served, for grpcurl old
/// and new).
pub const REFLECTION_SERVICES: [&str; 2] = [
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
];

/// What the processor serves on its port, as its reflection lists it
/// (besides reflection itself): the link, the admin API and health. The
/// descriptor set also holds `coordinator.v1`, which the processor does not
/// serve, so it is not listed.
pub const PROCESSOR_SERVICES: [&str; 3] = [
    proto::processor_v1::processor_server::SERVICE_NAME,
    proto::processor_v1::processor_admin_server::SERVICE_NAME,
    tonic_health::pb::health_server::SERVICE_NAME,
];

/// The processor's reflection services (v1 and v1alpha): they list exactly
/// [`PROCESSOR_SERVICES`] and reflection.
pub fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    reflection_of(&PROCESSOR_SERVICES)
}

/// Reflection services (v1 and v1alpha) describing the contract and health,
/// listing only `served` and the reflection services: a server lists what
/// it answers, never a service it would answer with `Unimplemented`.
pub fn reflection_of(
    served: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let configure = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Both reflection versions are served, so both are described.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        for name in served.iter().chain(&REFLECTION_SERVICES) {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    Ok((configure().build_v1()?, configure().build_v1alpha()?))
}

/// A span per gRPC call.
/// A caller's `traceparent` metadata makes it a child of the caller's span.
pub fn trace_call(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let span = tracing::info_span!("grpc", otel.name = %path, path = %path);
    crate::telemetry::set_remote_parent(&span, crate::telemetry::traceparent_of(request.headers()));
    span
}
