//! `system-a`: scenario 1, the requesting side.
//!
//! `Submit` turns a gRPC call into a task for system-b and waits for its
//! result without polling:
//!
//! 1. record the task: `<root>/outbox/<id>` (the message), then
//!    `<root>/tasks/<id>` (status `pending`) with a watch armed on it,
//!    retrying through a lost connection until the caller's deadline;
//! 2. only then publish the task to RabbitMQ (durable queue, persistent
//!    message, `mandatory`, publisher confirms): had we published first,
//!    system-b could write the result before the watch existed and we would
//!    wait for an event that already happened. A confirm deletes the outbox
//!    entry; without one (broker away, confirm lost) the entry stays and a
//!    background drain publishes it when RabbitMQ is back (see `outbox`):
//!    a broker outage costs latency, not a refused task;
//! 3. wait for system-b's write to the node (the watch fires; every event
//!    and every reconnect is followed by a re-read), up to the timeout from
//!    `<root>/config/system-a`.
//!
//! The message and the node's data are `task_contract`'s types. A node that
//! does not read as one is an error (DATA_LOSS to the caller), never a
//! finished task: the reaper leaves it alone.
//!
//! A reaper deletes finished task nodes after `--task-retention-secs`.
//! (TTL nodes would do it server-side, but they need `extendedTypesEnabled`
//! on an Apache ZooKeeper ensemble, which a user may not control.)
//!
//! `system-a submit ...` is a small client for the shell.
//! Stdout: `system-a listening on <addr>`, then `system-a connected to
//! RabbitMQ` each time the publishing channel is (re)established.

mod outbox;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::Stream;
use lapin::options::ConfirmSelectOptions;
use serde::{Deserialize, Serialize};
use servicekit::CommonArgs;
use system_a::proto::tasks_server::{Tasks, TasksServer};
use system_a::proto::{SubmitReply, SubmitRequest, TaskUpdate, WatchRequest};
use task_contract::{Op, TaskMessage, TaskNode, TaskState};
use tokio::sync::{watch, RwLock};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use zk_recipes::session::Client;
use zk_recipes::task::{TaskError, TaskStatus};

#[derive(Parser, Debug)]
#[command(
    name = "system-a",
    version,
    about = "Task front end: gRPC in, RabbitMQ out, result back through a znode watch"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    q: servicekit::QueueArgs,
    /// gRPC listen address.
    #[arg(long, env = "SYSTEM_A_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Finished task nodes older than this are deleted.
    #[arg(long, env = "TASK_RETENTION_SECS", default_value_t = 600)]
    task_retention_secs: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Submit one task to a running system-a and print the result.
    Submit {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        #[arg(long)]
        entity: String,
        #[arg(long, default_value_t = 1)]
        amount: i64,
        #[arg(long, default_value = "add")]
        op: String,
    },
}

/// Live settings from `<root>/config/system-a`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Settings {
    /// How long Submit waits for system-b (default 10 s).
    timeout_ms: Option<u64>,
}

struct Service {
    client: Client,
    common: CommonArgs,
    queue: String,
    settings: watch::Receiver<Settings>,
    /// The current publishing channel; `None` while RabbitMQ is away.
    channel: outbox::ChannelSlot,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    servicekit::telemetry::init(args.common.log_json);
    let result = match &args.cmd {
        Some(Cmd::Submit { server, entity, amount, op }) => submit(server, entity, *amount, op).await,
        None => run(args).await,
    };
    if let Err(e) = result {
        eprintln!("system-a: {e:#}");
        std::process::exit(1);
    }
}

async fn submit(server: &str, entity: &str, amount: i64, op: &str) -> anyhow::Result<()> {
    let mut c = system_a::proto::tasks_client::TasksClient::connect(server.to_string())
        .await
        .with_context(|| format!("cannot reach system-a at {server}"))?;
    let reply = c
        .submit(SubmitRequest { entity: entity.into(), op: op.into(), amount, ..Default::default() })
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    println!(
        "task {} {}: {} = {} (by {}, lock token {})",
        reply.task_id, reply.status, entity, reply.value, reply.worker, reply.token
    );
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let stop = servicekit::shutdown_token();
    let client = args.common.connect_zk().await?;
    let instance = args.common.instance_id();
    let settings = servicekit::live_config(&client, &args.common.path("/config/system-a"));
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("--listen {}", args.listen))?;
    let addr = listener.local_addr()?;
    let meta = serde_json::json!({"pid": std::process::id(), "grpc": addr.to_string()}).to_string();
    let registration = args.common.register(&client, "system-a", &instance, meta.as_bytes()).await?;

    let channel = Arc::new(RwLock::new(None));
    tokio::spawn(keep_publishing_channel(args.q.amqp.clone(), args.q.queue.clone(), channel.clone(), stop.clone()));
    tokio::spawn(outbox::drain(
        client.clone(),
        args.common.path("/outbox"),
        args.common.path("/tasks"),
        channel.clone(),
        args.q.queue.clone(),
        stop.clone(),
    ));
    tokio::spawn(reap(
        client.clone(),
        args.common.path("/tasks"),
        Duration::from_secs(args.task_retention_secs),
        stop.clone(),
    ));

    let service = Service { client, common: args.common.clone(), queue: args.q.queue.clone(), settings, channel };
    println!("system-a listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(TasksServer::new(service))
        .serve_with_incoming_shutdown(tokio_stream_listener(listener), stop.cancelled_owned())
        .await
        .context("serving gRPC")?;
    registration.deregister().await;
    Ok(())
}

