//! `system-b`: scenarios 1 and 2, the worker side.
//!
//! Consumes tasks from RabbitMQ (manual acks, bounded prefetch). For each
//! task: take the distributed lock of the entity it modifies, read the
//! entity (fenced by the lock's token), do the work, write it back
//! (fenced again), write the result into the task's znode (which wakes
//! system-a through its watch), release the lock, and only then ack.
//!
//! Why this order: a crash anywhere before the ack makes RabbitMQ redeliver
//! the task, and the store's record of applied task ids turns the retry
//! into a no-op that still reports the result; acking earlier could lose a
//! task. For the same reason a result whose write to the task znode is
//! lost to a connection drop is written again, and is never acked unseen.
//! A message that cannot be parsed, or is of a newer version of the task
//! contract than this build reads, is rejected without requeue and lands in
//! the dead-letter queue instead of looping forever.
//!
//! Faults are told apart (`servicekit::fault`). A transient one (the lock
//! or the result could not be written through a connection drop; a newer
//! lock holder) sends the task back at once. A permanent one (the store
//! cannot be written: permissions, a read-only file system, a damaged
//! entity) does not heal by retrying: it is logged as an ERROR naming the
//! path and the fix (at most once per period), the task is re-queued after
//! a backoff with its attempt count in the `x-attempts` header, and after
//! `STUCK_ATTEMPTS` attempts it is reported failed and dead-lettered, so a
//! broken store costs a handful of attempts per task, not a redelivery loop.
//!
//! Stdout: `system-b ready` once consuming; `config applied ...` on each
//! live config change.

mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use servicekit::CommonArgs;
use task_contract::{ContractError, TaskMessage as Task, TaskNode};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use zk_recipes::lock::{Lock, LockError};
use zk_recipes::session::Client;
use zk_recipes::ZkError;

#[derive(Parser, Debug)]
#[command(name = "system-b", version, about = "Task worker: modifies shared entities under a fenced distributed lock")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    q: servicekit::QueueArgs,
    /// Directory of the shared entity store.
    #[arg(long, env = "STORE_DIR", default_value = "store")]
    store_dir: PathBuf,
    /// Unacked messages in flight per instance.
    #[arg(long, env = "PREFETCH", default_value_t = 8)]
    prefetch: u16,
}

/// Live settings from `<root>/config/system-b`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Settings {
    /// Simulated work time while holding the lock.
    #[serde(default)]
    work_ms: u64,
}

struct Worker {
    client: Client,
    store: store::Store,
    settings: watch::Receiver<Settings>,
    common: CommonArgs,
    instance: String,
    queue: String,
    /// Throttles the ERROR about a permanent store fault.
    alarm: servicekit::fault::Throttle,
}

