//! The Submit flow: accept → outbox → publish → wait.
//!
//! 1. [`Submitter::submit`] checks the request at the edge
//!    ([`edge::check_submit`]): nothing invalid reaches the coordination
//!    server.
//! 2. With a request id, `Submitter::claim` records the request under
//!    the key, or recognises a retry of it (see "Idempotency" below).
//! 3. `Submitter::accept` records the task: `<root>/outbox/<id>` (the
//!    message), then `<root>/tasks/<id>` (status `pending`) with a watch
//!    armed on it, retrying through a lost connection until the caller's
//!    deadline. Once both exist the task is accepted: it will be published,
//!    whatever happens to RabbitMQ or to this process (see `outbox`).
//! 4. `Submitter::publish` sends it to RabbitMQ only then: had we
//!    published first, system-b could write the result before the watch
//!    existed and we would wait for an event that already happened. A
//!    confirm deletes the outbox entry; without one the outbox drain
//!    publishes it when RabbitMQ is back: a broker outage costs latency,
//!    not a refused task.
//! 5. `Submitter::wait` waits for system-b's write to the node (the
//!    watch fires; every event and every reconnect is followed by a
//!    re-read), up to the timeout from `<root>/config/system-a`, and
//!    answers with it ([`edge::answer`]).
//!
//! # Idempotency
//!
//! A caller that gets UNAVAILABLE or DEADLINE_EXCEEDED cannot know whether
//! its task runs. With a request id it retries safely: the task id is
//! derived from the key ([`edge::task_id_for`]), so every retry names the
//! same task, and creating its node is what makes a second one impossible.
//!
//! What the node cannot do is tell a retry from a *different* request
//! that reuses the key once the task has finished: system-b writes the
//! result over the whole node, and what was asked is gone. So the request
//! itself is recorded first, at `<root>/outbox/<id>.request` (the outbox
//! is the one directory only system-a may write; the record is not an
//! entry to publish). A Submit whose record already exists is a retry
//! only if it asks exactly what the record says ([`edge::same_request`]);
//! otherwise FAILED_PRECONDITION. A retry whose task node exists waits on
//! it (or answers at once with its result); one whose task node does not
//! exist yet (the first attempt is between its creates, or died there)
//! creates what is missing, and a create that meets a node the first
//! attempt made takes it as its own. Two copies may both publish: system-b
//! applies a task once, whatever copies arrive.
//!
//! A key lives as long as its task node: the reaper deletes both after
//! `--task-retention-secs`. A retry after that is a new task.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::Extractor;
use serde::{Deserialize, Serialize};
use servicekit::telemetry;
use task_contract::{TaskMessage, TaskNode};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;
use tracing::Instrument;
use zk_recipes::session::{is_noauth, Client};
use zk_recipes::task::{TaskError, TaskStatus};
use zk_recipes::ZkError;

use crate::edge::{self, Accepted, Outcome, Submission};
use crate::metrics::Metrics;
use crate::outbox;
use crate::proto::{SubmitReply, SubmitRequest};
use crate::publisher::{self, ChannelSlot};

/// Live settings from `<root>/config/system-a`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// How long Submit waits for system-b (default 10 s).
    pub timeout_ms: Option<u64>,
}

/// What a Submit needs: the coordination server, where the task and the
/// outbox live, and the broker.
pub struct Submitter {
    pub client: Client,
    /// `<root>/tasks`.
    pub tasks: String,
    /// `<root>/outbox`.
    pub outbox: String,
    pub policy: servicekit::auth::Policy,
    pub queue: String,
    pub channel: ChannelSlot,
    pub settings: watch::Receiver<Settings>,
    pub metrics: Metrics,
}

impl Submitter {
    /// One Submit, from the request to the caller's answer, counted by
    /// how it ended.
    ///
    /// The Submit's span continues the caller's trace (`caller` is its
    /// gRPC metadata); its context goes with the task, in the outbox entry
    /// and in the message's headers, so system-b's work on it joins the
    /// trace; the span ends with the answer.
    pub async fn submit(&self, req: SubmitRequest, caller: &(dyn Extractor + Sync)) -> Result<SubmitReply, Status> {
        let called = Instant::now();
        let sub = match edge::check_submit(&req, || uuid::Uuid::new_v4().to_string()) {
            Ok(sub) => sub,
            Err(refused) => {
                self.metrics.submitted(Outcome::Refused);
                return Err(refused);
            }
        };
        let span = tracing::info_span!(
            "submit",
            otel.kind = "server",
            task_id = %sub.task_id,
            entity = %req.entity,
            trace_id = tracing::field::Empty
        );
        telemetry::continue_trace(&span, caller, "gRPC metadata");
        let trace = telemetry::carried(&span);
        let answered = async {
            // The caller's budget covers everything: recording the task
            // through a lost connection (retried) and its result.
            let timeout = Duration::from_millis(self.settings.borrow().timeout_ms.unwrap_or(10_000));
            let deadline = Instant::now() + timeout;
            let retry = match &sub.request_id {
                Some(key) => self.metrics.stages.time("claim", self.claim(key, &sub, deadline)).await?,
                None => false,
            };
            let status = match retry {
                true => self.first_attempts_task(&sub, deadline).await?,
                false => None,
            };
            let (status, confirmed) = match status {
                Some(status) => (status, false),
                None => {
                    let status = self.accept(&sub, &trace, deadline).await?;
                    let span = tracing::info_span!("publish", otel.kind = "producer");
                    let confirmed = self.publish(&sub).instrument(span).await;
                    (status, confirmed)
                }
            };
            // The confirmed entry's delete runs while system-b works: it
            // is off the caller's path, and still done before the answer.
            let waiting = self.wait(&sub, status, timeout, deadline).instrument(tracing::info_span!("wait_result"));
            let both = async { tokio::join!(waiting, self.forget_entry(&sub, confirmed)).0 };
            self.metrics.stages.time("wait", both).await
        }
        .instrument(span)
        .await;
        match answered {
            Ok(answer) => {
                self.metrics.answered(called.elapsed());
                self.metrics.submitted(match &answer {
                    Ok(_) => Outcome::Done,
                    // What `edge::answer` makes of a `failed` node.
                    Err(e) if e.code() == tonic::Code::FailedPrecondition => Outcome::Failed,
                    Err(_) => Outcome::Error,
                });
                answer
            }
            Err(e) => {
                self.metrics.submitted(Outcome::of_failure(&e));
                Err(e)
            }
        }
    }

