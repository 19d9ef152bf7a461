//! The admin listener (`--admin-listen`): HTTP for operators and scrapers,
//! and the gRPC admin API ([`crate::grpc`]) on the same port; off unless
//! asked for.
//!
//! - `GET /commands/<word>`: any four-letter word's output, as ZooKeeper's
//!   AdminServer offers them (not subject to the client-port whitelist: this
//!   listener is opt-in and meant for loopback or a management network);
//! - `GET /metrics`: Prometheus text, named as ZooKeeper's Prometheus
//!   provider names the same numbers;
//! - `GET /health`: `ok` while the server runs;
//! - `POST /coordinator.admin.v1.Admin/<Method>` (HTTP/2): the gRPC admin
//!   API, with server reflection.
//!
//! # Two kinds of endpoint
//! Numbers about the server are open to whoever reaches the listener:
//! `/health`, `/metrics`, `ServerStats`, reflection, and the words that
//! print counts only (`ruok`, `srvr`, `mntr`, `conf`, `wchs`, `isro`).
//! Everything that reads znode data or paths, lists clients and sessions,
//! or changes state (`ListTree`, `ListSessions`, `ListWatches`,
//! `ExpireSession`, `CloseSession`, `CloseConnection`, `TriggerSnapshot`;
//! `stat`, `cons`, `dump`, `wchc`, `wchp`, `envi`) needs the bearer token
//! (`--admin-token-file`, or `COORDINATOR_ADMIN_TOKEN`): an
//! `authorization: Bearer <token>` header, which is gRPC metadata too.
//! Without it the answer is 401 (HTTP) or UNAUTHENTICATED (gRPC); with no
//! token configured those endpoints are off. ListTree would otherwise hand
//! out data that the nodes' ACLs refuse through the ZooKeeper protocol,
//! and ExpireSession would let anyone on the network end a lock holder's
//! session.

use std::fmt::Display;
use std::fmt::Write;
use std::sync::Arc;

use admin_api::admin_server::SERVICE_NAME;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::FourLetterWord;
use crate::core::Core;
use crate::fourlw;
use crate::grpc::Handle;
use crate::stats::{Snapshot, SummaryStats, QUANTILES};

/// The one gRPC method that reads numbers only.
const PUBLIC_RPCS: &[&str] = &["ServerStats"];

/// Whether a word prints numbers and settings only (open to anyone who
/// reaches the listener) rather than clients, sessions, paths or the
/// environment (token only). A match, so a new word must be decided on.
fn prints_numbers_only(word: FourLetterWord) -> bool {
    use FourLetterWord::*;
    match word {
        Ruok | Srvr | Mntr | Conf | Wchs | Isro => true,
        Stat | Cons | Dump | Wchc | Wchp | Envi => false,
    }
}

/// The Admin service's method a path calls, if it calls one.
fn rpc_method(path: &str) -> Option<&str> {
    path.strip_prefix('/')?.strip_prefix(SERVICE_NAME)?.strip_prefix('/')
}

/// Does this request need the token?
fn protected(path: &str) -> bool {
    if let Some(method) = rpc_method(path) {
        return !PUBLIC_RPCS.contains(&method);
    }
    // The router percent-decodes the segment (`/commands/%64ump` runs
    // `dump`): a word spelled with an escape needs the token whatever it
    // decodes to, so no spelling of a protected word gets past the check.
    if let Some(word) = path.strip_prefix("/commands/") {
        return match FourLetterWord::from_name(word) {
            Some(w) => !prints_numbers_only(w),
            None => word.contains('%'),
        };
    }
    false
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Lets a protected request through only with the token.
async fn gate(State(admin): State<Handle>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if !protected(&path) {
        return next.run(req).await;
    }
    let why = match (&admin.core().config.admin_token, bearer(req.headers())) {
        (Some(token), Some(given)) if token.matches(given) => return next.run(req).await,
        (Some(_), Some(_)) => "the admin token does not match",
        (Some(_), None) => "this endpoint needs the admin token (authorization: Bearer <token>)",
        (None, _) => {
            "no admin token is configured (--admin-token-file): endpoints that read data or change state are off"
        }
    };
    tracing::info!(path, "admin request refused: {why}");
    if rpc_method(&path).is_some() {
        return tonic::Status::unauthenticated(why).into_http::<axum::body::Body>();
    }
    (StatusCode::UNAUTHORIZED, [(axum::http::header::WWW_AUTHENTICATE, "Bearer")], format!("{why}\n")).into_response()
}

fn router(admin: Handle) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/commands/{word}", get(command))
        .with_state(admin.clone())
        .merge(crate::grpc::routes(admin.clone()))
        // The gRPC routes bring a catch-all answering "unimplemented" in
        // gRPC's terms; an HTTP client asking for an unknown page gets a
        // plain 404 instead (and a gRPC client maps 404 to UNIMPLEMENTED).
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn_with_state(admin, gate))
}

