//! The accept loop and the server's background duties.
//!
//! The duties' timers live here, beside the shutdown they stop with; what
//! each pass does lives with the rest of what the server does
//! ([`ops::expiry`](crate::ops::expiry) for expiry and reaping).
//!
//! Shutdown is one [`CancellationToken`]: the accept loop stops, every
//! connection's reader sees it and closes, and [`run`] returns once all
//! connection tasks have finished (tracked by a `TaskTracker`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::conn;
use crate::core::Core;

/// Serves ZooKeeper clients on `listener` until `shutdown` completes, then
/// closes every connection and returns.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let core = Arc::new(Core::open(config)?);
    serve(listener, core, shutdown).await
}

/// As [`run`], on a [`Core`] the caller holds (tests and the admin API
/// inspect it).
pub async fn serve(listener: TcpListener, core: Arc<Core>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    tracing::info!(addr = %listener.local_addr()?, "serving ZooKeeper clients");

    if let Some(addr) = core.config.admin_listen {
        let admin = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--admin-listen): {e}"))?;
        // Like the client port's line, this one is for scripts and tests that
        // start the server with port 0 and must learn where it listens.
        println!("coordinator admin listening on {}", admin.local_addr()?);
        tasks.spawn(crate::admin::serve(admin, core.clone(), token.clone()));
    }
    tasks.spawn(expire_sessions(core.clone(), token.clone()));
    tasks.spawn(reap(core.clone(), token.clone()));
    tasks.spawn(shed_unread(core.clone(), token.clone()));
    if core.storage().is_some() {
        tasks.spawn(snapshots(core.clone(), token.clone()));
    }
    let log_failed = match core.storage() {
        Some(s) => s.failed.clone(),
        None => CancellationToken::new(),
    };

    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(5);
                    tasks.spawn(conn::serve(core.clone(), stream, token.clone()));
                }
                Err(e) => {
                    // Running out of file descriptors is the usual cause:
                    // back off rather than spin, and let connections close.
                    tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            _ = &mut shutdown => break,
            _ = log_failed.cancelled() => {
                token.cancel();
                tasks.close();
                tasks.wait().await;
                anyhow::bail!("the transaction log failed (see the error above); stopped so that no acknowledged write can be lost");
            }
        }
    }
    tracing::info!("shutting down: closing connections");
    drop(listener);
    token.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Takes a snapshot once it is due (see `Storage::snapshot_due`), so
/// recovery replays a bounded log and old segments can go.
async fn snapshots(core: Arc<Core>, token: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = token.cancelled() => return,
        }
        if !core.snapshot_due() {
            continue;
        }
        if let Err(e) = core.snapshot_now().await {
            tracing::error!("snapshot failed: {e:#}");
        }
    }
}

/// Expires idle sessions at each step boundary (deadlines are rounded up to
/// steps, so one pass per step is exact; see `session`).
async fn expire_sessions(core: Arc<Core>, token: CancellationToken) {
    loop {
        let wait = crate::ops::expiry::until_next_step(&core);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = token.cancelled() => return,
        }
        crate::ops::expiry::expire_sessions(&core);
    }
}

/// Keeps the replies nobody reads within `global_queued_bytes_limit`: once
/// the server is over it, closes the connections that stopped reading,
/// largest first (see `Registry::shed_unread`), checking again while it
/// stays over, since a connection counts as not reading only once its
/// writer has waited long enough.
async fn shed_unread(core: Arc<Core>, token: CancellationToken) {
    let totals = core.conns.totals.clone();
    loop {
        tokio::select! {
            _ = totals.over_budget.notified() => {}
            _ = token.cancelled() => return,
        }
        while totals.over_budget() {
            core.conns.shed_unread();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = token.cancelled() => return,
            }
        }
    }
}

/// Deletes empty containers and stale TTL nodes every
/// `container_check_interval` (see `ops::expiry::reap_once`).
async fn reap(core: Arc<Core>, token: CancellationToken) {
    let mut interval = tokio::time::interval(core.config.container_check_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = token.cancelled() => return,
        }
        crate::ops::expiry::reap_once(&core);
    }
}
