//! One task, start to finish: read it from its node, take the entity's
//! lock, apply it fenced and exactly once, report the result.
//!
//! ```text
//!   message {id} ──▶ read /tasks/<id> ──▶ lock /locks/<entity> ──▶ read the node again
//!                     (pending? what?)      (token = czxid@epoch)    (still pending, version v)
//!       ──▶ store.read(token) ──▶ last task the entity applied?
//!             │                     ├─ this one: report its recorded result (a redelivery)
//!             │                     └─ another, node still pending: close it first
//!             │                        (write its recorded result into its node)
//!       ──▶ work ──▶ store.apply(token, {task, value}) ──▶ set /tasks/<id> = done @ v ──▶ unlock
//! ```
//!
//! **Exactly once, with no window.** The store records the entity's last
//! applied task in the same write as the value. A task's node says
//! `pending` until its result is written, at the version system-a created
//! it with. Whoever applies a task first makes sure the entity's previous
//! task is no longer pending ([`Worker::close_previous`]). So a task
//! applied but not yet answered is always its entity's last; a redelivery
//! finds it there (and reports), or finds its node final (and does
//! nothing). No list of remembered ids, no count, no time.
//!
//! **Nothing taken on trust from the broker.** The message names a task;
//! the node, which only system-a may create, says what it is. A forged,
//! replayed or rewritten message can at most ask for a task the node
//! already describes. Every write to a node is versioned from the `pending`
//! version read under the lock, so a late copy never rewrites an answer.
//!
//! **Fencing.** The token is the lock node's czxid in the current fencing
//! epoch ([`zk_recipes::fencing`]). A refusal by the store is checked with
//! a write to our own lock node: gone means we stalled (the refusal is
//! right); still ours means the store has seen a history this server never
//! issued (a data reset, a restore, a move), and the epoch is advanced
//! past it, at most [`fencing::MAX_ADVANCES`] times before it is an alarm.

use std::time::Duration;

use task_contract::{Op, TaskNode, TaskState};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;
use zk_recipes::fencing::{self, Epoch, Refusal, Token};
use zk_recipes::lock::{Lock, LockError, LockGuard};
use zk_recipes::retry::{self, RetryPolicy};
use zk_recipes::session::{is_noauth, Client};
use zk_recipes::ZkError;

use crate::outcome::{self, Disposition, Failure};
use crate::store::{Applied, Entity, Store, StoreError};
use crate::Settings;

