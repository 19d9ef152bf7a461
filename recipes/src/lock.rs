//! A fenced distributed lock.
//!
//! Holding a ZooKeeper lock means "my node is first in line *and my session
//! is alive*". The second half can stop being true without the holder
//! knowing: a process paused by GC or SIGSTOP past its session timeout
//! still believes it holds the lock when it wakes, while the server has
//! already handed it to someone else. Two defences, both here:
//!
//! - [`LockGuard::lost`] turns `true` as soon as the connection drops
//!   (SUSPENDED), before the session can expire on the server: a holder
//!   that watches it stops in time whenever it is *able* to notice.
//! - [`LockGuard::token`] is a fencing token (the lock node's czxid, which
//!   grows with every acquisition). The protected resource remembers the
//!   highest token it has accepted and refuses writes with a lower one, which
//!   covers the holder that *could not* notice (it was paused).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::queue::{self, Candidate};
use crate::session::Client;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("timed out after {0:?} waiting for the lock")]
    Timeout(Duration),
    #[error("ZooKeeper error while locking: {0:?}")]
    Zk(zookeeper_async::ZkError),
}

impl From<zookeeper_async::ZkError> for LockError {
    fn from(e: zookeeper_async::ZkError) -> Self {
        LockError::Zk(e)
    }
}

/// A lock at a path; cheap to create per use.
#[derive(Clone)]
pub struct Lock {
    client: Client,
    dir: String,
    acl: Vec<zookeeper_async::Acl>,
}

impl Lock {
    /// A lock whose nodes anyone may read, replace or delete; a service
    /// gives its own ACL with [`Lock::with_acl`].
    pub fn new(client: &Client, dir: impl Into<String>) -> Lock {
        Lock { client: client.clone(), dir: dir.into(), acl: zookeeper_async::Acl::open_unsafe().clone() }
    }

    /// The ACL of the lock's directory (made on first use) and of every
    /// waiter's node: who else may see the queue, and nobody else may
    /// delete a holder's node or jump the line.
    pub fn with_acl(mut self, acl: Vec<zookeeper_async::Acl>) -> Lock {
        self.acl = acl;
        self
    }

    /// Waits up to `timeout` for the lock. `owner` is stored in the lock
    /// node so operators (and the dashboard) can see who holds and who
    /// waits. On timeout our place in line is given up.
    pub async fn acquire(&self, owner: &str, timeout: Duration) -> Result<LockGuard, LockError> {
        let deadline = Instant::now() + timeout;
        let me = queue::enter(&self.client, &self.dir, "lock-", owner.as_bytes(), &self.acl).await?;
        match queue::wait_first(&self.client, &self.dir, &me, Some(deadline)).await {
            Ok(true) => {
                let lost = queue::lost(&self.client);
                Ok(LockGuard { client: self.client.clone(), me, lost, released: false })
            }
            Ok(false) => {
                queue::leave(&self.client, &me.path).await;
                Err(LockError::Timeout(timeout))
            }
            Err(e) => {
                queue::leave(&self.client, &me.path).await;
                Err(e.into())
            }
        }
    }

    /// Holder first, then waiters in order (node names and owners).
    pub async fn queue(&self) -> Result<Vec<(String, String)>, LockError> {
        let mut out = Vec::new();
        for name in queue::ordered(&self.client, &self.dir).await? {
            if let Ok((data, _)) = self.client.zk.get_data(&crate::join(&self.dir, &name), false).await {
                out.push((name, String::from_utf8_lossy(&data).into_owned()));
            }
        }
        Ok(out)
    }
}

/// The lock, held. Release it with [`LockGuard::release`]; dropping it
/// releases in the background.
pub struct LockGuard {
    client: Client,
    me: Candidate,
    lost: watch::Receiver<bool>,
    released: bool,
}

impl LockGuard {
    /// The fencing token for this holding: pass it to the resource.
    pub fn token(&self) -> i64 {
        self.me.czxid
    }

    /// Turns `true` when the session stops being live: stop using the
    /// resource (the token still protects it if you cannot stop in time).
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Whether we still hold the lock, asked of the server with a write to
    /// our own node (see [`crate::fencing`]): `Ok(false)` once our session
    /// is gone. How a holder refused by a fencing token tells "I stalled
    /// and someone newer wrote" from "the resource has seen a history this
    /// server never had".
    pub async fn confirm(&self) -> Result<bool, zookeeper_async::ZkError> {
        queue::confirm(&self.client, &self.me).await
    }

    /// The lock node's path.
    pub fn path(&self) -> &str {
        &self.me.path
    }

    /// Deletes the lock node (retrying through connection loss), which
    /// wakes the next waiter at once.
    pub async fn release(mut self) {
        self.released = true;
        queue::leave(&self.client, &self.me.path).await;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Guaranteed release even on an early return or a panic: the next
        // waiter must not wait for our session to end.
        let (client, path) = (self.client.clone(), self.me.path.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { queue::leave(&client, &path).await });
        }
    }
}
