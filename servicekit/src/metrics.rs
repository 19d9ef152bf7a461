//! Prometheus metrics and a health check, on an HTTP port of the service's
//! own (`--metrics-listen` / `METRICS_LISTEN`; off when absent).
//!
//! - `GET /metrics`: every metric of the process, OpenMetrics text (what
//!   Prometheus scrapes; `prometheus_client`'s encoding).
//! - `GET /health`: 200 while the ZooKeeper session is live, 503 otherwise,
//!   with a one-line body saying which. A service whose session is not live
//!   does nothing useful (no lock, no term, no task node), whatever its
//!   process looks like, so that is what a load balancer or an orchestrator
//!   should be told.
//!
//! Each service builds a [`Metrics`], registers its own handles in
//! [`Metrics::registry`] (one struct of them per service, passed to where
//! they are counted: no global statics), and calls [`Metrics::serve`] once
//! it has a ZooKeeper client. The metrics are counted whether or not they
//! are served: they cost an atomic add, and the code that counts them need
//! not know whether anyone scrapes.
//!
//! The metrics every service has ([`Common`]):
//!
//! | name | type | what |
//! |---|---|---|
//! | `zk_session_live` | gauge | 1 while the ZooKeeper session is live (connected, authenticated) |
//! | `zk_session_reconnects_total` | counter | connections re-established (same session or a new one) |
//! | `zk_session_expiries_total` | counter | sessions the server expired under us |
//! | `config_version` | gauge | the mzxid of the `/config/<service>` write in force (0: none read yet) |
//!
//! Labels, where a service has them, take values from a fixed set (an
//! outcome), never an id or an entity: a label value is a time series for
//! as long as the server keeps it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use zk_recipes::session::{Client, Session};
use zookeeper_async::ZkState;

pub use prometheus_client;

/// The registry of a process, with the metrics every service has.
pub struct Metrics {
    registry: Registry,
    pub common: Common,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let common = Common::register(&mut registry);
        Metrics { registry, common }
    }

    /// Where the service registers its own metrics (under a prefix of its
    /// name: `registry().sub_registry_with_prefix("system_a")`).
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Follows `client`'s session into the common metrics and, when
    /// `listen` is set, serves `/metrics` and `/health` there until `stop`.
    /// Binds before returning, so a port in use is a startup error naming
    /// the flag; prints `metrics listening on <addr>` once it serves (the
    /// address bound: port 0 in tests).
    pub async fn serve(
        self,
        listen: Option<SocketAddr>,
        client: &Client,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        self.common.follow(client);
        let Some(listen) = listen else { return Ok(()) };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("--metrics-listen / METRICS_LISTEN {listen}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Served { registry: self.registry, client: client.clone() });
        let app = Router::new().route("/metrics", get(metrics)).route("/health", get(health)).with_state(state);
        tracing::info!(%addr, "metrics listening");
        println!("metrics listening on {addr}");
        tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(e) = served {
                tracing::warn!("the metrics endpoint stopped: {e}");
            }
        });
        Ok(())
    }
}

struct Served {
    registry: Registry,
    client: Client,
}

async fn metrics(State(s): State<Arc<Served>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => {
            (StatusCode::OK, [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        }
        // Only a metric whose own encoding fails gets here (none of ours
        // can); a scrape error is what Prometheus should see then.
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "text/plain; charset=utf-8")], format!("{e}\n"))
        }
    }
}

async fn health(State(s): State<Arc<Served>>) -> impl IntoResponse {
    let (code, line) = health_of(*s.client.states().borrow());
    (code, [("content-type", "text/plain; charset=utf-8")], line)
}

/// The health answer for a session state.
pub fn health_of(session: Session) -> (StatusCode, &'static str) {
    match session {
        Session::Live => (StatusCode::OK, "ok: ZooKeeper session live\n"),
        Session::Suspended => (StatusCode::SERVICE_UNAVAILABLE, "unavailable: ZooKeeper connection lost (suspended)\n"),
        Session::Lost => (StatusCode::SERVICE_UNAVAILABLE, "unavailable: ZooKeeper session lost\n"),
    }
}

/// The metrics every service has; see the module docs. Clones share them.
#[derive(Clone, Default)]
pub struct Common {
    pub session_live: Gauge,
    pub reconnects: Counter,
    pub session_expiries: Counter,
    pub config_version: Gauge,
}

impl Common {
    fn register(r: &mut Registry) -> Common {
        let c = Common::default();
        r.register("zk_session_live", "1 while the ZooKeeper session is live, else 0", c.session_live.clone());
        r.register(
            "zk_session_reconnects",
            "ZooKeeper connections re-established, to the same session or a new one",
            c.reconnects.clone(),
        );
        r.register("zk_session_expiries", "ZooKeeper sessions the server expired", c.session_expiries.clone());
        r.register(
            "config_version",
            "The mzxid of the /config/<service> write this instance applied last (0: none yet)",
            c.config_version.clone(),
        );
        c
    }

