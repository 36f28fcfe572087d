//! Logs and traces. Logs go through `tracing` to stderr (`RUST_LOG` filters).
//! Spans follow each event through the pipeline: the W3C `traceparent` rides in
//! NATS headers and gRPC metadata, and every stage opens its span as a child of
//! the one it received, so one event is one trace. Spans are exported over OTLP
//! gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific variable) is
//! set; the SDK reads the other `OTEL_*` variables itself.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::config::Service;
use crate::ChassisError;

/// Span attribute carrying the event an operation works on.
pub const EVENT_ID_ATTRIBUTE: &str = "millrace.event_id";

/// Keeps the tracer provider alive; `shutdown` flushes the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!("flushing spans on shutdown: {e}");
            }
        }
    }
}

/// Whether this process exports spans: an OTLP endpoint is set and the SDK is
/// not disabled. When it does not, per-event span work is skipped.
pub fn spans_exported() -> bool {
    let endpoint_set = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    endpoint_set && !disabled
}

/// Installs logging and, when an OTLP endpoint is configured, span export.
/// Must run inside the tokio runtime (the OTLP exporter needs it).
pub fn init(service: Service) -> Result<Telemetry, ChassisError> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (tests) keeps the first subscriber.
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();

    if !spans_exported() {
        return Ok(Telemetry { provider: None });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| ChassisError::Telemetry(format!("building the OTLP span exporter: {e}")))?;
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| format!("millrace-{}", service.name()));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service_name).build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing::info!("exporting spans over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Opens a span for work on one event, as a child of `parent` (which may be
/// empty: then the span starts a new trace). The returned context carries the
/// span; it ends when the last clone of the context is dropped.
pub fn event_span(name: &'static str, kind: SpanKind, parent: &Context, event_id: &str) -> Context {
    let tracer = opentelemetry::global::tracer("millrace");
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes([KeyValue::new(EVENT_ID_ATTRIBUTE, event_id.to_string())])
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// The trace context found in NATS headers, or an empty one.
pub fn context_from_headers(headers: Option<&async_nats::HeaderMap>) -> Context {
    match headers {
        Some(h) => TraceContextPropagator::new().extract(&NatsHeaders(h)),
        None => Context::new(),
    }
}

/// Writes `cx` as `traceparent` (and `tracestate`) into NATS headers.
pub fn inject_into_headers(cx: &Context, headers: &mut async_nats::HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut NatsHeadersMut(headers));
}

/// The trace context a gRPC caller sent in its metadata, or an empty one.
pub fn context_from_grpc(metadata: &tonic::metadata::MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&GrpcMetadata(metadata))
}

/// Writes `cx` into outgoing gRPC metadata.
pub fn inject_into_grpc(cx: &Context, metadata: &mut tonic::metadata::MetadataMap) {
    TraceContextPropagator::new().inject_context(cx, &mut GrpcMetadataMut(metadata));
}

/// The `traceparent` value of a context, if it holds a valid span.
pub fn traceparent(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut headers = async_nats::HeaderMap::new();
    inject_into_headers(cx, &mut headers);
    headers.get("traceparent").map(|v| v.as_str().to_string())
}

/// The context a `traceparent` value names; empty when the value is blank or invalid.
pub fn context_from_traceparent(traceparent: &str) -> Context {
    if traceparent.is_empty() {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&Traceparent(traceparent))
}

struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

struct NatsHeaders<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

struct NatsHeadersMut<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct GrpcMetadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for GrpcMetadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct GrpcMetadataMut<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for GrpcMetadataMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_through_nats_headers_and_grpc_metadata() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", parent);
        let cx = context_from_headers(Some(&headers));
        assert_eq!(traceparent(&cx).as_deref(), Some(parent));

        let mut md = tonic::metadata::MetadataMap::new();
        inject_into_grpc(&cx, &mut md);
        let back = context_from_grpc(&md);
        assert_eq!(traceparent(&back).as_deref(), Some(parent));
    }

    #[test]
    fn a_child_span_keeps_the_trace_id() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", parent);
        let cx = context_from_headers(Some(&headers));
        let child = event_span("test", SpanKind::Consumer, &cx, "e1");
        let tp = traceparent(&child).expect("child has a traceparent");
        assert!(tp.contains("0af7651916cd43dd8448eb211c80319c"), "{tp}");
        assert_eq!(
            child.span().span_context().trace_id(),
            cx.span().span_context().trace_id()
        );
    }

    #[test]
    fn missing_headers_give_an_empty_context() {
        assert!(traceparent(&context_from_headers(None)).is_none());
        assert!(traceparent(&context_from_traceparent("")).is_none());
        assert!(traceparent(&context_from_traceparent("garbage")).is_none());
    }
}
