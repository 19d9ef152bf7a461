//! Service registration: who is alive, with what metadata.
//!
//! Each instance is an ephemeral node `<dir>/<instance>`: it exists exactly
//! as long as the instance's session. When the session is lost the node
//! goes with it, and zookeeper-async opens a new session by itself; the
//! registration then has to be made again, which [`register`]'s background
//! task does on every return to a live session. A registration can also
//! carry live data ([`register_live`]): what the instance says about itself
//! now (the config it applied, the last write a fence refused), written into
//! the same node, so the registry is where anyone looks for both.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zookeeper_async::{Acl, CreateMode, ZkError};

use crate::retry::{self, RetryPolicy};
use crate::session::{Client, Session};

/// Keeps the registration alive; dropping it stops re-registering (the node
/// itself goes when the session ends; [`Registration::deregister`] removes
/// it at once).
pub struct Registration {
    client: Client,
    path: String,
    task: JoinHandle<()>,
    /// Stops the task between requests (see [`Registration::deregister`]).
    stop: CancellationToken,
    /// Keeps a fixed registration's data channel open (see [`register_with_acl`]).
    _fixed: Option<watch::Sender<Vec<u8>>>,
}

impl Registration {
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Leaves the registry now (graceful shutdown). Bounded: with the
    /// server unreachable the node goes when the session expires anyway,
    /// and a shutdown must not hang on it.
    ///
    /// The task that keeps the node current is stopped, not aborted: an
    /// update it has in flight is read to its answer first. Aborted, it
    /// left that answer to nobody, which the ZooKeeper client logs as an
    /// error at every stop that raced a status change.
    pub async fn deregister(mut self) {
        self.stop.cancel();
        let leave = async {
            let _ = (&mut self.task).await;
            let _ = self.client.zk.delete(&self.path, None).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), leave).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn put(client: &Client, path: &str, data: &[u8], acl: &[Acl]) -> Result<(), ZkError> {
    match client.zk.create(path, data.to_vec(), acl.to_vec(), CreateMode::Ephemeral).await {
        Ok(_) => Ok(()),
        // A node left by our own previous session (not yet expired) or by a
        // create whose reply we lost: replace it so it is ours and current.
        // (A delete that fails is returned: a lost connection makes the
        // whole `put` retried, never a `NodeExists` the caller cannot act on.)
        Err(ZkError::NodeExists) => {
            match client.zk.delete(path, None).await {
                Ok(()) | Err(ZkError::NoNode) => {}
                Err(e) => return Err(e),
            }
            client.zk.create(path, data.to_vec(), acl.to_vec(), CreateMode::Ephemeral).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Makes the node say `data`: a setData, or a create when the node went
/// with an old session.
async fn sync(client: &Client, path: &str, data: &[u8], acl: &[Acl]) -> Result<(), ZkError> {
    match client.zk.set_data(path, data.to_vec(), None).await {
        Ok(_) => Ok(()),
        Err(ZkError::NoNode) => put(client, path, data, acl).await,
        Err(e) => Err(e),
    }
}

/// Registers `instance` under `dir` with `data` and keeps it registered
/// across new sessions; the node (and `dir`, if missing) is open to anyone.
pub async fn register(client: &Client, dir: &str, instance: &str, data: &[u8]) -> Result<Registration, ZkError> {
    register_with_acl(client, dir, instance, data, Acl::open_unsafe()).await
}

/// [`register`] with the ACL to give the instance's node and, when it is
/// missing, `dir`: typically everyone may read, only this service's
/// identity may write or delete.
pub async fn register_with_acl(
    client: &Client,
    dir: &str,
    instance: &str,
    data: &[u8],
    acl: &[Acl],
) -> Result<Registration, ZkError> {
    let (tx, rx) = watch::channel(data.to_vec());
    let mut registration = register_live(client, dir, instance, rx, acl).await?;
    registration._fixed = Some(tx);
    Ok(registration)
}

/// A registration whose data follows `data`: every new value is written
/// into the node (the instance's live status, which anyone watching the
/// registry sees), and the node is made again with the latest value after
/// a new session.
///
/// The first registration is retried through connection loss for up to
/// [`REGISTER_PATIENCE`] (a service starting during an ensemble's election
/// should start, a little later, not exit): `put` is safe to repeat, since
/// it replaces whatever node it finds under our name.
pub async fn register_live(
    client: &Client,
    dir: &str,
    instance: &str,
    mut data: watch::Receiver<Vec<u8>>,
    acl: &[Acl],
) -> Result<Registration, ZkError> {
    let deadline = tokio::time::Instant::now() + REGISTER_PATIENCE;
    retry::ensure_path(&client.zk, dir, acl, deadline).await?;
    let path = crate::join(dir, instance);
    let first = data.borrow_and_update().clone();
    retry::retry(&RetryPolicy::default(), deadline, |_| put(client, &path, &first, acl)).await?;
    let (c, p, acl) = (client.clone(), path.clone(), acl.to_vec());
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let mut states = c.states();
        // The node was just made on the live session: only a change from
        // here on is news.
        states.borrow_and_update();
        let mut data_open = true;
        loop {
            tokio::select! {
                // Between requests: the one place the task stops.
                _ = stopped.cancelled() => return,
                changed = states.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *states.borrow_and_update() != Session::Live {
                        continue;
                    }
                    // Live again: after a mere reconnect the node is still
                    // there (a write it missed is made now); after a new
                    // session it is gone and must be made again.
                }
                changed = data.changed(), if data_open => {
                    if changed.is_err() {
                        data_open = false;
                        continue;
                    }
                }
            }
            // Until the node says the latest data, or the session drops
            // (the next Live brings us back here).
            loop {
                let latest = data.borrow_and_update().clone();
                match sync(&c, &p, &latest, &acl).await {
                    Ok(()) => break,
                    Err(e) => tracing::debug!(path = p, "registry update: {e:?}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stopped.cancelled() => return,
                }
                if !c.is_live() {
                    break;
                }
            }
        }
    });
    Ok(Registration { client: client.clone(), path, task, stop, _fixed: None })
}

/// How long [`register`] keeps trying through connection loss.
pub const REGISTER_PATIENCE: Duration = Duration::from_secs(30);

/// The instances registered under `dir`, with their data, sorted by name.
/// Reads only: retried through connection loss for up to 10 s.
pub async fn members(client: &Client, dir: &str) -> Result<Vec<(String, Vec<u8>)>, ZkError> {
    retry::retry_for(Duration::from_secs(10), |_| members_once(client, dir)).await
}

async fn members_once(client: &Client, dir: &str) -> Result<Vec<(String, Vec<u8>)>, ZkError> {
    let mut names = match client.zk.get_children(dir, false).await {
        Ok(n) => n,
        Err(ZkError::NoNode) => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    names.sort();
    let mut out = Vec::new();
    for n in names {
        match client.zk.get_data(&crate::join(dir, &n), false).await {
            Ok((data, _)) => out.push((n, data)),
            Err(ZkError::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