/// The bound listener as the stream of connections tonic serves.
fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    })
}

/// Keeps one confirm-mode channel open, reconnecting with backoff when the
/// broker goes away.
async fn keep_publishing_channel(
    url: String,
    queue: String,
    slot: Arc<RwLock<Option<lapin::Channel>>>,
    stop: CancellationToken,
) {
    while let Some(conn) = servicekit::rabbit::connect_with_backoff(&url, &stop).await {
        let ready = async {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            servicekit::rabbit::declare_task_queue(&ch, &queue).await?;
            Ok::<_, lapin::Error>(ch)
        }
        .await;
        match ready {
            Ok(ch) => {
                *slot.write().await = Some(ch);
                tracing::info!("publishing to RabbitMQ");
                println!("system-a connected to RabbitMQ");
                while conn.status().connected() && !stop.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                *slot.write().await = None;
                tracing::warn!("RabbitMQ connection lost; reconnecting");
            }
            Err(e) => tracing::warn!("cannot set up publishing: {e}"),
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

/// Deletes finished task nodes older than `keep`.
async fn reap(client: Client, dir: String, keep: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30).min(keep)) => {}
            _ = stop.cancelled() => return,
        }
        let Ok(children) = client.zk.get_children(&dir, false).await else { continue };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for c in children {
            let path = zk_recipes::join(&dir, &c);
            if let Ok((data, stat)) = client.zk.get_data(&path, false).await {
                // A node we cannot read is not known to be finished: it
                // stays (and says why) rather than vanish with its result.
                let finished = match TaskNode::decode(&data) {
                    Ok(node) => node.status().is_final(),
                    Err(e) => {
                        tracing::warn!(task = %path, "not reaped: {e}");
                        false
                    }
                };
                if finished && now_ms - stat.mtime > keep.as_millis() as i64 {
                    // Versioned: never delete a node that changed since we read it.
                    let _ = client.zk.delete(&path, Some(stat.version)).await;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Tasks for Service {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<SubmitReply>, Status> {
        let req = request.into_inner();
        if req.entity.is_empty() {
            return Err(Status::invalid_argument("entity is required"));
        }
        // Refused here, not by system-b after a round trip through the queue.
        let op = match req.op.as_str() {
            "" => Op::Add,
            name => {
                Op::parse(name).ok_or_else(|| Status::invalid_argument(format!("unknown op {name:?}: add or set")))?
            }
        };
        let id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("submit", task_id = %id, entity = %req.entity);
        self.submit_task(id, req, op).instrument(span).await
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<TaskUpdate, Status>> + Send>>;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let id = request.into_inner().task_id;
        let path = self.common.path(&format!("/tasks/{id}"));
        let exists =
            zk_recipes::retry::retry_for(Duration::from_secs(5), |_| self.client.zk.exists(&path, false)).await;
        match exists {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Status::not_found(format!("no task {id}"))),
            Err(e) => return Err(Status::unavailable(format!("coordination server: {e:?}"))),
        }
        let rx = zk_recipes::config::watch_data(&self.client, &path);
        Ok(Response::new(Box::pin(updates(id, rx))))
    }
}

/// A task's status stream: each distinct value of its node, ending after
/// a final status (done/failed) or when the node is deleted.
fn updates(
    id: String,
    rx: watch::Receiver<Option<zk_recipes::config::Versioned>>,
) -> impl Stream<Item = Result<TaskUpdate, Status>> + Send {
    futures::stream::unfold((rx, id, false, false), |(mut rx, id, seen, finished)| async move {
        if finished {
            return None;
        }
        if seen {
            rx.changed().await.ok()?;
        }
        loop {
            let value = rx.borrow_and_update().clone();
            match value {
                Some(v) => {
                    let data_json = String::from_utf8_lossy(&v.data).into_owned();
                    let update = match TaskNode::decode(&v.data) {
                        Ok(node) => (
                            Ok(TaskUpdate { task_id: id.clone(), status: node.status().to_string(), data_json }),
                            node.status().is_final(),
                        ),
                        // The stream ends with the error: what the node
                        // says cannot be known, so nothing more can follow.
                        Err(e) => (Err(Status::data_loss(format!("task {id}: {e}: {data_json}"))), true),
                    };
                    return Some((update.0, (rx, id, true, update.1)));
                }
                // Deleted after we saw it (reaped): the stream is over.
                None if seen => return None,
                // Not read yet: wait for the first value.
                None => {}
            }
            rx.changed().await.ok()?;
        }
    })
}

impl Service {
    async fn submit_task(&self, id: String, req: SubmitRequest, op: Op) -> Result<Response<SubmitReply>, Status> {
        let path = self.common.path(&format!("/tasks/{id}"));
        let entry = self.common.path(&format!("/outbox/{id}"));
        let message = TaskMessage::new(&id);
        let pending = TaskNode::pending(&req.entity, op, req.amount);
        let body = message.encode();
        // The caller's budget covers everything: recording the task through
        // a lost connection (retried, see zk_recipes::retry) and its result.
        let timeout = Duration::from_millis(self.settings.borrow().timeout_ms.unwrap_or(10_000));
        let deadline = tokio::time::Instant::now() + timeout;
        // 1. The outbox entry, then the node and its watch, before anything
        //    can answer (see outbox.rs for why in this order). Once both
        //    exist the task is accepted: it will be published, whatever
        //    happens to RabbitMQ or to this process.
        let recorded = async {
            let policy = self.common.policy();
            let outbox = self.common.path("/outbox");
            zk_recipes::retry::ensure_path(&self.client.zk, &outbox, &policy.outbox_dir(), deadline).await?;
            zk_recipes::retry::create_owned(&self.client.zk, &entry, &body, &policy.outbox_entry(), deadline).await?;
            Ok::<_, zk_recipes::ZkError>(())
        }
        .await;
        if let Err(e) = recorded {
            return Err(Status::unavailable(format!("coordination server: {e:?}; task {id} was not accepted")));
        }
        let mut status = match TaskStatus::create_with_acl(
            &self.client,
            &path,
            &pending.encode(),
            &self.common.policy().task(),
            deadline,
        )
        .await
        {
            Ok(s) => s,
            // The create may still reach the server (the client sends what
            // it queued once it reconnects), and then the outbox publishes
            // the task: its outcome is unknown, and the answer says so.
            Err(TaskError::Zk(e)) if zk_recipes::retry::is_retryable(&e) => {
                return Err(Status::unavailable(format!(
                    "coordination server: {e:?}; task {id} may still be accepted and run, Watch {id} to learn its \
                     outcome"
                )))
            }
            Err(e) => return Err(Status::unavailable(format!("coordination server: {e}; task {id} was not accepted"))),
        };
        // 2. Publish now, confirmed and routed. If RabbitMQ is away or the
        //    confirm is lost, the entry stays and the outbox drain publishes
        //    it once the broker is back: the caller waits, it is not refused.
        match outbox::publish(&self.channel, &self.queue, &id, &body).await {
            Ok(()) => outbox::confirmed(&self.client, &entry).await,
            Err(e) => tracing::warn!("not published yet ({e}); the outbox will publish it"),
        }
        // 3. Wait for system-b's answer through the watch.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let data = match status.wait_until(left, |d| !TaskNode::is_pending(d)).await {
            Ok(d) => d,
            Err(TaskError::Timeout(_)) => {
                return Err(Status::deadline_exceeded(format!(
                    "no result from system-b within {timeout:?}; task {id} may still complete (Watch it)"
                )))
            }
            Err(e) => return Err(Status::unavailable(format!("waiting for the result: {e}"))),
        };
        let node = TaskNode::decode(&data).map_err(|e| {
            Status::data_loss(format!("task {id}'s result cannot be read: {e}: {}", String::from_utf8_lossy(&data)))
        })?;
        let status = node.status().to_string();
        match node.state {
            TaskState::Done { value, worker, token, .. } => {
                tracing::info!(status, "task answered");
                Ok(Response::new(SubmitReply { task_id: id, status, value, worker, token }))
            }
            TaskState::Failed { error } => Err(Status::failed_precondition(format!("task {id} failed: {error}"))),
            // wait_until returned only once the node was not pending.
            TaskState::Pending { .. } => Err(Status::internal(format!("task {id} is still pending"))),
        }
    }
}
