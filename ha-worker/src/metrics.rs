//! ha-worker's own metrics, one struct of handles held by the worker's
//! [`crate::term::Stand`]. Served with the common ones
//! (`servicekit::metrics`) on `--metrics-listen`.
//!
//! | name | type | what |
//! |---|---|---|
//! | `ha_worker_active` | gauge | 1 while this worker is the active one and writing (0 standing by, suspended) |
//! | `ha_worker_term` | gauge | the zxid of this worker's term while active (as printed in `ha-worker active term=`), else 0 |
//! | `ha_worker_failovers_total` | counter | terms this worker began after another's (it waited in line behind one) |
//! | `ha_worker_failover_handover_seconds` | histogram | from learning the one ahead had left to this term's first journal write |
//!
//! **What the handover time measures, and why from there.** Its start is
//! the instant this standby's watch on its predecessor's election node
//! fired (`zk_recipes::election::Leadership::took_over_at`): the earliest
//! moment the standby itself can know. The old active's actual death
//! (a kill -9) is not observable from here: the server sees it only as a
//! session timeout, which is a setting, not a cost of the handover, and
//! the dead process cannot report it. So the figure is the handover the
//! code is responsible for: the watch's delivery, reading the epoch,
//! waiting out the first interval, and the fenced write. Add the session
//! timeout for the outage the journal's readers saw after a crash; after a
//! graceful stop (the old active resigns) there is nothing to add.

use std::time::Duration;

use servicekit::metrics::prometheus_client::metrics::counter::Counter;
use servicekit::metrics::prometheus_client::metrics::gauge::Gauge;
use servicekit::metrics::prometheus_client::metrics::histogram::Histogram;
use servicekit::metrics::prometheus_client::registry::{Registry, Unit};

#[derive(Clone)]
pub struct Metrics {
    active: Gauge,
    term: Gauge,
    failovers: Counter,
    handover: Histogram,
}

impl Metrics {
    /// The handles, registered in `registry` under `ha_worker_`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            active: Gauge::default(),
            term: Gauge::default(),
            failovers: Counter::default(),
            handover: Histogram::new(servicekit::metrics::duration_buckets()),
        };
        let r = registry.sub_registry_with_prefix("ha_worker");
        r.register("active", "1 while this worker is the active one and writing", m.active.clone());
        r.register("term", "The zxid of this worker's term while active, else 0", m.term.clone());
        r.register("failovers", "Terms this worker began after another's", m.failovers.clone());
        r.register_with_unit(
            "failover_handover",
            "From this standby's watch on the leaving active's node firing to its own first journal write",
            Unit::Seconds,
            m.handover.clone(),
        );
        m
    }

    /// A term began; `after_another` when this worker waited in line for it.
    pub fn term_began(&self, zxid: i64, after_another: bool) {
        self.term.set(zxid);
        self.active.set(1);
        if after_another {
            self.failovers.inc();
        }
    }

    /// Writing (a term began or resumed) or not (suspended).
    pub fn writing(&self, on: bool) {
        self.active.set(i64::from(on));
    }

    pub fn term_ended(&self) {
        self.active.set(0);
        self.term.set(0);
    }

    /// The first journal write of a term that took over, `took` after the
    /// predecessor's node was seen gone.
    pub fn handed_over(&self, took: Duration) {
        self.handover.observe(took.as_secs_f64());
    }
}