/// Attempts of a task that meets a permanent store fault before it is
/// dead-lettered. With the backoff below they span about 7.5 s.
const STUCK_ATTEMPTS: i64 = 5;
/// Backoff before attempt n+1 after a permanent fault: 500 ms doubling.
fn stuck_delay(attempt: i64) -> Duration {
    let doublings = attempt.clamp(1, 7) - 1;
    (Duration::from_millis(500) * (1u32 << doublings)).min(Duration::from_secs(30))
}
/// Header carrying how many attempts a re-queued task has had.
const ATTEMPTS_HEADER: &str = "x-attempts";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    servicekit::telemetry::init(args.common.log_json);
    if let Err(e) = run(args).await {
        eprintln!("system-b: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let stop = servicekit::shutdown_token();
    let instance = args.common.instance_id();
    let store = store::Store::open(&args.store_dir).context("--store-dir")?;
    let client = args.common.connect_zk().await?;
    let settings = servicekit::live_config(&client, &args.common.path("/config/system-b"));
    let meta = serde_json::json!({"pid": std::process::id(), "queue": args.q.queue}).to_string();
    let registration = args.common.register(&client, "system-b", &instance, meta.as_bytes()).await?;
    let worker = Arc::new(Worker {
        client,
        store,
        settings,
        common: args.common.clone(),
        instance: instance.clone(),
        queue: args.q.queue.clone(),
        alarm: servicekit::fault::Throttle::new(Duration::from_secs(10)),
    });

    let mut announced = false;
    // One connection at a time; a broker restart ends it and we come back.
    let broker = args.q.broker()?;
    while let Some(conn) = servicekit::rabbit::connect_with_backoff(&broker, &stop).await? {
        let consumed = consume(&conn, &args, &worker, &stop, &mut announced).await;
        if let Err(e) = consumed {
            if let Some(refused) = broker.refused(&e) {
                return Err(refused.into());
            }
            tracing::warn!("RabbitMQ connection ended: {e}; reconnecting");
        }
        let _ = conn.close(0, "bye".into()).await;
        if stop.is_cancelled() {
            break;
        }
    }
    registration.deregister().await;
    Ok(())
}

async fn consume(
    conn: &lapin::Connection,
    args: &Args,
    worker: &Arc<Worker>,
    stop: &CancellationToken,
    announced: &mut bool,
) -> lapin::Result<()> {
    let channel = conn.create_channel().await?;
    servicekit::rabbit::check_task_topology(&channel, &args.q.queue).await?;
    channel.basic_qos(args.prefetch, BasicQosOptions::default()).await?;
    // Confirms, so a task re-queued with its attempt count is acked only
    // once the broker holds the copy.
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            args.q.queue.as_str().into(),
            worker.instance.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    if !*announced {
        println!("system-b ready");
        *announced = true;
    }
    let running = tokio_util::task::TaskTracker::new();
    loop {
        let next = tokio::select! {
            d = deliveries.next() => d,
            _ = stop.cancelled() => break,
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        let w = worker.clone();
        let ch = channel.clone();
        running.spawn(async move { w.handle(delivery, &ch).await });
    }
    // Finish what we hold before closing: an unacked task would be
    // redelivered (harmless, but slower).
    running.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), running.wait()).await;
    Ok(())
}

impl Worker {
    async fn handle(&self, delivery: lapin::message::Delivery, channel: &lapin::Channel) {
        let task = match Task::decode(&delivery.data) {
            Ok(t) => t,
            // Written by a newer system-a: what it asks may not be what this
            // build would do, so it waits in the dead-letter queue until a
            // worker that reads its version replays it.
            Err(e @ ContractError::UnsupportedVersion { .. }) => {
                tracing::warn!(error = %e, "task message of a newer version: dead-lettering it");
                let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "poison message: dead-lettering it");
                self.fail_unreadable(&delivery.data, &e.to_string()).await;
                let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
                return;
            }
        };
        let span = tracing::info_span!("task", task_id = %task.id, entity = %task.entity);
        match self.apply(&task).instrument(span.clone()).await {
            Ok(()) => {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
            // Nobody can be told (the task node refuses system-b): the
            // message goes to the dead-letter queue, where the operator sees
            // it and can replay it once the ACL is fixed.
            Err(e) if e.kind == Kind::Unreportable => {
                span.in_scope(|| tracing::warn!("result cannot be reported, dead-lettering the task: {}", e.reason));
                let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
            }
            Err(e) if e.kind == Kind::Stuck => self.stuck(&task, &delivery, channel, &span, e).await,
            Err(e) if e.kind == Kind::Permanent => {
                span.in_scope(|| tracing::warn!("task failed for good: {}", e.reason));
                let failed = TaskNode::failed(e.reason);
                match self.report(&task, &failed).instrument(span.clone()).await {
                    Ok(()) => {
                        let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
                    }
                    Err(e) if e.kind == Kind::Unreportable => {
                        span.in_scope(|| tracing::warn!("failure cannot be reported either: {}", e.reason));
                        let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
                    }
                    // Nobody has heard of the failure yet: keep the message
                    // so a later delivery reports it.
                    Err(e) => requeue(&delivery, &span, &e.reason).await,
                }
            }
            Err(e) => requeue(&delivery, &span, &e.reason).await,
        }
    }

