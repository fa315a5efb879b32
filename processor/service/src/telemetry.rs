//! Logs and traces: `tracing` to stdout (text or JSON) and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans exported over OTLP/gRPC.
//!
//! Trace context crosses services in two ways: in gRPC metadata
//! (`traceparent`) on unary calls and when a link stream opens, and inside
//! every link data frame, because one long-lived stream carries many
//! procedures and a message may be redelivered after a restart; the context
//! is stored with the message in the send log.
//!
//! Span fields are ids, heights, sessions and attempts; never key material.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// The W3C header and carrier key.
const TRACEPARENT: &str = "traceparent";

/// Keeps the OTLP exporter; dropping it flushes the spans not yet sent.
/// Drop it before the Tokio runtime it was made in.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: flushing traces to the OTLP collector failed: {e}");
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` wins over `filter`. With
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans go there too, as service
/// `OTEL_SERVICE_NAME` (default `service`) with `service.instance.id` =
/// `instance`. Call inside the Tokio runtime that will outlive the returned
/// guard: the exporter's gRPC channel runs on it.
pub fn init(filter: &str, json: bool, service: &str, instance: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    type Boxed = Box<
        dyn Layer<tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>>
            + Send
            + Sync,
    >;
    let mut layers: Vec<Boxed> = Vec::new();
    let fmt = tracing_subscriber::fmt::layer().with_target(true);
    layers.push(if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    });
    let mut telemetry = Telemetry::default();
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty());
    if let Some(endpoint) = endpoint {
        match otlp_provider(&endpoint, service, instance) {
            Ok(provider) => {
                let tracer = provider.tracer(service.to_owned());
                layers.push(tracing_opentelemetry::layer().with_tracer(tracer).boxed());
                telemetry.provider = Some(provider);
            }
            Err(e) => eprintln!(
                "warning: OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?} is set but the exporter \
                 cannot be built ({e}); traces are not exported"
            ),
        }
    }
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init();
    telemetry
}

/// Exports spans to `endpoint` without any log output, for a process whose
/// console shows something else (the devnet). Same runtime rule as [`init`].
pub fn init_export_only(endpoint: &str, service: &str, instance: &str) -> Telemetry {
    match otlp_provider(endpoint, service, instance) {
        Ok(provider) => {
            let tracer = provider.tracer(service.to_owned());
            let _ = tracing_subscriber::registry()
                .with(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(EnvFilter::new("info")),
                )
                .try_init();
            Telemetry {
                provider: Some(provider),
            }
        }
        Err(e) => {
            eprintln!(
                "warning: OTLP endpoint {endpoint:?}: the exporter cannot be built ({e}); \
                 traces are not exported"
            );
            Telemetry::default()
        }
    }
}

fn otlp_provider(
    endpoint: &str,
    service: &str,
    instance: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    // The builder's detectors read OTEL_SERVICE_NAME and
    // OTEL_RESOURCE_ATTRIBUTES; our default only fills a gap.
    let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.instance.id", instance.to_owned()),
    );
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The current span's context as a W3C `traceparent`, or "" when no trace
/// is being recorded.
pub fn current_traceparent() -> String {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return String::new();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// Makes `span` a child of the remote span `traceparent` (ignored when empty
/// or malformed: the span then starts its own trace).
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: nothing to join.
        let _ = span.set_parent(context);
    }
}

/// Puts the current span's context into outgoing gRPC metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let traceparent = current_traceparent();
    if let Ok(value) = traceparent.parse()
        && !traceparent.is_empty()
    {
        metadata.insert(TRACEPARENT, value);
    }
}

/// The `traceparent` of incoming gRPC headers, or "".
pub fn traceparent_of(headers: &tonic::codegen::http::HeaderMap) -> &str {
    headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_trace_no_traceparent() {
        // Without an OpenTelemetry layer nothing is recorded, so nothing is
        // propagated (an empty field, not a made-up trace).
        let span = tracing::info_span!("outside");
        let _entered = span.enter();
        assert_eq!(current_traceparent(), "");
        set_remote_parent(&span, "not a traceparent");
        set_remote_parent(&span, "");
    }
}
