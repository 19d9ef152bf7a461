//! `dashboard`: a live web page of what the scenarios are doing.
//!
//! Everything it shows is read through the ZooKeeper protocol, so it works
//! the same against the coordinator and against an Apache ZooKeeper
//! ensemble.
//!
//! # Layout
//! - [`snapshot`]: walks the tree and derives the views (lock queues, HA
//!   groups, tasks, services, config) into one JSON document. Where each
//!   lives is asked of `servicekit::layout::Layout`, as the services do.
//! - [`sessions`]: the server's sessions, from the coordinator's admin API
//!   (`--admin`) or the `cons` four-letter word.
//! - this file: flags, the refresher task, and the HTTP routes: `/` (the
//!   page), `/api/state` (the latest snapshot), `/events` (Server-Sent
//!   Events, one per change).
//!
//! # Why watches *and* polling
//! Watches make the page move the moment something changes. They are not
//! enough on their own: they fire once and must be re-armed, a change
//! between the event and the re-read is seen only by the re-read, and
//! zookeeper-async does not re-register watches after a reconnect. So every
//! fired watch triggers a refresh, and a modest poll (`--refresh-ms`) bounds
//! how stale the page can be whatever happens to the watches.

mod sessions;
mod snapshot;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use futures::Stream;
use tokio::sync::{watch, Notify};
use zookeeper_async::ZooKeeper;

