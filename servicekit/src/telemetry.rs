//! Logs, and traces that follow a task across services.
//!
//! **Logs** go to stderr (stdout carries the readiness lines tests and
//! scripts wait for), filtered by `RUST_LOG` (default `info`).
//!
//! **Traces** are off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) names an OTLP/gRPC collector:
//! then every `tracing` span at INFO or above becomes an OpenTelemetry
//! span, batched on a thread of its own and sent over the workspace's
//! tonic, as service `OTEL_SERVICE_NAME` (default: the binary's name).
//! Unset, no OpenTelemetry layer is installed at all: spans cost what they
//! cost before, and nothing connects anywhere.
//!
//! **Propagation** is W3C trace context (`traceparent`, `tracestate`):
//! [`continue_trace`] makes a span the continuation of what a carrier
//! holds (gRPC metadata, an AMQP message's headers, an outbox entry), and
//! [`inject`] writes a span's context into one. A carrier is untrusted
//! input: its values are bounded ([`MAX_VALUE`]) and a malformed one is
//! ignored with a DEBUG line; the span then starts a trace of its own.
//! [`AmqpHeaders`] and [`AmqpHeadersMut`] adapt a RabbitMQ message's
//! header table.
//!
//! **Logs carry the trace id**: [`continue_trace`] records it in the
//! span's `trace_id` field, so every line logged inside that span (and its
//! children) shows `trace_id=<32 hex>`, in text and in JSON.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// zookeeper-async logs each connect request, session password included,
/// at INFO: a secret must never reach a log (or a trace), so its
/// connection module is held to warnings.
const QUIET: &str = "zookeeper_async::io=warn";

/// What the trace layer passes: our INFO spans and events, never the
/// secret above, and never the exporter's own transport (h2, tonic, hyper,
/// tower) or the SDK: traces of the export would be exported in turn.
const TRACED: &str = "info,zookeeper_async::io=warn,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,\
                      opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

/// The longest `traceparent` or `tracestate` value taken from a carrier.
/// A `traceparent` is 55 characters; W3C asks that 512 of a `tracestate`
/// be passed on. A longer value is dropped, not cut (a cut list member
/// would be a wrong one).
pub const MAX_VALUE: usize = 512;

/// The trace provider, while traces are exported: [`shutdown`] flushes it.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber: logs to stderr, and traces over OTLP
/// when configured (see the module docs). `service` is the default
/// `service.name`. Call it inside the tokio runtime: the exporter's
/// channel lives there.
///
/// Logs are coloured only when stderr is a terminal: in a log file
/// (scripts/run.sh, the tests) escape codes are noise to a reader and
/// break grep.
pub fn init(service: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let logs = match json {
        true => logs.json().with_filter(filter).boxed(),
        false => logs.with_filter(filter).boxed(),
    };
    // Decided before the subscriber exists, so a failure to build the
    // exporter is logged once the logs work.
    let traces = configured_endpoint().map(|endpoint| (endpoint, tracer_provider(service)));
    let layer = match &traces {
        Some((_, Ok(provider))) => {
            let tracer = provider.tracer(service.to_string());
            let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(EnvFilter::new(TRACED));
            let _ = PROVIDER.set(provider.clone());
            Some(layer)
        }
        _ => None,
    };
    tracing_subscriber::registry().with(logs).with(layer).init();
    // An endpoint may carry a user and password: never in a log.
    match traces {
        Some((endpoint, Ok(_))) => {
            tracing::info!(endpoint = crate::rabbit::redact_url(&endpoint), "exporting traces over OTLP")
        }
        Some((endpoint, Err(e))) => {
            let endpoint = crate::rabbit::redact_url(&endpoint);
            tracing::error!(endpoint, "traces are not exported: {}", crate::rabbit::redact_url(&e.to_string()))
        }
        None => {}
    }
}

