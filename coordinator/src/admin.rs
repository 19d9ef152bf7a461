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

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::FOUR_LETTER_WORDS;
use crate::core::Core;
use crate::fourlw;

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/commands/{word}", get(command))
        .with_state(core.clone())
        .merge(crate::grpc::routes(core))
        // The gRPC routes bring a catch-all answering "unimplemented" in
        // gRPC's terms; an HTTP client asking for an unknown page gets a
        // plain 404 instead (and a gRPC client maps 404 to UNIMPLEMENTED).
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
}

pub async fn serve(listener: TcpListener, core: Arc<Core>, token: CancellationToken) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving the admin API");
    let app = router(core);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await {
        tracing::warn!("admin listener stopped: {e}");
    }
}

async fn command(State(core): State<Arc<Core>>, Path(word): Path<String>) -> impl IntoResponse {
    if !FOUR_LETTER_WORDS.contains(&word.as_str()) {
        return (StatusCode::NOT_FOUND, format!("unknown command {word:?}; known: {}\n", FOUR_LETTER_WORDS.join(",")));
    }
    (StatusCode::OK, fourlw::run_unrestricted(&core, &word))
}

async fn metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    let mut out = String::new();
    for (key, value) in fourlw::mntr_values(&core) {
        // Only numbers are metrics; zk_version and zk_server_state are not.
        if value.parse::<f64>().is_err() {
            continue;
        }
        let name = key.trim_start_matches("zk_");
        out.push_str(&format!("# TYPE {name} gauge\n{name} {value}\n"));
    }
    ([("content-type", "text/plain; version=0.0.4")], out)
}
