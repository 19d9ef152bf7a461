//! system-a's own metrics, one struct of handles passed to where each is
//! counted. Served with the common ones (`servicekit::metrics`) on
//! `--metrics-listen`.
//!
//! | name | type | what |
//! |---|---|---|
//! | `system_a_submits_total{outcome}` | counter | Submits by how they ended ([`crate::edge::Outcome`]) |
//! | `system_a_submit_duration_seconds` | histogram | a Submit's call to system-b's result (done or failed) |
//! | `system_a_outbox_entries` | gauge | tasks accepted and not yet confirmed by RabbitMQ, at the drain's last look |
//! | `system_a_outbox_oldest_entry_age_seconds` | gauge | how long the oldest of them has waited |
//! | `system_a_stage_seconds{stage}` | histogram | each step of a Submit ([`STAGES`]) |

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use servicekit::metrics::prometheus_client::metrics::gauge::Gauge;
use servicekit::metrics::prometheus_client::metrics::histogram::Histogram;
use servicekit::metrics::prometheus_client::registry::{Registry, Unit};

use servicekit::metrics::{ByOutcome, Stages};

use crate::edge::Outcome;

/// The steps of a Submit, in order (`crate::submit`), as
/// `system_a_stage_seconds` names them:
///
/// - `claim`: recording the request id (Submits that carry one);
/// - `outbox_entry`: the outbox entry's create;
/// - `task_node`: the task node's create, with its watch armed;
/// - `publish`: the publish, until RabbitMQ's confirm;
/// - `outbox_delete`: the confirmed entry's delete;
/// - `wait`: from then until system-b's result is read.
pub const STAGES: [&str; 6] = ["claim", "outbox_entry", "task_node", "publish", "outbox_delete", "wait"];

#[derive(Clone)]
pub struct Metrics {
    submits: ByOutcome,
    /// Where a Submit's time goes, step by step ([`STAGES`]).
    pub stages: Stages,
    submit_duration: Histogram,
    outbox_entries: Gauge,
    outbox_oldest_age: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// The handles, registered in `registry` under `system_a_`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            submits: ByOutcome::new(Outcome::ALL.map(Outcome::as_str)),
            stages: Stages::new(STAGES),
            submit_duration: Histogram::new(servicekit::metrics::duration_buckets()),
            outbox_entries: Gauge::default(),
            outbox_oldest_age: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("system_a");
        r.register("submits", "Submits by how they ended", m.submits.family());
        r.register_with_unit(
            "submit_duration",
            "From a Submit call to system-b's result (done or failed)",
            Unit::Seconds,
            m.submit_duration.clone(),
        );
        r.register_with_unit("stage", "Each step of a Submit", Unit::Seconds, m.stages.family());
        r.register(
            "outbox_entries",
            "Accepted tasks not yet confirmed by RabbitMQ, as of the outbox drain's last look",
            m.outbox_entries.clone(),
        );
        r.register_with_unit(
            "outbox_oldest_entry_age",
            "How long the oldest outbox entry has waited, as of the drain's last look",
            Unit::Seconds,
            m.outbox_oldest_age.clone(),
        );
        m
    }

    /// A Submit ended so.
    pub fn submitted(&self, outcome: Outcome) {
        self.submits.inc(outcome.as_str());
    }

    /// A Submit had system-b's result `took` after it was called.
    pub fn answered(&self, took: Duration) {
        self.submit_duration.observe(took.as_secs_f64());
    }

    /// The outbox as the drain saw it.
    pub fn outbox(&self, entries: usize, oldest: Duration) {
        self.outbox_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.outbox_oldest_age.set(oldest.as_secs_f64());
    }
}
