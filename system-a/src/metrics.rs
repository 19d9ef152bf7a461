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

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use servicekit::metrics::prometheus_client::metrics::gauge::Gauge;
use servicekit::metrics::prometheus_client::metrics::histogram::Histogram;
use servicekit::metrics::prometheus_client::registry::{Registry, Unit};

use servicekit::metrics::ByOutcome;

use crate::edge::Outcome;

#[derive(Clone)]
pub struct Metrics {
    submits: ByOutcome,
    submit_duration: Histogram,
    outbox_entries: Gauge,
    outbox_oldest_age: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// The handles, registered in `registry` under `system_a_`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            submits: ByOutcome::new(Outcome::ALL.map(Outcome::as_str)),
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
