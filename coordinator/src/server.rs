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

use crate::config::Config;
use crate::conn;
use crate::core::Core;
use crate::tree::DataTree;

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
    if core.storage.is_some() {
        tasks.spawn(snapshots(core.clone(), token.clone()));
    }
    let log_failed = match &core.storage {
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
        let Some(storage) = &core.storage else { return };
        let size = core.with_tree(DataTree::snapshot_size_estimate);
        if !storage.snapshot_due(core.config.snap_count, size) {
            continue;
        }
        if let Err(e) = snapshot_now(&core).await {
            tracing::error!("snapshot failed: {e:#}");
        }
    }
}

/// Writes a snapshot of the tree now; returns the zxid it covers, or `None`
/// when the server keeps no data dir.
pub async fn snapshot_now(core: &Arc<Core>) -> anyhow::Result<Option<i64>> {
    if core.storage.is_none() {
        return Ok(None);
    }
    let _one_at_a_time = core.snapshotting.lock().await;
    let started = std::time::Instant::now();
    let Some(header) = core.with_tree_mut(|t| core.storage.as_ref().map(|s| s.begin_snapshot(t))) else {
        return Ok(None);
    };
    let core2 = core.clone();
    let written = tokio::task::spawn_blocking(move || {
        let storage = core2.storage.as_ref().ok_or_else(|| anyhow::anyhow!("the server keeps no data dir"))?;
        // Each chunk holds the write lock for about a millisecond; writes
        // go on between chunks (the tree keeps what they overwrite until
        // the snapshot has passed it). The longest hold is the figure to
        // watch if write tail latency grows with the tree.
        let (mut chunks, mut locked, mut longest) = (0u32, Duration::ZERO, Duration::ZERO);
        let result = storage.write_snapshot(header, |buf| {
            let t = std::time::Instant::now();
            let progress = core2.with_tree_mut(|tree| tree.snapshot_chunk(buf, crate::storage::SNAPSHOT_CHUNK));
            let held = t.elapsed();
            (chunks, locked, longest) = (chunks + 1, locked + held, longest.max(held));
            progress
        });
        if result.is_err() {
            core2.with_tree_mut(|tree| tree.abort_snapshot());
        }
        let zxid = result.map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok((zxid, chunks, locked, longest))
    })
    .await
    .map_err(|e| anyhow::anyhow!("the snapshot task failed: {e}"))?;
    let (zxid, chunks, locked, longest) = written?;
    tracing::info!(
        zxid = format!("{zxid:#x}"),
        chunks,
        tree_locked_ms = locked.as_millis() as u64,
        longest_hold_us = longest.as_micros() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "snapshot taken"
    );
    Ok(Some(zxid))
}

/// Expires idle sessions at each step boundary (deadlines are rounded up to
/// steps, so one pass per step is exact; see `session`).
async fn expire_sessions(core: Arc<Core>, token: CancellationToken) {
    loop {
        let wait = core.until_next_step();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = token.cancelled() => return,
        }
        core.expire_sessions();
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
        core.reap();
    }
}