pub(crate) async fn serve(listener: TcpListener, core: Arc<Core>, token: CancellationToken) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving the admin API");
    let app = router(Handle::new(core));
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await {
        tracing::warn!("admin listener stopped: {e}");
    }
}

async fn command(State(admin): State<Handle>, Path(word): Path<String>) -> impl IntoResponse {
    let Some(word) = FourLetterWord::from_name(&word) else {
        return (StatusCode::NOT_FOUND, format!("unknown command {word:?}; known: {}\n", FourLetterWord::names()));
    };
    (StatusCode::OK, fourlw::run_unrestricted(admin.core(), word))
}

async fn metrics(State(admin): State<Handle>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], prometheus(&fourlw::snapshot(admin.core())))
}

/// Prometheus text exposition, named and typed as Apache ZooKeeper 3.8's
/// Prometheus metrics provider exports the same figures, so dashboards and
/// alerts written for ZooKeeper (its published Grafana dashboard among
/// them) read this server unchanged: the server's figures are gauges
/// (`znode_count`, `avg_latency`, `packets_received`, ...); `readlatency`,
/// `updatelatency`, `fsynctime` and `snapshottime` are summaries in
/// milliseconds. ZooKeeper's quantiles (0.5, and 0.9 and 0.99 for the
/// request latencies) are all there, with 0.95 and 0.999 beside them, and
/// are NaN while the window holds no sample, as Prometheus clients write
/// them. `last_zxid` and `queued_bytes` are the coordinator's own.
fn prometheus(s: &Snapshot) -> String {
    let mut out = Exposition(String::new());
    let l = s.latency;
    out.gauge("znode_count", "Znodes in the tree", s.znode_count);
    out.gauge("watch_count", "Watches armed", s.watch_count);
    out.gauge("ephemerals_count", "Ephemeral znodes", s.ephemerals_count);
    out.gauge("approximate_data_size", "Bytes of paths and data in the tree", s.approximate_data_size);
    out.gauge("global_sessions", "Open sessions", s.global_sessions);
    out.gauge("num_alive_connections", "Client connections", s.num_alive_connections);
    out.gauge(
        "outstanding_requests",
        "Requests received and not yet processed (a write until its txn is durable)",
        s.outstanding_requests,
    );
    out.gauge("packets_received", "Requests received since start", s.packets_received);
    out.gauge("packets_sent", "Replies and notifications sent since start", s.packets_sent);
    out.gauge("avg_latency", "Mean request latency since start, ms", l.avg_ms);
    out.gauge("min_latency", "Least request latency since start, ms", l.min_ms);
    out.gauge("max_latency", "Greatest request latency since start, ms", l.max_ms);
    out.gauge("uptime", "Milliseconds since the server started", s.uptime.as_millis());
    out.gauge("open_file_descriptor_count", "Open file descriptors", s.open_file_descriptor_count);
    let max_fds = s.max_file_descriptor_count.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    out.gauge("max_file_descriptor_count", "Open file descriptor limit (-1: unknown)", max_fds);
    out.gauge("last_zxid", "The last transaction applied", s.last_zxid);
    out.gauge("queued_bytes", "Bytes of replies queued on connections, not yet written", s.queued_bytes);
    out.summary("readlatency", "Latency of requests that log no transaction, ms", &s.read_latency);
    out.summary(
        "updatelatency",
        "Latency of requests that log a transaction, until their reply, ms",
        &s.update_latency,
    );
    out.summary("fsynctime", "Transaction log fsync time, ms", &s.fsync_time);
    out.summary("snapshottime", "Snapshot write time, ms", &s.snapshot_time);
    out.0
}

