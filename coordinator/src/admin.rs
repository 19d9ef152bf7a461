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

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha1::{Digest, Sha1};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::FOUR_LETTER_WORDS;
use crate::core::Core;
use crate::fourlw;

/// The admin bearer token. Its `Debug` never shows it: the server's
/// settings are logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token must be long enough that guessing it over the network is
    /// hopeless; `openssl rand -hex 32` gives 64 characters.
    pub const MIN_LEN: usize = 16;

    pub fn new(token: &str) -> Result<Token, String> {
        let token = token.trim();
        if token.len() < Self::MIN_LEN {
            return Err(format!("the admin token must be at least {} characters", Self::MIN_LEN));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the admin token must be printable ASCII without spaces".into());
        }
        Ok(Token(token.to_string()))
    }

    /// Whether `given` is the token, in time that does not depend on where
    /// they differ: both are hashed to 20 bytes and every byte compared,
    /// so neither the length nor a common prefix shows in the timing.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (Sha1::digest(self.0.as_bytes()), Sha1::digest(given.as_bytes()));
        a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Four-letter words that print numbers and settings only.
const PUBLIC_WORDS: &[&str] = &["ruok", "srvr", "mntr", "conf", "wchs", "isro"];
/// The one gRPC method that reads numbers only.
const PUBLIC_RPCS: &[&str] = &["ServerStats"];

/// Does this request need the token?
fn protected(path: &str) -> bool {
    if let Some(method) = path.strip_prefix("/coordinator.admin.v1.Admin/") {
        return !PUBLIC_RPCS.contains(&method);
    }
    // The router percent-decodes the segment (`/commands/%64ump` runs
    // `dump`): a word spelled with an escape needs the token whatever it
    // decodes to, so no spelling of a protected word gets past the check.
    if let Some(word) = path.strip_prefix("/commands/") {
        return !PUBLIC_WORDS.contains(&word) && (FOUR_LETTER_WORDS.contains(&word) || word.contains('%'));
    }
    false
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Lets a protected request through only with the token.
async fn gate(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if !protected(&path) {
        return next.run(req).await;
    }
    let why = match (&core.config.admin_token, bearer(req.headers())) {
        (Some(token), Some(given)) if token.matches(given) => return next.run(req).await,
        (Some(_), Some(_)) => "the admin token does not match",
        (Some(_), None) => "this endpoint needs the admin token (authorization: Bearer <token>)",
        (None, _) => {
            "no admin token is configured (--admin-token-file): endpoints that read data or change state are off"
        }
    };
    tracing::info!(path, "admin request refused: {why}");
    if path.starts_with("/coordinator.admin.v1.Admin/") {
        return tonic::Status::unauthenticated(why).into_http::<axum::body::Body>();
    }
    (StatusCode::UNAUTHORIZED, [(axum::http::header::WWW_AUTHENTICATE, "Bearer")], format!("{why}\n")).into_response()
}

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/commands/{word}", get(command))
        .with_state(core.clone())
        .merge(crate::grpc::routes(core.clone()))
        // The gRPC routes bring a catch-all answering "unimplemented" in
        // gRPC's terms; an HTTP client asking for an unknown page gets a
        // plain 404 instead (and a gRPC client maps 404 to UNIMPLEMENTED).
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn_with_state(core, gate))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_number_endpoints_are_open() {
        for open in ["/health", "/metrics", "/commands/mntr", "/coordinator.admin.v1.Admin/ServerStats"] {
            assert!(!protected(open), "{open}");
        }
        for closed in ["/commands/dump", "/commands/cons", "/commands/%64ump", "/coordinator.admin.v1.Admin/ListTree"] {
            assert!(protected(closed), "{closed}");
        }
    }

    #[test]
    fn token_compares_whole() {
        let t = Token::new("0123456789abcdef-secret").expect("token");
        assert!(t.matches("0123456789abcdef-secret"));
        assert!(!t.matches("0123456789abcdef-secreT"));
        assert!(!t.matches("0123456789abcdef-secret0"));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains("secret"));
        assert!(Token::new("short").is_err());
    }
}
