//! Logging and tracing: `tracing-subscriber` lines (pretty or JSON, level from `RUST_LOG`) and,
//! when an OTLP endpoint is configured, span export through `tracing-opentelemetry`.

use std::io::IsTerminal;

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

pub struct TelemetryConfig<'a> {
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint; `None` exports nothing.
    pub otlp_endpoint: Option<&'a str>,
    pub service_name: &'a str,
}

/// Flushes exported spans when the service stops.
#[must_use = "dropping the guard without shutdown() may lose the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still queued and stops the exporter. Bounded by the exporter's timeout,
    /// so an absent collector cannot hold shutdown up.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "flushing spans at shutdown failed");
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export to {endpoint}: {source}")]
pub struct TelemetryError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// Installs the global subscriber. Must run inside the Tokio runtime when an OTLP endpoint is
/// set: the batch exporter runs on it (tonic needs Tokio; the default thread-based batch
/// processor would panic). Later calls in the same process keep the first subscriber.
pub fn init(config: &TelemetryConfig<'_>) -> Result<Telemetry, TelemetryError> {
    // Incoming `traceparent`/`tracestate` continue the caller's trace.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match config.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(std::time::Duration::from_secs(3))
                .build()
                .map_err(|source| TelemetryError {
                    endpoint: endpoint.to_owned(),
                    source,
                })?;
            let resource = Resource::builder()
                .with_service_name(config.service_name.to_owned())
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build())
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("user-service"))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = match config.log_format {
        // Colour codes only where a person reads them: a terminal, not a file or a pipe.
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
    };
    Ok(Telemetry { provider })
}

/// Records the span's OpenTelemetry trace and span ids into its `trace_id` and `span_id`
/// fields, so the log lines inside it carry them (when spans are exported).
pub fn record_trace_ids(span: &tracing::Span) {
    let context = span.context();
    let otel_span = context.span();
    let ids = otel_span.span_context();
    if ids.is_valid() {
        span.record("trace_id", ids.trace_id().to_string());
        span.record("span_id", ids.span_id().to_string());
    }
}