#[derive(Parser, Debug)]
#[command(name = "dashboard", version, about = "Live web view of locks, leaders, tasks, services and config")]
struct Args {
    /// ZooKeeper connect string (the coordinator or an ensemble).
    #[arg(long, env = "ZK_CONNECT", default_value = "127.0.0.1:2181")]
    zk: String,
    /// Where to serve the page.
    #[arg(long, env = "DASHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Path prefix under which the services keep their znodes ("" = /).
    #[arg(long, env = "DASHBOARD_ROOT", default_value = "")]
    root: String,
    /// The coordinator's admin address (its --admin-listen), for the session
    /// list; without it, sessions come from the `cons` four-letter word.
    #[arg(long, env = "DASHBOARD_ADMIN", value_name = "HOST:PORT")]
    admin: Option<String>,
    /// File with the admin API's bearer token (else DASHBOARD_ADMIN_TOKEN),
    /// for the session list, which the coordinator gives to token holders only.
    #[arg(long, env = "DASHBOARD_ADMIN_TOKEN_FILE", value_name = "PATH")]
    admin_token_file: Option<std::path::PathBuf>,
    /// The dashboard's read-only ZooKeeper identity.
    #[command(flatten)]
    auth: servicekit::auth::AuthArgs,
    /// Longest time between two refreshes, whatever the watches do.
    #[arg(long, env = "DASHBOARD_REFRESH_MS", default_value_t = 1000)]
    refresh_ms: u64,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

/// Paths that have a watch armed; a path is armed again only after its
/// watch fired, so an unchanging node does not pile up client-side
/// callbacks on every refresh.
#[derive(Default)]
pub struct Armed {
    pub data: Mutex<HashSet<String>>,
    pub children: Mutex<HashSet<String>>,
    /// This refresh's refusals, as one line each ("not allowed: ...").
    pub denied: Mutex<std::collections::BTreeSet<String>>,
}

impl Armed {
    fn forget(&self) {
        if let Ok(mut s) = self.data.lock() {
            s.clear();
        }
        if let Ok(mut s) = self.children.lock() {
            s.clear();
        }
    }
}

#[derive(Clone)]
struct AppState {
    snapshot: watch::Receiver<Arc<String>>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    servicekit::telemetry::init(args.log_json);
    if let Err(e) = run(args).await {
        eprintln!("dashboard: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let layout = servicekit::layout::Layout::new(&args.root);
    let zk =
        tokio::time::timeout(Duration::from_secs(10), ZooKeeper::connect(&args.zk, Duration::from_secs(10), |_| {}))
            .await
            .with_context(|| format!("no ZooKeeper server answered at {} (--zk) within 10 s", args.zk))?
            .with_context(|| format!("cannot connect to {} (--zk)", args.zk))?;
    let auth = args.auth.load()?;
    if auth.credentials.is_none() {
        tracing::warn!("no ZooKeeper credentials (--zk-credentials-file): reading anonymously");
    }
    let zk = Arc::new(zk);
    let packets = auth.auth_packets();
    for (scheme, credentials) in &packets {
        zk.add_auth(scheme, credentials.clone()).await.map_err(|e| anyhow::anyhow!("authentication: {e:?}"))?;
    }
    let changed = Arc::new(Notify::new());
    let armed = Arc::new(Armed::default());
    {
        // After a reconnect no watch is armed any more: forget them all and
        // refresh, which arms them again. The new connection is anonymous
        // (a server keeps auth per connection): authenticate it again
        // first. Weak: the listener lives in the client it would keep alive.
        let (changed, armed, weak) = (changed.clone(), armed.clone(), Arc::downgrade(&zk));
        zk.add_listener(move |state| {
            armed.forget();
            if state == zookeeper_async::ZkState::Connected && !packets.is_empty() {
                let (zk, packets, changed) = (weak.clone(), packets.clone(), changed.clone());
                tokio::spawn(async move {
                    if let Some(zk) = zk.upgrade() {
                        for (scheme, credentials) in packets {
                            if let Err(e) = zk.add_auth(scheme, credentials).await {
                                tracing::warn!("re-authentication after a reconnect failed: {e:?}");
                            }
                        }
                    }
                    changed.notify_one();
                });
            } else {
                changed.notify_one();
            }
        });
    }

    let token = match &args.admin_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {} (--admin-token-file)", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("DASHBOARD_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    let sessions = sessions::Sessions::new(args.admin.as_deref(), &args.zk, token)?;
    let (tx, rx) = watch::channel(Arc::new("{}".to_string()));
    let every = Duration::from_millis(args.refresh_ms);
    tokio::spawn(refresher(zk.clone(), layout, sessions, armed, changed, tx, every));

    let app = Router::new()
        .route("/", get(|| async { Html(include_str!("page.html")) }))
        .route("/api/state", get(state))
        .route("/events", get(events))
        .with_state(AppState { snapshot: rx });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    println!("dashboard listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(servicekit::shutdown_token().cancelled_owned())
        .await
        .context("serving HTTP")?;
    Ok(())
}

/// Rebuilds the snapshot whenever a watch fires (or the connection state
/// changes), and at least every `every`; publishes it only when it changed.
async fn refresher(
    zk: Arc<ZooKeeper>,
    layout: servicekit::layout::Layout,
    mut sessions: sessions::Sessions,
    armed: Arc<Armed>,
    changed: Arc<Notify>,
    tx: watch::Sender<Arc<String>>,
    every: Duration,
) {
    let mut reported = HashSet::new();
    loop {
        match snapshot::build(&zk, &layout, &armed, &changed).await {
            Ok(mut doc) => {
                // Each refusal once, as the one line the page shows too.
                if let Some(list) = doc["denied"].as_array() {
                    for line in list.iter().filter_map(|l| l.as_str()) {
                        if reported.insert(line.to_string()) {
                            tracing::warn!("{line}");
                        }
                    }
                }
                doc["sessions"] = sessions.fetch().await;
                let text = doc.to_string();
                if **tx.borrow() != text {
                    tx.send_replace(Arc::new(text));
                }
            }
            Err(e) => {
                // Connection loss: keep showing the last state; the next
                // refresh (after reconnect) re-arms everything.
                tracing::warn!("cannot read the tree: {e:?}");
                armed.forget();
            }
        }
        tokio::select! {
            _ = changed.notified() => {
                // Let a burst of changes (a lock handed over, a task
                // finishing) settle into one refresh.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn state(State(app): State<AppState>) -> impl IntoResponse {
    let body = app.snapshot.borrow().as_str().to_string();
    ([("content-type", "application/json"), ("cache-control", "no-store")], body)
}

/// One SSE event per published snapshot, starting with the current one.
async fn events(State(app): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((app.snapshot, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let data = rx.borrow_and_update().as_str().to_string();
        Some((Ok(Event::default().event("state").data(data)), (rx, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