    async fn apply(&self, task: &Task) -> Result<(), Failure> {
        // The entity names a lock node: a name the store refuses ("..", "",
        // "a/b") would be refused again on every delivery, so it fails now.
        self.store.check_name(&task.entity).map_err(Failure::from)?;
        let lock_path = self.common.path(&format!("/locks/{}", task.entity));
        let lock = Lock::new(&self.client, lock_path.clone()).with_acl(self.common.policy().lock());
        // A NOAUTH that survives the second try is an ACL that shuts
        // system-b out: that task fails, to the dead-letter queue, instead
        // of going round the queue forever.
        let acquired = self
            .refused_twice(
                |e| matches!(e, LockError::Zk(ZkError::NoAuth)),
                || lock.acquire(&self.instance, Duration::from_secs(30)),
            )
            .await;
        let guard = acquired.map_err(|e| match e {
            LockError::Zk(ZkError::NoAuth) => Failure::permanent(servicekit::auth::not_allowed(&lock_path)),
            e => Failure::retry(e.to_string()),
        })?;
        let token = guard.token();
        let read = self.store.read(&task.entity, token, &task.id).map_err(Failure::from)?;
        let value = if read.already_applied {
            tracing::info!("redelivered task was applied before: reporting its result again");
            read.applied_value.unwrap_or(read.value)
        } else {
            // The simulated work happens between the read and the write:
            // exactly the window in which an unlocked worker would lose
            // another's update.
            let work = Duration::from_millis(self.settings.borrow().work_ms);
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            let value = task.op.apply(read.value, task.amount);
            if guard.is_lost() {
                // We may no longer hold the lock; the token would protect
                // the store anyway, but do not even try.
                return Err(Failure::retry("lock lost during the work".into()));
            }
            self.store.write(&task.entity, token, &task.id, value).map_err(Failure::from)?;
            value
        };
        let result = TaskNode::done(value, &self.instance, token);
        let reported = if read.already_applied {
            self.report_again(task, &result).await
        } else {
            self.report(task, &result).await
        };
        guard.release().await;
        reported?;
        tracing::info!(value, token, "applied");
        Ok(())
    }

    /// Writes the result into the task's znode, which fires system-a's watch.
    ///
    /// The message is acked only after this succeeds. A setData whose reply
    /// is lost to a connection drop (an ensemble's election, a server
    /// restart) may or may not have happened, so it is sent again, with
    /// backoff, for up to [`REPORT_PATIENCE`]: it writes the same result
    /// unconditionally, so repeating it is harmless. If it still cannot be
    /// written, the error sends the message back to the queue: the
    /// redelivery finds the entity already applied (the store remembers the
    /// task id) and only reports again. A lost session is not retried here:
    /// the lock this result was computed under is gone with it, and the
    /// redelivery starts over.
    async fn report(&self, task: &Task, result: &TaskNode) -> Result<(), Failure> {
        let path = self.common.path(&format!("/tasks/{}", task.id));
        let body = result.encode();
        let deadline = tokio::time::Instant::now() + REPORT_PATIENCE;
        let policy = zk_recipes::retry::RetryPolicy::default();
        let written = self
            .refused_twice(is_noauth, || {
                zk_recipes::retry::retry(&policy, deadline, |attempt| {
                    if attempt > 0 {
                        tracing::warn!(attempt, "reporting the result again after a lost connection");
                    }
                    self.client.zk.set_data(&path, body.clone(), None)
                })
            })
            .await;
        match written {
            Ok(_) => Ok(()),
            // system-a gave up and the node was reaped: nobody is waiting.
            Err(zk_recipes::ZkError::NoNode) => {
                tracing::info!("task node is gone; result not reported");
                Ok(())
            }
            Err(zk_recipes::ZkError::NoAuth) => Err(Failure::unreportable(servicekit::auth::not_allowed(&path))),
            Err(e) => Err(Failure::retry(format!("cannot report the result: {e:?}"))),
        }
    }
}

