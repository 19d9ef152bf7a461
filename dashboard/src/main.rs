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
//! - [`history`]: what changed between consecutive snapshots (grants,
//!   terms and gaps, finished tasks, config reaching instances, fencing
//!   refusals, instances and sessions coming and going), kept for the last
//!   ten minutes, bounded.
//! - this file: flags, the refresher task, and the HTTP routes: `/` (the
//!   page), `/api/state` (the latest snapshot), `/api/history` (the kept
//!   events), `/events` (Server-Sent Events: `state`, one per change;
//!   `history`, the kept events, once per connection; then `timeline`, the
//!   events added since, one per refresh that found any).
//!
//! # Why watches *and* polling
//! Watches make the page move the moment something changes. They are not
//! enough on their own: they fire once and must be re-armed, a change
//! between the event and the re-read is seen only by the re-read, and
//! zookeeper-async does not re-register watches after a reconnect. So every
//! fired watch triggers a refresh, and a modest poll (`--refresh-ms`) bounds
//! how stale the page can be whatever happens to the watches.

mod history;
mod sessions;
mod snapshot;

use std::collections::{HashSet, VecDeque};
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
    history: Arc<Mutex<history::History>>,
    /// The history's newest sequence number: a change wakes the streams.
    history_seq: watch::Receiver<u64>,
}

/// The history, even if a panic elsewhere poisoned its lock: it holds
/// plain data, and a page without a timeline helps nobody.
fn lock(h: &Mutex<history::History>) -> std::sync::MutexGuard<'_, history::History> {
    h.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    servicekit::telemetry::init(env!("CARGO_BIN_NAME"), args.log_json);
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
    let history = Arc::new(Mutex::new(history::History::new()));
    let (seq_tx, seq_rx) = watch::channel(0u64);
    let every = Duration::from_millis(args.refresh_ms);
    let published = Published { snapshot: tx, history: history.clone(), history_seq: seq_tx };
    tokio::spawn(refresher(zk.clone(), layout, sessions, armed, changed, published, every));

    let app = Router::new()
        .route("/", get(|| async { Html(include_str!("page.html")) }))
        .route("/api/state", get(state))
        .route("/api/history", get(history_doc))
        .route("/events", get(events))
        .with_state(AppState { snapshot: rx, history, history_seq: seq_rx });
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

/// Where the refresher puts what it finds.
struct Published {
    snapshot: watch::Sender<Arc<String>>,
    history: Arc<Mutex<history::History>>,
    history_seq: watch::Sender<u64>,
}

/// Rebuilds the snapshot whenever a watch fires (or the connection state
/// changes), and at least every `every`; publishes it only when it changed,
/// and what changed since the last one into the history.
async fn refresher(
    zk: Arc<ZooKeeper>,
    layout: servicekit::layout::Layout,
    mut sessions: sessions::Sessions,
    armed: Arc<Armed>,
    changed: Arc<Notify>,
    out: Published,
    every: Duration,
) {
    let mut reported = HashSet::new();
    loop {
        match snapshot::build(&zk, &layout, &armed, &changed).await {
            Ok(snapshot::Snapshot { mut doc, mut now }) => {
                // Each refusal once, as the one line the page shows too.
                if let Some(list) = doc["denied"].as_array() {
                    for line in list.iter().filter_map(|l| l.as_str()) {
                        if reported.insert(line.to_string()) {
                            tracing::warn!("{line}");
                        }
                    }
                }
                doc["sessions"] = sessions.fetch().await;
                now.set_sessions(&doc["sessions"]);
                let text = doc.to_string();
                if **out.snapshot.borrow() != text {
                    out.snapshot.send_replace(Arc::new(text));
                }
                // Only a snapshot read whole is diffed: a failed walk (the
                // arm below) would read as everything vanishing.
                let last = {
                    let mut h = lock(&out.history);
                    h.observe(now, history::now_ms());
                    h.last_seq()
                };
                out.history_seq.send_if_modified(|seq| std::mem::replace(seq, last) != last);
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

async fn history_doc(State(app): State<AppState>) -> impl IntoResponse {
    let body = lock(&app.history).doc(history::now_ms()).to_string();
    ([("content-type", "application/json"), ("cache-control", "no-store")], body)
}

/// One connection's place in the two feeds.
struct Feed {
    app: AppState,
    /// The newest history event this connection was sent; `None` before
    /// the first (whole) history.
    sent: Option<u64>,
    queue: VecDeque<Event>,
}

/// SSE: the current snapshot (`state`) and the whole history (`history`)
/// first; then a `state` per published snapshot and a `timeline` with the
/// events added since the last one sent. Events go as deltas because the
/// history is up to [`history::MAX_EVENTS`] long and a busy system adds to
/// it on most refreshes.
async fn events(State(app): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let feed = Feed { app, sent: None, queue: VecDeque::new() };
    let stream = futures::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.queue.pop_front() {
                return Some((Ok(e), f));
            }
            let Some(sent) = f.sent else {
                let state = f.app.snapshot.borrow_and_update().as_str().to_string();
                f.app.history_seq.borrow_and_update();
                let (doc, last) = {
                    let h = lock(&f.app.history);
                    (h.doc(history::now_ms()), h.last_seq())
                };
                f.queue.push_back(Event::default().event("state").data(state));
                f.queue.push_back(Event::default().event("history").data(doc.to_string()));
                f.sent = Some(last);
                continue;
            };
            tokio::select! {
                r = f.app.snapshot.changed() => {
                    r.ok()?;
                    let state = f.app.snapshot.borrow_and_update().as_str().to_string();
                    f.queue.push_back(Event::default().event("state").data(state));
                }
                r = f.app.history_seq.changed() => {
                    r.ok()?;
                    f.app.history_seq.borrow_and_update();
                    let (doc, last) = lock(&f.app.history).since(sent, history::now_ms());
                    f.sent = Some(last);
                    if doc["events"].as_array().is_some_and(|e| !e.is_empty()) {
                        f.queue.push_back(Event::default().event("timeline").data(doc.to_string()));
                    }
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