    fn task_path(&self, sub: &Submission) -> String {
        zk_recipes::join(&self.tasks, &sub.task_id)
    }

    fn entry_path(&self, sub: &Submission) -> String {
        zk_recipes::join(&self.outbox, &sub.task_id)
    }

    /// Records the request under its key, or recognises a retry of it:
    /// `Ok(true)` when the key was used before, for this same request.
    async fn claim(&self, key: &str, sub: &Submission, deadline: Instant) -> Result<bool, Status> {
        let record = zk_recipes::join(&self.outbox, &outbox::record_name(&sub.task_id));
        let asked = sub.node.encode();
        let zk = &self.client.zk;
        let acl = self.policy.outbox_entry();
        let dir_acl = self.policy.outbox_dir();
        let made = self
            .client
            .as_ourselves(deadline, is_noauth, || {
                zk_recipes::retry::create_owned_in(zk, &record, &asked, &acl, &dir_acl, deadline)
            })
            .await;
        match made {
            Ok(_) => Ok(false),
            Err(ZkError::NodeExists) => {
                let read =
                    zk_recipes::retry::retry(&Default::default(), deadline, |_| zk.get_data(&record, false)).await;
                let (first, _) = read.map_err(|e| edge::coordination_failure(sub, Accepted::No, &e))?;
                edge::same_request(key, &first, &sub.node)?;
                tracing::info!("a retry of request id {key:?}");
                Ok(true)
            }
            Err(e) => Err(edge::coordination_failure(sub, Accepted::No, &e)),
        }
    }

    /// The task node a retry's first attempt created, followed, if it
    /// exists yet.
    async fn first_attempts_task(&self, sub: &Submission, deadline: Instant) -> Result<Option<TaskStatus>, Status> {
        let path = self.task_path(sub);
        let zk = &self.client.zk;
        // A plain exists first: zookeeper-async keeps the watcher of a read
        // that found no node until that node appears.
        let exists = zk_recipes::retry::retry(&Default::default(), deadline, |_| zk.exists(&path, false)).await;
        match exists {
            Ok(None) => Ok(None),
            Ok(Some(_)) => match TaskStatus::existing(&self.client, &path, deadline).await {
                Ok(status) => Ok(Some(status)),
                // Reaped in between: the key is forgotten with it.
                Err(TaskError::Deleted(_)) => Ok(None),
                Err(TaskError::Zk(e)) => Err(edge::coordination_failure(sub, Accepted::Maybe, &e)),
                Err(e) => Err(Status::unavailable(format!("task {}: {e}", sub.task_id))),
            },
            Err(e) => Err(edge::coordination_failure(sub, Accepted::Maybe, &e)),
        }
    }