struct Exposition(String);

impl Exposition {
    fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n");
    }

    fn summary(&mut self, name: &str, help: &str, s: &SummaryStats) {
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} summary\n");
        for q in QUANTILES {
            let value = s.quantile(q).unwrap_or(f64::NAN);
            let _ = writeln!(self.0, "{name}{{quantile=\"{q}\"}} {value}");
        }
        let _ = write!(self.0, "{name}_count {}\n{name}_sum {}\n", s.count, s.sum_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_number_endpoints_are_open() {
        for open in
            ["/health", "/metrics", "/commands/mntr", "/commands/nope", "/coordinator.admin.v1.Admin/ServerStats"]
        {
            assert!(!protected(open), "{open}");
        }
        for closed in ["/commands/dump", "/commands/cons", "/commands/%64ump", "/coordinator.admin.v1.Admin/ListTree"] {
            assert!(protected(closed), "{closed}");
        }
    }

    /// The names, types and labels of ZooKeeper 3.8's Prometheus provider
    /// for the same figures, and text a Prometheus server parses.
    #[test]
    fn metrics_are_named_and_typed_as_zookeepers() {
        let text = prometheus(&crate::stats::tests::sample());
        let mut types = std::collections::HashMap::new();
        let mut samples = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').expect("# TYPE <name> <kind>");
                assert!(types.insert(name, kind).is_none(), "{name} typed twice");
            } else if !line.starts_with("# HELP ") {
                let (series, value) = line.rsplit_once(' ').expect("<series> <value>");
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}: not a number"));
                let base = series.split('{').next().expect("a name");
                let family = ["_count", "_sum"].iter().find_map(|x| base.strip_suffix(x)).unwrap_or(base);
                assert!(types.contains_key(base) || types.contains_key(family), "{series} has no # TYPE before it");
                samples.insert(series, value);
            }
        }
        for name in [
            "znode_count",
            "watch_count",
            "ephemerals_count",
            "approximate_data_size",
            "global_sessions",
            "num_alive_connections",
            "outstanding_requests",
            "packets_received",
            "packets_sent",
            "avg_latency",
            "min_latency",
            "max_latency",
            "uptime",
            "open_file_descriptor_count",
            "max_file_descriptor_count",
        ] {
            assert_eq!(types.get(name), Some(&"gauge"), "{name}");
        }
        for name in ["readlatency", "updatelatency", "fsynctime", "snapshottime"] {
            assert_eq!(types.get(name), Some(&"summary"), "{name}");
            for q in ["0.5", "0.9", "0.99"] {
                assert!(samples.contains_key(format!("{name}{{quantile=\"{q}\"}}").as_str()), "{name} p{q}");
            }
        }
        let value = |series: &str| *samples.get(series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert_eq!(value("znode_count"), 7.0);
        assert_eq!(value("outstanding_requests"), 4.0);
        assert_eq!(value("queued_bytes"), 4096.0);
        assert_eq!(value("max_file_descriptor_count"), -1.0);
        assert_eq!(value("uptime"), 4321.0);
        assert_eq!(value("avg_latency"), 1.4167);
        assert_eq!(value("readlatency_count"), 5.0);
        assert_eq!(value("readlatency_sum"), 6.0);
        // The median of 0.1, 0.2, 0.3, 0.4 and 5 ms, within a bucket.
        assert!((value("readlatency{quantile=\"0.5\"}") - 0.3).abs() < 0.3 / 16.0, "{text}");
        assert_eq!(value("updatelatency{quantile=\"0.99\"}"), 2.7);
        assert!(value("snapshottime{quantile=\"0.5\"}").is_nan(), "an empty window is NaN");
        assert_eq!(value("snapshottime_count"), 0.0);
    }
}
