//! system-b's own metrics, one struct of handles shared by the deliveries
//! in flight. Served with the common ones (`servicekit::metrics`) on
//! `--metrics-listen`.
//!
//! | name | type | what |
//! |---|---|---|
//! | `system_b_tasks_total{outcome}` | counter | deliveries by how they ended ([`Outcome`]) |
//! | `system_b_lock_wait_seconds` | histogram | from asking for an entity's lock to holding it |
//! | `system_b_lock_hold_seconds` | histogram | from holding an entity's lock to its release |
//! | `system_b_fenced_writes_total` | counter | reads and writes the store refused by fencing token (a stale holder) |
//! | `system_b_redeliveries_total` | counter | deliveries RabbitMQ marked as redelivered |
//! | `system_b_stage_seconds{stage}` | histogram | each step of a task ([`STAGES`]) |

use std::time::Duration;

use servicekit::metrics::prometheus_client::metrics::counter::Counter;
use servicekit::metrics::prometheus_client::metrics::histogram::Histogram;
use servicekit::metrics::prometheus_client::registry::{Registry, Unit};
use servicekit::metrics::{ByOutcome, Stages};

/// How a delivery ended, as `system_b_tasks_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now, and its node answered.
    Done,
    /// Applied by an earlier delivery whose report was lost: its recorded
    /// result was reported again (not applied twice).
    Reported,
    /// Nothing to do: a late copy of a task already final, or no such task.
    NoOp,
    /// Given back to the queue for another try (a transient fault).
    Requeued,
    /// Published again with its attempt count, after a backoff (a store an
    /// operator must fix).
    Republished,
    /// Failed for good: the node says `failed`, the message is dead-lettered.
    Failed,
    /// Dead-lettered without a word to the node: unreadable, of a newer
    /// contract, or its node refuses us.
    DeadLettered,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Done,
        Outcome::Reported,
        Outcome::NoOp,
        Outcome::Requeued,
        Outcome::Republished,
        Outcome::Failed,
        Outcome::DeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Reported => "reported",
            Outcome::NoOp => "no_op",
            Outcome::Requeued => "requeued",
            Outcome::Republished => "republished",
            Outcome::Failed => "failed",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// The steps of a task, in order (`crate::worker`), as
/// `system_b_stage_seconds` names them:
///
/// - `read`: the task's node, before the lock (what, on which entity);
/// - `lock`: from asking for the entity's lock to holding it;
/// - `read_again`: the node again under the lock (still pending? version),
///   and the fencing epoch, read at once;
/// - `fenced_read`: the store's record of the entity, read with the token;
/// - `work`: the simulated work (`work_ms`);
/// - `store_apply`: the store's write, fsynced;
/// - `report`: the result written into the task's node;
/// - `release`: the lock's node deleted;
/// - `ack`: the delivery acked to RabbitMQ.
pub const STAGES: [&str; 9] =
    ["read", "lock", "read_again", "fenced_read", "work", "store_apply", "report", "release", "ack"];

#[derive(Clone)]
pub struct Metrics {
    tasks: ByOutcome,
    /// Where a task's time goes, step by step ([`STAGES`]).
    pub stages: Stages,
    lock_wait: Histogram,
    lock_hold: Histogram,
    fenced: Counter,
    redeliveries: Counter,
}

impl Default for Metrics {
    /// Handles registered nowhere: for a worker run without a server (tests).
    fn default() -> Self {
        Metrics::register(&mut Registry::default())
    }
}

impl Metrics {
    /// The handles, registered in `registry` under `system_b_`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            tasks: ByOutcome::new(Outcome::ALL.map(Outcome::as_str)),
            stages: Stages::new(STAGES),
            lock_wait: Histogram::new(servicekit::metrics::duration_buckets()),
            lock_hold: Histogram::new(servicekit::metrics::duration_buckets()),
            fenced: Counter::default(),
            redeliveries: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("system_b");
        r.register("tasks", "Task deliveries by how they ended", m.tasks.family());
        r.register_with_unit(
            "lock_wait",
            "From asking for an entity's lock to holding it",
            Unit::Seconds,
            m.lock_wait.clone(),
        );
        r.register_with_unit(
            "lock_hold",
            "From holding an entity's lock to releasing it",
            Unit::Seconds,
            m.lock_hold.clone(),
        );
        r.register_with_unit("stage", "Each step of a task", Unit::Seconds, m.stages.family());
        r.register(
            "fenced_writes",
            "Store accesses refused by fencing token: this instance held a lock that was no longer its",
            m.fenced.clone(),
        );
        r.register("redeliveries", "Deliveries RabbitMQ marked as redelivered", m.redeliveries.clone());
        m
    }

    pub fn task(&self, outcome: Outcome) {
        self.tasks.inc(outcome.as_str());
    }

    pub fn lock_waited(&self, took: Duration) {
        self.lock_wait.observe(took.as_secs_f64());
        self.stages.observe("lock", took);
    }

    pub fn lock_held(&self, took: Duration) {
        self.lock_hold.observe(took.as_secs_f64());
    }

    pub fn fenced(&self) {
        self.fenced.inc();
    }

    pub fn redelivered(&self) {
        self.redeliveries.inc();
    }
}
