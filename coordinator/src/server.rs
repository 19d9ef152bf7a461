//! The accept loop and the server's background duties.
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

use zk_wire::ErrorCode;

use crate::committer::Proposal;
use crate::config::Config;
use crate::conn;
use crate::core::Core;
use crate::tree::TxnResult;
use crate::txn::{NodeKind, Txn};

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
        let wait = crate::ops::session::until_next_step(&core);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = token.cancelled() => return,
        }
        crate::ops::session::expire_sessions(&core);
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

async fn reap(core: Arc<Core>, token: CancellationToken) {
    let mut interval = tokio::time::interval(core.config.container_check_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = token.cancelled() => return,
        }
        reap_once(&core);
    }
}

/// Deletes empty containers that have had children, and TTL nodes that are
/// childless and unmodified for longer than their TTL. Each deletion is a
/// txn like a client's, checked again under the write lock (a child may
/// have arrived since the candidates were listed). Returns how many went.
fn reap_once(core: &Core) -> usize {
    let now = crate::committer::wall_ms();
    let candidates: Vec<String> = core.with_tree(|tree| {
        let containers =
            tree.containers().filter(|p| tree.get(p).is_some_and(|n| n.stat.cversion > 0 && n.num_children() == 0));
        let ttls = tree.ttls().filter(|p| {
            tree.get(p).is_some_and(
                |n| matches!(n.kind(), NodeKind::Ttl(ttl) if n.num_children() == 0 && now - n.stat.mtime > ttl),
            )
        });
        containers.chain(ttls).cloned().collect()
    });
    let mut reaped = 0;
    for path in candidates {
        let done = core.commit(
            Proposal::server(0, 0),
            |t, ctx| {
                let still = t.get(&path).is_some_and(|n| {
                    n.num_children() == 0
                        && match n.kind() {
                            NodeKind::Container => n.stat.cversion > 0,
                            NodeKind::Ttl(ttl) => ctx.time - n.stat.mtime > ttl,
                            _ => false,
                        }
                });
                if still {
                    Txn::Delete { path: path.clone() }
                } else {
                    Txn::Error(ErrorCode::NotEmpty)
                }
            },
            |_, r| matches!(r, TxnResult::Deleted),
        );
        if done {
            tracing::debug!(path, "reaped");
            reaped += 1;
        }
    }
    reaped
}