/// What a task asks, as its node says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub entity: String,
    pub op: Op,
    pub amount: i64,
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The task is applied and its node says so (now, or by a delivery
    /// before this one whose report was lost): ack.
    Done { value: i64, token: Token, fresh: bool },
    /// Nothing to do: no such task, or it is final already. Ack.
    NoOp(&'static str),
    /// Not done this time; the disposition says what happens next. A
    /// `FailThenDeadLetter` has already written `failed` into the node.
    NotDone(Failure, Disposition),
}

/// Everything a worker needs to run tasks. Shared by the deliveries in
/// flight (the broker's prefetch).
pub struct Worker {
    pub client: Client,
    pub store: Store,
    pub layout: servicekit::layout::Layout,
    pub policy: servicekit::auth::Policy,
    pub epoch: Epoch,
    pub settings: watch::Receiver<Settings>,
    /// What this instance says about itself in its registration node; a
    /// write the store refused by token is reported there.
    pub status: servicekit::status::Status,
    /// This instance's name: in lock nodes and in results.
    pub instance: String,
    /// Lock wait and hold times, and refusals by token.
    pub metrics: crate::metrics::Metrics,
}

/// How long a worker keeps trying a request to the coordination server
/// through connection loss before it gives the message back to the queue.
const PATIENCE: Duration = Duration::from_secs(30);

/// How long a task waits for its entity's lock before it goes back to the
/// queue (another instance is working on the entity meanwhile).
const LOCK_WAIT: Duration = Duration::from_secs(30);

impl Worker {
    /// Runs the task `id` names, on its `attempt`-th delivery (1 for the
    /// first). Never panics and never leaves the lock held.
    pub async fn handle(&self, id: &str, attempt: i64) -> Handled {
        let task = match self.metrics.stages.time("read", self.read_pending(id)).await {
            Ok(Some((task, _))) => task,
            Ok(None) => match self.read_missing_again(id).await {
                Ok(Some(task)) => task,
                Ok(None) => return Handled::NoOp("no pending task by that id"),
                Err(f) => return not_done(f, attempt),
            },
            Err(f) => return not_done(f, attempt),
        };
        // A name no store or lock can have fails now, without a lock: no
        // worker can ever apply it.
        if let Err(e) = task_contract::check_entity(&task.entity) {
            let failure = Failure::Rejected(e.to_string());
            return self.fail(&task, failure, attempt).await;
        }
        let lock_path = self.layout.lock(&task.entity);
        let lock = Lock::new(&self.client, lock_path.clone()).with_acl(self.policy.lock());
        // A NOAUTH that is the ACL's answer (`Client::as_ourselves`) is an
        // ACL that shuts system-b out: the task fails instead of going
        // round for ever.
        let asked = std::time::Instant::now();
        let refused = |e: &LockError| matches!(e, LockError::Zk(ZkError::NoAuth));
        let acquired = self
            .client
            .as_ourselves(Instant::now() + LOCK_WAIT, refused, || lock.acquire(&self.instance, LOCK_WAIT))
            .instrument(tracing::info_span!("lock_wait", entity = %task.entity))
            .await;
        let guard = match acquired {
            Ok(g) => {
                self.metrics.lock_waited(asked.elapsed());
                g
            }
            Err(LockError::Zk(ZkError::NoAuth)) => {
                let failure = Failure::Rejected(servicekit::auth::not_allowed(&lock_path));
                return self.fail(&task, failure, attempt).await;
            }
            Err(e) => return not_done(Failure::Retry(e.to_string()), attempt),
        };
        let held = std::time::Instant::now();
        let handled = match self.apply_locked(&task, &guard).await {
            Ok(handled) => handled,
            // Still under the lock: nobody can apply the task between the
            // failure's look at the store and its write to the node.
            Err(failure) => self.fail(&task, failure, attempt).await,
        };
        self.metrics.stages.time("release", guard.release()).await;
        self.metrics.lock_held(held.elapsed());
        handled
    }

    /// The whole of the work under the entity's lock.
    async fn apply_locked(&self, task: &Task, guard: &LockGuard) -> Result<Handled, Failure> {
        // Read again under the lock: the node may have been answered by a
        // copy of this message between our first look and the lock.
        // With it, the fencing epoch: two reads at once, one round trip
        // under the lock instead of two (the epoch must be read after the
        // lock node exists, which it does; see `fenced_read`).
        let both = async { tokio::join!(self.read_pending(&task.id), self.epoch.token(guard.token())) };
        let (pending, epoch) = self.metrics.stages.time("read_again", both).await;
        let Some((_, version)) = pending? else {
            return Ok(Handled::NoOp("answered by another delivery meanwhile"));
        };
        let reading = self.fenced_read(task, guard, epoch.map_err(epoch_failure)?);
        let (entity, token) = self.metrics.stages.time("fenced_read", reading).await?;
        if let Some(last) = &entity.last {
            if last.task == task.id {
                tracing::info!("redelivered task was applied before: reporting its recorded result");
                let node = TaskNode::done(last.value, &last.worker, last.epoch, last.token);
                self.report(&task.id, &node, version).await?;
                return Ok(Handled::Done { value: last.value, token, fresh: false });
            }
            self.close_previous(last).await?;
        }
        // The simulated work happens between the read and the write:
        // exactly the window in which an unlocked worker would lose
        // another's update.
        let work = Duration::from_millis(self.settings.borrow().work_ms);
        if !work.is_zero() {
            tokio::time::sleep(work).await;
            self.metrics.stages.observe("work", work);
        }
        let value = task.op.apply(entity.value, task.amount).ok_or_else(|| {
            Failure::Rejected(format!(
                "{} {} on {} = {} does not fit a 64-bit value",
                task.op.as_str(),
                task.amount,
                task.entity,
                entity.value
            ))
        })?;
        // No "do we still hold the lock?" check here: it could not be atomic
        // with the write (a pause can fall right after it, the very case a
        // fence exists for), so the store alone judges, by token. A holder
        // that stalled past its session is refused there, and says so.
        let applied = Applied {
            task: task.id.clone(),
            value,
            worker: self.instance.clone(),
            epoch: token.epoch,
            token: token.zxid,
        };
        let (entity_name, span) = (task.entity.clone(), tracing::info_span!("store_apply", %token));
        let applying = self.on_store(move |store| span.in_scope(|| store.apply(&entity_name, token, applied)));
        self.metrics.stages.time("store_apply", applying).await.map_err(|e| self.refused(e))?;
        // The window exactly-once must survive: applied, not yet answered.
        servicekit::failpoint::crash_if_armed("system-b/after-store-apply");
        let node = TaskNode::done(value, &self.instance, token.epoch, token.zxid);
        self.metrics.stages.time("report", self.report(&task.id, &node, version)).await?;
        tracing::info!(value, %token, "applied");
        Ok(Handled::Done { value, token, fresh: true })
    }

    /// Reads the entity as the lock's holder with `token`, fencing older
    /// tokens out. A refusal by a token of a history this server never had
    /// (a reset) is answered by advancing the epoch; see the module docs.
    ///
    /// `token`'s epoch must have been read after the lock node existed
    /// (`guard` is held), so an advance made before we hold is always seen.
    async fn fenced_read(&self, task: &Task, guard: &LockGuard, token: Token) -> Result<(Entity, Token), Failure> {
        let mut token = token;
        let mut advances = 0;
        loop {
            let entity_name = task.entity.clone();
            let seen = match self.on_store(move |store| store.read(&entity_name, token)).await {
                Ok(entity) => return Ok((entity, token)),
                Err(StoreError::Fenced { seen, .. }) => seen,
                Err(e) => return Err(store_failure(e)),
            };
            let still_held =
                guard.confirm().await.map_err(|e| Failure::Retry(format!("confirming the lock: {e:?}")))?;
            match fencing::after_refusal(still_held, advances) {
                Refusal::Stale => {
                    self.status.fenced(&task.entity, token, seen);
                    self.metrics.fenced();
                    return Err(Failure::Retry(format!(
                        "fenced: our token {token} is older than {seen}, and the lock is no longer ours"
                    )));
                }
                Refusal::GiveUp => {
                    return Err(Failure::Alarm {
                        reason: format!(
                            "the store has seen fencing token {seen} for {}, and token {token} still cannot pass it \
                             after {advances} epoch advances",
                            task.entity
                        ),
                        remedy: format!(
                            "check that only one coordination service serves this store, then set the epoch at {} \
                             above {} as the operator (zkctl set {} {})",
                            self.epoch.path(),
                            seen.epoch,
                            self.epoch.path(),
                            seen.epoch.saturating_add(1)
                        ),
                    })
                }
                Refusal::Advance => {
                    let epoch = self.epoch.advance_past(seen.epoch).await.map_err(epoch_failure)?;
                    tracing::warn!(%seen, old = %token, epoch, "the store is ahead of this coordination history: epoch advanced");
                    token = Token::new(epoch, token.zxid);
                    advances += 1;
                }
            }
        }
    }

    /// The second look at a task the first read did not find pending
    /// (public so a test can force the race below). On an ensemble our
    /// server may be a follower that has not yet applied system-a's create:
    /// the message was published after the create committed, but a
    /// follower applies commits a little later, and a read is answered
    /// from its copy. Acked as a no-op, that task would never run. So
    /// before believing "no such task", this session's server is brought
    /// up to date ([`Worker::catch_up`]) and asked again.
    ///
    /// A node that is there now is read again, not taken for final: it may
    /// have arrived between the first read and this look (the follower
    /// applied the create meanwhile), pending. Taking "it exists" for "it
    /// is answered" lost a task after a broker node's kill on the
    /// scale-out profile: the first read said NoNode, the node was there a
    /// moment later, and the message was acked as a no-op. A final node
    /// still needs no catching up: it never turns pending.
    pub async fn read_missing_again(&self, id: &str) -> Result<Option<Task>, Failure> {
        let path = self.layout.task(id);
        let deadline = Instant::now() + PATIENCE;
        let policy = RetryPolicy::default();
        match retry::retry(&policy, deadline, |_| self.client.zk.exists(&path, false)).await {
            Ok(Some(_)) => return Ok(self.read_pending(id).await?.map(|(task, _)| task)),
            Ok(None) => {}
            Err(e) => return Err(Failure::Retry(format!("reading {path}: {e:?}"))),
        }
        self.catch_up().await?;
        Ok(self.read_pending(id).await?.map(|(task, _)| task))
    }

    /// Brings this session's server up to date with everything committed
    /// before now: ZooKeeper's `sync`, which zookeeper-async does not send.
    /// A write does the same: it is ordered by the ensemble's leader, and
    /// our server answers it only after applying every commit before it.
    /// The write is to our own registration node, rewritten with the data
    /// it holds at the version it has (what others see does not change).
    async fn catch_up(&self) -> Result<(), Failure> {
        let path = self.layout.member(servicekit::auth::SYSTEM_B, &self.instance);
        let deadline = Instant::now() + PATIENCE;
        let policy = RetryPolicy::default();
        loop {
            let (data, stat) = retry::retry(&policy, deadline, |_| self.client.zk.get_data(&path, false))
                .await
                .map_err(|e| Failure::Retry(format!("catching up with the ensemble through {path}: {e:?}")))?;
            match self.client.zk.set_data(&path, data, Some(stat.version)).await {
                Ok(_) => return Ok(()),
                // Rewritten meanwhile (our status changed): read it again.
                Err(ZkError::BadVersion) if Instant::now() < deadline => continue,
                Err(e) => return Err(Failure::Retry(format!("catching up with the ensemble through {path}: {e:?}"))),
            }
        }
    }

    /// Makes sure the entity's previous task is not left pending: if its
    /// worker applied it but never wrote its node (it crashed, or lost its
    /// connection, between the store's write and the node's), its recorded
    /// result is written now, before anything else touches the entity.
    /// This is what lets the store keep one record instead of every id.
    ///
    /// If the previous task's node cannot be written (an ACL refuses us),
    /// nothing else may be applied to the entity: the previous task would
    /// stop being the last one while still pending, and a copy of it would
    /// be applied again. The entity waits for an operator instead.
    async fn close_previous(&self, last: &Applied) -> Result<(), Failure> {
        let pending = match self.read_pending(&last.task).await {
            Ok(pending) => pending,
            // A node we cannot read is no pending task of ours to answer.
            Err(Failure::Unreadable(_)) => None,
            Err(e) => return Err(e),
        };
        let Some((_, version)) = pending else { return Ok(()) };
        tracing::info!(previous = %last.task, "the entity's previous task was applied but not answered: answering it");
        let node = TaskNode::done(last.value, &last.worker, last.epoch, last.token);
        self.report(&last.task, &node, version).await
    }

    /// Reads the task `id`: `None` when there is nothing to do (no node, or
    /// a final one), else what it asks and the node's version.
    async fn read_pending(&self, id: &str) -> Result<Option<(Task, i32)>, Failure> {
        let path = self.layout.task(id);
        let deadline = Instant::now() + PATIENCE;
        let policy = RetryPolicy::default();
        let read = self
            .client
            .as_ourselves(deadline, is_noauth, || {
                retry::retry(&policy, deadline, |_| self.client.zk.get_data(&path, false))
            })
            .await;
        let (data, stat) = match read {
            Ok(read) => read,
            Err(ZkError::NoNode) => return Ok(None),
            Err(ZkError::NoAuth) => return Err(Failure::Unreportable(servicekit::auth::not_allowed(&path))),
            Err(e) => return Err(Failure::Retry(format!("reading {path}: {e:?}"))),
        };
        let node = TaskNode::decode(&data).map_err(|e| Failure::Unreadable(format!("task node {path}: {e}")))?;
        match node.state {
            TaskState::Pending { entity, op, amount } => {
                Ok(Some((Task { id: id.to_string(), entity, op, amount }, stat.version)))
            }
            TaskState::Done { .. } | TaskState::Failed { .. } => Ok(None),
        }
    }

    /// Runs a call on the store on tokio's blocking pool. Each is a file
    /// lock and, but for a read by the newest holder, a write and an
    /// fdatasync: fractions of a millisecond on a quiet disk, and without
    /// bound on a disk that stalls. On an async worker thread (there are
    /// as many as cores) two such calls stall the whole instance meanwhile:
    /// its session's pings and its broker heartbeats included, so a slow
    /// disk could cost it its session and its lock.
    async fn on_store<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        let dir = self.store.dir().to_path_buf();
        match tokio::task::spawn_blocking(move || call(&store)).await {
            Ok(result) => result,
            // A panic in the call is a bug: it stays one. A call cancelled
            // (the runtime is shutting down) did not happen as far as we
            // know: a transient failure, the delivery goes back.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Io { path: dir, source: std::io::Error::other(e) }),
        }
    }

    /// Writes a final state into the task's node if it is still at
    /// `version` (the `pending` one read under the lock), retrying through
    /// connection loss. A `BadVersion` means someone answered it meanwhile
    /// (the next holder closing the gap, with this very result); a `NoNode`
    /// that nobody waits any more. Either way there is nothing to write.
    async fn report(&self, id: &str, node: &TaskNode, version: i32) -> Result<(), Failure> {
        let path = self.layout.task(id);
        let body = node.encode();
        let deadline = Instant::now() + PATIENCE;
        let written = self
            .client
            .as_ourselves(deadline, is_noauth, || {
                retry::set_data_versioned(&self.client.zk, &path, &body, version, deadline)
            })
            .instrument(tracing::info_span!("result_write", status = node.status().as_str()))
            .await;
        match written {
            Ok(_) | Err(ZkError::BadVersion) | Err(ZkError::NoNode) => Ok(()),
            Err(ZkError::NoAuth) => Err(Failure::Unreportable(servicekit::auth::not_allowed(&path))),
            Err(e) => Err(Failure::Retry(format!("cannot report the result: {e:?}"))),
        }
    }

    /// Tells the task's caller it failed for good: `failed` over a node
    /// still pending, unless the store shows the task applied (a write that
    /// reached the disk although the store reported an error), which is
    /// reported as done instead. Best effort: the message is dead-lettered
    /// either way.
    async fn report_failed(&self, task: &Task, error: &str) {
        let entity_name = task.entity.clone();
        let peeked = self.on_store(move |store| store.peek(&entity_name)).await;
        let applied = peeked.ok().and_then(|e| e.last).filter(|l| l.task == task.id);
        let node = match &applied {
            Some(l) => TaskNode::done(l.value, &l.worker, l.epoch, l.token),
            None => TaskNode::failed(error),
        };
        let Ok(Some((_, version))) = self.read_pending(&task.id).await else { return };
        if let Err(e) = self.report(&task.id, &node, version).await {
            tracing::warn!("the task's failure cannot be reported: {e}");
        }
    }

    /// The disposition of a failure, telling the task's node first when the
    /// task fails for good. Called under the entity's lock, or without one
    /// for a task no worker can ever apply (its entity is no name a store
    /// or a lock can have).
    async fn fail(&self, task: &Task, failure: Failure, attempt: i64) -> Handled {
        let disposition = outcome::disposition(&failure, attempt);
        if let Disposition::FailThenDeadLetter { error } = &disposition {
            self.report_failed(task, error).await;
        }
        Handled::NotDone(failure, disposition)
    }
}

