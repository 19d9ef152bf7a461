//! `ha-worker`: scenario 4, active/standby.
//!
//! Every instance campaigns in the election at `<root>/ha/<group>`; the
//! leader is active and appends a line per interval to a journal, stamped
//! with its term's fencing token; the others stand by. The rules that keep
//! two actives from ever interleaving their work:
//!
//! - the active stops the moment its connection drops (SUSPENDED), which
//!   it notices within two thirds of the session timeout: before the
//!   server can expire the session and elect someone else;
//! - if it could not notice (it was paused), the journal refuses its
//!   older token when it resumes;
//! - a graceful stop (SIGTERM) deletes the election node, so a standby
//!   takes over at once rather than after a session timeout; the stop is
//!   bounded ([`STOP_BUDGET`]) whatever state the server is in.
//!
//! A term's token is the leader node's czxid in the fencing epoch
//! ([`zk_recipes::fencing`]). A leader refused by the journal confirms
//! with a write to its own node whether it still leads: if not, it stalled
//! and steps down; if it does, the journal has seen terms of a history this
//! server never had (its data was reset, restored or moved), so the epoch
//! is advanced past them and the term goes on. A journal no advance can
//! satisfy is an alarm: the worker stays out of the election until it can.
//!
//! # Layout
//! - [`run`]: the service; `main.rs` only parses flags and calls it.
//! - [`term`]: campaign → active loop → step down, one term at a time.
//! - [`journal`]: the fenced resource.
//! - [`metrics`]: ha-worker's Prometheus metrics (active, term, failovers,
//!   handover time), served on `--metrics-listen` with the common ones
//!   (`servicekit::metrics`).
//!
//! Stdout lines, for tests and operators: `ha-worker standby`,
//! `ha-worker active term=<zxid> epoch=<epoch>`, `ha-worker suspended
//! term=<zxid>` (connection lost: no writes), `ha-worker resumed
//! term=<zxid>` (the session survived), `ha-worker stepped down`,
//! `ha-worker fenced term=<token> newer=<token>`, `ha-worker epoch advanced
//! to <epoch>`, `ha-worker fencing alarm` (out of the election until an
//! operator sets the epoch past the journal's), `ha-worker fencing epoch
//! past the journal again`, `ha-worker fencing epoch unusable` / `readable
//! again` (its node damaged or refused to us), `ha-worker journal unusable` (a permanent
//! fault: out of the election until fixed), `ha-worker journal usable
//! again`, `ha-worker resigned`.

pub mod journal;
pub mod metrics;
pub mod term;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use servicekit::CommonArgs;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// ha-worker's flags.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "ha-worker", version, about = "Active/standby worker under leader election")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Election group: instances in the same group back each other up.
    #[arg(long, env = "HA_GROUP", default_value = "workers")]
    pub group: String,
    /// The fenced journal the active writes to.
    #[arg(long, env = "HA_JOURNAL", default_value = "ha-journal.log")]
    pub journal: PathBuf,
    /// Work interval when /config/ha-worker does not set one.
    #[arg(long, env = "HA_INTERVAL_MS", default_value_t = 500)]
    pub interval_ms: u64,
}

/// Live settings from `<root>/config/ha-worker`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub interval_ms: Option<u64>,
}

/// The longest a stop takes from SIGTERM to exit, whatever the server is
/// doing: resigning and deregistering are worth a try (a standby takes over
/// at once), but a server that does not answer must not hold the process;
/// the session's expiry hands over instead.
pub const STOP_BUDGET: Duration = Duration::from_millis(1200);

/// Runs the worker until `stop` is cancelled.
pub async fn run(args: Args, stop: CancellationToken) -> anyhow::Result<()> {
    servicekit::exit_after(&stop, STOP_BUDGET + Duration::from_millis(300));
    let instance = args.common.instance_id();
    let layout = args.common.layout();
    let mut metrics = servicekit::metrics::Metrics::new();
    let own = crate::metrics::Metrics::register(metrics.registry());
    let common_metrics = metrics.common.clone();
    let client = tokio::select! {
        c = args.common.connect_zk() => c?,
        _ = stop.cancelled() => return Ok(()),
    };
    metrics.serve(args.common.metrics_listen, &client, stop.clone()).await?;
    let status = servicekit::status::Status::new(serde_json::json!({"pid": std::process::id(), "group": args.group}));
    let registration = tokio::select! {
        r = args.common.register(&client, servicekit::auth::HA_WORKER, &instance, &status) => r?,
        _ = stop.cancelled() => return Ok(()),
    };
    let stand = term::Stand {
        settings: servicekit::live_config(
            &client,
            &layout.config(servicekit::auth::HA_WORKER),
            &status,
            &common_metrics,
        ),
        status,
        journal: journal::Journal::new(&args.journal),
        election: zk_recipes::election::Election::new(&client, layout.ha_group(&args.group), instance.clone())
            .with_acl(args.common.policy().ha_group()),
        epoch: zk_recipes::fencing::Epoch::new(&client, layout.fencing()),
        default_interval: Duration::from_millis(args.interval_ms),
        instance: instance.clone(),
        metrics: own,
        client,
    };
    let span = tracing::info_span!("ha", instance = %instance, group = %args.group);
    // Instrumented, not entered: a guard held across awaits would leave the
    // span entered on this thread for whatever else runs on it meanwhile.
    let stopped_at = stand.until(&stop).instrument(span).await;
    let left = STOP_BUDGET.saturating_sub(stopped_at.elapsed());
    let _ = tokio::time::timeout(left, registration.deregister()).await;
    Ok(())
}
