//! `system-a submit`: a small client for the shell, and the way to call
//! Submit safely: with a request id, so that a retry after UNAVAILABLE or
//! DEADLINE_EXCEEDED is the same task, never a second one.

use anyhow::Context;
use opentelemetry::propagation::Injector;
use tracing::Instrument;

use crate::proto::tasks_client::TasksClient;
use crate::proto::SubmitRequest;

/// Submits one task to the system-a at `server` and prints its result,
/// or why there is none, with the request id to retry with.
pub async fn submit(server: &str, req: SubmitRequest) -> anyhow::Result<()> {
    let mut c =
        TasksClient::connect(server.to_string()).await.with_context(|| format!("cannot reach system-a at {server}"))?;
    let key = req.request_id.clone();
    let entity = req.entity.clone();
    // With traces on, the call is the root of the task's trace: its
    // context goes in the request's metadata, and the trace id is printed
    // to find it in the collector.
    let span = tracing::info_span!("submit_call", otel.kind = "client");
    let mut request = tonic::Request::new(req);
    servicekit::telemetry::inject(&span, &mut MetadataCarrier(request.metadata_mut()));
    if let Some(trace) = servicekit::telemetry::trace_id(&span) {
        println!("trace {trace}");
    }
    let reply = c.submit(request).instrument(span).await.map_err(|s| {
        anyhow::anyhow!(
            "{:?}: {} (request id {key}: to retry, run the same command with --request-id {key})",
            s.code(),
            s.message()
        )
    })?;
    let reply = reply.into_inner();
    println!(
        "task {} {}: {} = {} (by {}, lock token {}; request id {key})",
        reply.task_id, reply.status, entity, reply.value, reply.worker, reply.token
    );
    Ok(())
}

/// A request's gRPC metadata, written as a W3C trace context carrier.
struct MetadataCarrier<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        if let (Ok(key), Ok(value)) = (key, value.parse()) {
            self.0.insert(key, value);
        }
    }
}