impl Worker {
    /// A message that is not a task system-b can run, but names one: its
    /// node says `failed` (if it still says `pending`), so whoever waits on
    /// it learns now, instead of waiting for a result that cannot come.
    /// Best effort: the message is dead-lettered either way.
    async fn fail_unreadable(&self, data: &[u8], why: &str) {
        let id = serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|v| v.get("id")?.as_str().map(str::to_string))
            .filter(|id| !id.is_empty() && !id.contains('/') && id != "." && id != "..");
        let Some(id) = id else { return };
        let path = self.common.path(&format!("/tasks/{id}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let body = TaskNode::failed(format!("system-b cannot read the task: {why}")).encode();
        if let Err(e) = self.write_if_pending(&path, &body, deadline).await {
            tracing::warn!(task_id = id, "cannot report the unreadable task as failed: {e:?}");
        }
    }

    /// Runs `attempt` until its answer is not a NOAUTH, or is one that
    /// means it. A reconnect starts anonymous until the client has added
    /// its auth again, so a request that crossed a reconnect can be refused
    /// by a server that would let it through a moment later: such a
    /// refusal (the client's epoch changed while it ran) is tried again
    /// once the session is live, without counting. Only a NOAUTH on a
    /// connection that stayed authenticated throughout counts, and two of
    /// those are an ACL that shuts system-b out, which no redelivery can
    /// fix. Bounded: at most [`MAX_REFUSALS_TRIED`] attempts in all.
    async fn refused_twice<T, E, F>(&self, refused: impl Fn(&E) -> bool, attempt: impl Fn() -> F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        let mut counted = 0;
        let mut tries = 0;
        loop {
            let epoch = self.client.epoch();
            let result = attempt().await;
            tries += 1;
            match result {
                Err(e) if refused(&e) => {
                    self.client.wait_live(Duration::from_secs(5)).await;
                    if self.client.epoch() == epoch {
                        counted += 1;
                    }
                    if counted >= 2 || tries >= MAX_REFUSALS_TRIED {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    /// Writes `body` over the task node only while it still says `pending`,
    /// at the version read, retrying through connection loss until
    /// `deadline`. A node that is gone or already final is left as it is
    /// (`Ok`): someone else answered, or nobody waits any more; so is a
    /// `BadVersion`, which means another delivery wrote it meanwhile.
    async fn write_if_pending(
        &self,
        path: &str,
        body: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<(), zk_recipes::ZkError> {
        let policy = zk_recipes::retry::RetryPolicy::default();
        let read = self
            .refused_twice(is_noauth, || {
                zk_recipes::retry::retry(&policy, deadline, |_| self.client.zk.get_data(path, false))
            })
            .await;
        let version = match read {
            Ok((data, stat)) if TaskNode::is_pending(&data) => stat.version,
            Ok(_) | Err(zk_recipes::ZkError::NoNode) => return Ok(()),
            Err(e) => return Err(e),
        };
        match zk_recipes::retry::set_data_versioned(&self.client.zk, path, body, version, deadline).await {
            Ok(_) | Err(zk_recipes::ZkError::BadVersion) | Err(zk_recipes::ZkError::NoNode) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The result of a copy of a task applied before (a redelivery, or the
    /// outbox publishing it again). Its first delivery reported it, unless
    /// that report was lost: so it is written only over a node that still
    /// says `pending`, at the version read. Writing it unconditionally
    /// would change a result system-a may already have answered with (a
    /// different worker and token, or a value other tasks moved since).
    async fn report_again(&self, task: &Task, result: &TaskNode) -> Result<(), Failure> {
        let path = self.common.path(&format!("/tasks/{}", task.id));
        let deadline = tokio::time::Instant::now() + REPORT_PATIENCE;
        match self.write_if_pending(&path, &result.encode(), deadline).await {
            Ok(()) => Ok(()),
            Err(zk_recipes::ZkError::NoAuth) => Err(Failure::unreportable(servicekit::auth::not_allowed(&path))),
            Err(e) => Err(Failure::retry(format!("cannot report the result: {e:?}"))),
        }
    }

    /// A permanent fault outside the task (the store cannot be written):
    /// alarm, back off, re-queue with the attempt counted; dead-letter once
    /// the attempts are spent.
    async fn stuck(
        &self,
        task: &Task,
        delivery: &lapin::message::Delivery,
        channel: &lapin::Channel,
        span: &tracing::Span,
        e: Failure,
    ) {
        let attempt = attempts(delivery) + 1;
        if attempt >= STUCK_ATTEMPTS {
            span.in_scope(|| {
                tracing::error!(
                    attempt,
                    "{}: a permanent fault, giving up on the task after {attempt} attempts and dead-lettering it; {}",
                    e.reason,
                    e.remedy
                )
            });
            let failed = TaskNode::failed(e.reason.clone());
            let _ = self.report(task, &failed).instrument(span.clone()).await;
            let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
        let delay = stuck_delay(attempt);
        if self.alarm.ready() {
            span.in_scope(|| {
                tracing::error!(
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    "{}: a permanent fault, the task is retried with backoff and dead-lettered after {STUCK_ATTEMPTS} \
                     attempts; {}",
                    e.reason,
                    e.remedy
                )
            });
        }
        tokio::time::sleep(delay).await;
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(attempt));
        let props = delivery.properties.clone().with_headers(headers);
        let requeued = match channel
            .basic_publish(
                servicekit::rabbit::task_exchange(&self.queue).as_str().into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                &delivery.data,
                props,
            )
            .await
        {
            Ok(confirm) => matches!(confirm.await, Ok(c) if !c.is_nack()),
            Err(_) => false,
        };
        if requeued {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        } else {
            // The copy did not make it: the original goes back instead
            // (its count is not advanced, the backoff still applied).
            let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
        }
    }
}

fn is_noauth(e: &zk_recipes::ZkError) -> bool {
    matches!(e, zk_recipes::ZkError::NoAuth)
}

/// How many attempts a delivery has had (its `x-attempts` header).
fn attempts(delivery: &lapin::message::Delivery) -> i64 {
    let Some(headers) = delivery.properties.headers() else { return 0 };
    match headers.inner().get(ATTEMPTS_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        _ => 0,
    }
}

/// Gives the message back to the queue for another try.
async fn requeue(delivery: &lapin::message::Delivery, span: &tracing::Span, reason: &str) {
    span.in_scope(|| tracing::warn!("task will be retried: {reason}"));
    // A short pause so a retry loop cannot spin.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
}

/// How long a worker keeps trying to report a result through connection
/// loss before it gives the message back to the queue.
const REPORT_PATIENCE: Duration = Duration::from_secs(30);

/// The most attempts a request refused with NOAUTH gets, counting those
/// that crossed a reconnect (see `Worker::refused_twice`): a connection
/// that flaps without end must not hold a task forever.
const MAX_REFUSALS_TRIED: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Transient: try again now.
    Retry,
    /// The task itself is wrong: report it failed and dead-letter it.
    Permanent,
    /// The task is fine but the store cannot take it until an operator
    /// acts: back off, then dead-letter after a bounded number of attempts.
    Stuck,
    /// The task node refuses system-b: not even a failure can be reported,
    /// so the message is dead-lettered for an operator to replay.
    Unreportable,
}

struct Failure {
    kind: Kind,
    reason: String,
    /// The fix, for a `Stuck` failure's log.
    remedy: String,
}

impl Failure {
    fn retry(reason: String) -> Failure {
        Failure { kind: Kind::Retry, reason, remedy: String::new() }
    }
    fn permanent(reason: String) -> Failure {
        Failure { kind: Kind::Permanent, reason, remedy: String::new() }
    }
    fn unreportable(reason: String) -> Failure {
        Failure { kind: Kind::Unreportable, reason, remedy: String::new() }
    }
}

impl From<store::StoreError> for Failure {
    fn from(e: store::StoreError) -> Failure {
        match e {
            // Someone newer holds the lock: retry, as a fresh holder.
            store::StoreError::Fenced { .. } => Failure::retry(e.to_string()),
            store::StoreError::BadName(_) => Failure::permanent(e.to_string()),
            ref other if other.is_permanent() => {
                Failure { kind: Kind::Stuck, reason: e.to_string(), remedy: e.remedy() }
            }
            other => Failure::retry(other.to_string()),
        }
    }
}