    /// Counts `client`'s reconnects and expiries, and follows its session
    /// state into the gauge.
    ///
    /// The counters come from the client library's own listener, which
    /// hears every state change as it happens: the session `watch` keeps
    /// only the latest state, and a quick Lost → Live would go uncounted
    /// there. The gauge follows the `watch` instead, whose `Live` comes
    /// only once the connection is authenticated again.
    pub fn follow(&self, client: &Client) {
        let (reconnects, expiries) = (self.reconnects.clone(), self.session_expiries.clone());
        // The client may report its first Connected after `connect` has
        // returned: only one that follows a lost connection is a reconnect.
        let away = std::sync::atomic::AtomicBool::new(false);
        client.zk.add_listener(move |state| match state {
            ZkState::Connected | ZkState::ConnectedReadOnly => {
                if away.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    reconnects.inc();
                }
            }
            #[allow(deprecated)] // how zookeeper-async 5 reports an expired session
            ZkState::NotConnected => {
                away.store(true, std::sync::atomic::Ordering::SeqCst);
                expiries.inc();
            }
            _ => away.store(true, std::sync::atomic::Ordering::SeqCst),
        });
        let live = self.session_live.clone();
        let mut states = client.states();
        tokio::spawn(async move {
            loop {
                live.set(i64::from(*states.borrow_and_update() == Session::Live));
                if states.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A counter with one `outcome` label from a fixed set (tasks, Submits by
/// how they ended). Every series exists from the start: a rate over a
/// series that appears only at its first event misses that event.
#[derive(Clone, Debug, Default)]
pub struct ByOutcome(Family<[(&'static str, &'static str); 1], Counter>);

impl ByOutcome {
    pub fn new(outcomes: impl IntoIterator<Item = &'static str>) -> ByOutcome {
        let family = Family::default();
        for o in outcomes {
            let _ = family.get_or_create(&[("outcome", o)]);
        }
        ByOutcome(family)
    }

    pub fn inc(&self, outcome: &'static str) {
        self.0.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// What to register: the same series.
    pub fn family(&self) -> Family<[(&'static str, &'static str); 1], Counter> {
        self.0.clone()
    }
}

/// Where a service's time goes on its hot path: one histogram per named
/// stage (`stage` label from a fixed set), so the stages of a task can be
/// read side by side, on a dashboard or by `zkbench scenarios`, which
/// divides each `_sum` by its `_count` over a measured interval. Every
/// series exists from the start, as with [`ByOutcome`].
#[derive(Clone, Debug)]
pub struct Stages(StageFamily);

/// One histogram per `stage` label, each made with [`stage_buckets`].
pub type StageFamily = Family<[(&'static str, &'static str); 1], Histogram, fn() -> Histogram>;

impl Stages {
    pub fn new(stages: impl IntoIterator<Item = &'static str>) -> Stages {
        let family: StageFamily = Family::new_with_constructor(|| Histogram::new(stage_buckets()));
        for s in stages {
            let _ = family.get_or_create(&[("stage", s)]);
        }
        Stages(family)
    }

    /// `stage` took `took`.
    pub fn observe(&self, stage: &'static str, took: std::time::Duration) {
        self.0.get_or_create(&[("stage", stage)]).observe(took.as_secs_f64());
    }

    /// Runs `step`, timed as `stage`.
    pub async fn time<T>(&self, stage: &'static str, step: impl std::future::Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = step.await;
        self.observe(stage, started.elapsed());
        out
    }

    /// What to register: the same series.
    pub fn family(&self) -> StageFamily {
        self.0.clone()
    }
}

/// Buckets for one stage of a task, from 100 µs to about 3 s, doubling: a
/// stage on loopback is one round trip or one fsync (a fraction of a
/// millisecond), and up to seconds when it waits behind others.
pub fn stage_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16)
}

/// Buckets for durations from 5 ms to about 40 s, doubling: a task's or a
/// lock's time in this system spans milliseconds (loopback) to tens of
/// seconds (a session timeout, a broker outage).
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 14)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let m = Metrics::new();
        m.common.reconnects.inc();
        m.common.config_version.set(4294967321);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).expect("encode");
        for line in [
            "zk_session_live 0",
            "zk_session_reconnects_total 1",
            "zk_session_expiries_total 0",
            "config_version 4294967321",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn every_stage_is_exposed_from_the_start_and_sums_its_time() {
        let mut m = Metrics::new();
        let stages = Stages::new(["read", "write"]);
        m.registry().sub_registry_with_prefix("svc").register_with_unit(
            "stage",
            "Each step",
            prometheus_client::registry::Unit::Seconds,
            stages.family(),
        );
        stages.observe("write", std::time::Duration::from_millis(250));
        stages.observe("write", std::time::Duration::from_millis(500));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).expect("encode");
        for line in [
            "svc_stage_seconds_count{stage=\"read\"} 0",
            "svc_stage_seconds_sum{stage=\"write\"} 0.75",
            "svc_stage_seconds_count{stage=\"write\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn only_a_live_session_is_healthy() {
        assert_eq!(health_of(Session::Live).0, StatusCode::OK);
        assert_eq!(health_of(Session::Suspended).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(health_of(Session::Lost).0, StatusCode::SERVICE_UNAVAILABLE);
        for s in [Session::Live, Session::Suspended, Session::Lost] {
            let body = health_of(s).1;
            assert_eq!(body.lines().count(), 1, "{body:?}");
        }
    }
}