/// The collector traces go to, if one is configured (the standard
/// variables, read by the exporter itself too).
fn configured_endpoint() -> Option<String> {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// The OTLP/gRPC exporter behind the SDK's batch span processor (its own
/// thread; `OTEL_BSP_*` tune it), as `OTEL_SERVICE_NAME`, or `service`.
fn tracer_provider(service: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
    let detected = opentelemetry_sdk::Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let resource = match named {
        true => detected,
        false => opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build(),
    };
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Whether spans are exported (and so have trace ids to pass on).
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Sends the spans not exported yet, within `limit`, and stops exporting:
/// called on the way out, before the process exits. Nothing when traces
/// are off.
pub fn shutdown(limit: Duration) {
    let Some(provider) = PROVIDER.get() else { return };
    // The flush blocks until the exporter is done, and the exporter's
    // channel is driven by this runtime: let its other workers run.
    let flush = || {
        let _ = provider.shutdown_with_timeout(limit);
    };
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(flush),
        _ => flush(),
    }
}

/// Makes `span` the continuation of the trace context in `carrier`, when
/// it holds a valid one, and records the span's trace id in its
/// `trace_id` field (declare it `trace_id = tracing::field::Empty`). With
/// no context in the carrier the span starts a trace; with a malformed one
/// too, after a DEBUG line naming `origin`: a caller's bad header is no
/// reason to refuse its request. Call it before the span is first entered.
pub fn continue_trace(span: &tracing::Span, carrier: &dyn Extractor, origin: &str) {
    if !enabled() {
        return;
    }
    let carrier = Bounded(carrier);
    if carrier.0.get(TRACEPARENT).is_some() {
        let parent = TraceContextPropagator::new().extract(&carrier);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        } else {
            tracing::debug!(origin, "ignoring a malformed or oversized traceparent: starting a new trace");
        }
    }
    if let Some(id) = trace_id(span) {
        span.record("trace_id", tracing::field::display(id));
    }
}

/// `span`'s trace id, when traces are on.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let ids = context.span().span_context().clone();
    ids.is_valid().then(|| ids.trace_id().to_string())
}

/// Writes `span`'s trace context into `carrier`; nothing when traces are
/// off or the span is disabled.
pub fn inject(span: &tracing::Span, carrier: &mut dyn Injector) {
    if !enabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), carrier);
}

/// `span`'s trace context as a small map to store (an outbox entry), empty
/// when traces are off.
pub fn carried(span: &tracing::Span) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    inject(span, &mut carrier);
    carrier
}

const TRACEPARENT: &str = "traceparent";

/// A carrier whose over-long values read as absent.
struct Bounded<'a>(&'a dyn Extractor);

impl Extractor for Bounded<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).filter(|v| v.len() <= MAX_VALUE)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }
}

/// A RabbitMQ message's headers, read as a trace context carrier. A
/// header that is not a UTF-8 string reads as absent.
pub struct AmqpHeaders<'a>(pub Option<&'a FieldTable>);

impl Extractor for AmqpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0?.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.map(|t| t.inner().keys().map(|k| k.as_str()).collect()).unwrap_or_default()
    }
}

/// A RabbitMQ message's headers, written as a trace context carrier.
pub struct AmqpHeadersMut<'a>(pub &'a mut FieldTable);

impl Injector for AmqpHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.into(), AMQPValue::LongString(value.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_headers_read_strings_only() {
        let mut table = FieldTable::default();
        AmqpHeadersMut(&mut table).set(TRACEPARENT, "00-abc".into());
        table.insert("tracestate".into(), AMQPValue::LongLongInt(7));
        let headers = AmqpHeaders(Some(&table));
        assert_eq!(headers.get(TRACEPARENT), Some("00-abc"));
        assert_eq!(headers.get("tracestate"), None, "a number is no trace state");
        assert_eq!(AmqpHeaders(None).get(TRACEPARENT), None);
    }

    #[test]
    fn oversized_values_read_as_absent() {
        let mut carrier = HashMap::new();
        carrier.insert(TRACEPARENT.to_string(), "x".repeat(MAX_VALUE + 1));
        carrier.insert("tracestate".to_string(), "a=b".to_string());
        let bounded = Bounded(&carrier);
        assert_eq!(bounded.get(TRACEPARENT), None);
        assert_eq!(bounded.get("tracestate"), Some("a=b"));
    }
}
