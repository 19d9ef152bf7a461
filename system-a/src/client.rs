//! `system-a submit`: a small client for the shell, and the way to call
//! Submit safely: with a request id, so that a retry after UNAVAILABLE or
//! DEADLINE_EXCEEDED is the same task, never a second one.

use anyhow::Context;

use crate::proto::tasks_client::TasksClient;
use crate::proto::SubmitRequest;

/// Submits one task to the system-a at `server` and prints its result,
/// or why there is none, with the request id to retry with.
pub async fn submit(server: &str, req: SubmitRequest) -> anyhow::Result<()> {
    let mut c =
        TasksClient::connect(server.to_string()).await.with_context(|| format!("cannot reach system-a at {server}"))?;
    let key = req.request_id.clone();
    let entity = req.entity.clone();
    let reply = c.submit(req).await.map_err(|s| {
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