    /// The outbox entry, then the node and its watch, before anything can
    /// answer (see `outbox` for why in this order).
    /// The entry keeps the Submit's `trace` context, so whichever system-a
    /// publishes the task, system-b's work joins the Submit's trace.
    async fn accept(
        &self,
        sub: &Submission,
        trace: &HashMap<String, String>,
        deadline: Instant,
    ) -> Result<TaskStatus, Status> {
        let zk = &self.client.zk;
        let body = outbox::Entry::new(TaskMessage::new(&sub.task_id), trace.clone()).encode();
        let entry = self.entry_path(sub);
        // The outbox's node is made when a create finds it missing, not
        // checked before every entry.
        let (acl, dir_acl) = (self.policy.outbox_entry(), self.policy.outbox_dir());
        let recorded = self.client.as_ourselves(deadline, is_noauth, || {
            zk_recipes::retry::with_parents(zk, &entry, &dir_acl, deadline, || {
                create_or_same(&self.client, &entry, &body, &acl, deadline)
            })
        });
        let recorded = self.metrics.stages.time("outbox_entry", recorded).await;
        recorded.map_err(|e| edge::coordination_failure(sub, Accepted::No, &e))?;
        let path = self.task_path(sub);
        let pending = sub.node.encode();
        let task_acl = self.policy.task();
        let refused = |e: &TaskError| matches!(e, TaskError::Zk(ZkError::NoAuth));
        let created = self.client.as_ourselves(deadline, refused, || {
            TaskStatus::create_with_acl(&self.client, &path, &pending, &task_acl, deadline)
        });
        let created = self.metrics.stages.time("task_node", created).await;
        match created {
            Ok(status) => Ok(status),
            // Another copy of this request (same key, checked by `claim`)
            // created it first: it is this task.
            Err(TaskError::Zk(ZkError::NodeExists)) if sub.request_id.is_some() => {
                match TaskStatus::existing(&self.client, &path, deadline).await {
                    Ok(status) => Ok(status),
                    Err(TaskError::Zk(e)) => Err(edge::coordination_failure(sub, Accepted::Maybe, &e)),
                    Err(e) => Err(Status::unavailable(format!("task {}: {e}", sub.task_id))),
                }
            }
            // The create may still reach the server, and then the outbox
            // publishes the task: its outcome is unknown, and the answer
            // says so.
            Err(TaskError::Zk(e)) => Err(edge::coordination_failure(sub, Accepted::Maybe, &e)),
            Err(e) => Err(Status::unavailable(format!("task {}: {e}; it was not accepted", sub.task_id))),
        }
    }

    /// Publishes the accepted task, confirmed and routed, with the current
    /// span's trace context in its headers: `true` once RabbitMQ confirmed
    /// it. If RabbitMQ is away or the confirm is lost, the entry stays and
    /// the outbox drain publishes it once the broker is back: the caller
    /// waits, it is not refused.
    async fn publish(&self, sub: &Submission) -> bool {
        let body = TaskMessage::new(&sub.task_id).encode();
        let publishing = publisher::publish(&self.channel, &self.queue, &sub.task_id, &body);
        let published = self.metrics.stages.time("publish", publishing).await;
        match published {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("not published yet ({e}); the outbox will publish it");
                false
            }
        }
    }

    /// Deletes the outbox entry of a task RabbitMQ `confirmed`.
    async fn forget_entry(&self, sub: &Submission, confirmed: bool) {
        if confirmed {
            let entry = self.entry_path(sub);
            self.metrics.stages.time("outbox_delete", outbox::confirmed(&self.client, &entry)).await;
        }
    }

    /// Waits for system-b's answer through the watch: `Ok` once the node
    /// is final, with what it says (a `failed` node is an `Err` inside).
    async fn wait(
        &self,
        sub: &Submission,
        mut status: TaskStatus,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Result<SubmitReply, Status>, Status> {
        let id = &sub.task_id;
        let left = deadline.saturating_duration_since(Instant::now());
        let data = match status.wait_until(left, |d| !TaskNode::is_pending(d)).await {
            Ok(d) => d,
            Err(TaskError::Timeout(_)) => {
                let how = match &sub.request_id {
                    Some(key) => format!("retry with request id {key:?} or Watch {id}"),
                    None => format!("Watch {id}"),
                };
                return Err(Status::deadline_exceeded(format!(
                    "no result from system-b within {timeout:?}; task {id} may still complete ({how})"
                )));
            }
            Err(e) => return Err(Status::unavailable(format!("waiting for task {id}'s result: {e}"))),
        };
        let reply = edge::answer(id, &data);
        if let Ok(r) = &reply {
            tracing::info!(status = r.status, "task answered");
        }
        Ok(reply)
    }
}

/// Creates the outbox entry `path` with `data`, or finds it already there
/// with the same message (another copy of the same request made it, with
/// its own trace context): both are success. An entry with another
/// message is `NodeExists`.
///
/// A node that is gone between our create and our read was the other
/// copy's outbox entry, deleted by its confirm (or by the drain, as an
/// orphan): it is created again, so that whatever happened to the other
/// copy, an entry exists before this copy creates the task node. The
/// price is at most one more publish, which system-b applies as a no-op.
async fn create_or_same(
    client: &Client,
    path: &str,
    data: &[u8],
    acl: &[zk_recipes::Acl],
    deadline: Instant,
) -> Result<(), ZkError> {
    let zk = &client.zk;
    // Each round is a create another copy's delete raced; a handful is
    // more than any number of concurrent copies needs to settle.
    for _ in 0..5 {
        match zk_recipes::retry::create_owned(zk, path, data, acl, deadline).await {
            Ok(_) => return Ok(()),
            Err(ZkError::NodeExists) => {
                match zk_recipes::retry::retry(&Default::default(), deadline, |_| zk.get_data(path, false)).await {
                    Ok((current, _)) if outbox::Entry::same_message(&current, data) => return Ok(()),
                    Ok(_) => return Err(ZkError::NodeExists),
                    Err(ZkError::NoNode) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(ZkError::OperationTimeout)
}