fn not_done(failure: Failure, attempt: i64) -> Handled {
    let disposition = outcome::disposition(&failure, attempt);
    Handled::NotDone(failure, disposition)
}

/// A store error as the failure it is: a newer holder is transient, a
/// store an operator must fix is stuck.
impl Worker {
    /// A failed store write; a refusal by token is also reported in this
    /// instance's status, the evidence that the fence held.
    fn refused(&self, e: StoreError) -> Failure {
        if let StoreError::Fenced { entity, ours, seen } = &e {
            tracing::warn!(%entity, token = %ours, newer = %seen, "the store refused our write: a newer holder applied meanwhile");
            self.status.fenced(entity, ours, seen);
            self.metrics.fenced();
        }
        store_failure(e)
    }
}

fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::Fenced { .. } => Failure::Retry(e.to_string()),
        StoreError::BadName(_) => Failure::Rejected(e.to_string()),
        ref other if other.is_permanent() => Failure::Stuck { reason: e.to_string(), remedy: e.remedy() },
        other => Failure::Retry(other.to_string()),
    }
}

/// An epoch that cannot be read or advanced: a lost connection is retried,
/// anything else needs the operator.
fn epoch_failure(e: zk_recipes::fencing::EpochError) -> Failure {
    if e.is_transient() {
        Failure::Retry(e.to_string())
    } else {
        Failure::Alarm { reason: e.to_string(), remedy: e.remedy() }
    }
}
