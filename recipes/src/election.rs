//! Leader election with a fencing token per term.
//!
//! Candidates queue as in the lock; the first is the leader. The hard parts
//! are about *stopping*:
//!
//! - a leader must stop acting the moment its connection drops
//!   ([`Leadership::lost`] turns `true` on SUSPENDED), because the server
//!   may expire its session and elect someone else before it reconnects; a
//!   client notices the drop within its read timeout (two thirds of the
//!   session timeout), earlier than the server can expire the session;
//! - work stamped with [`Leadership::token`] (the leader node's czxid,
//!   larger for every new term) lets the resource refuse a deposed leader
//!   that could not notice in time (paused, partitioned);
//! - [`Leadership::resign`] deletes our node, so the next candidate takes
//!   over at once instead of after a session timeout.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::queue::{self, Candidate};
use crate::session::Client;

pub struct Election {
    client: Client,
    dir: String,
    id: String,
    acl: Vec<zookeeper_async::Acl>,
}

impl Election {
    /// `id` is stored in our node: it is how everyone sees who leads. The
    /// nodes are open to anyone until [`Election::with_acl`] says otherwise.
    pub fn new(client: &Client, dir: impl Into<String>, id: impl Into<String>) -> Election {
        Election {
            client: client.clone(),
            dir: dir.into(),
            id: id.into(),
            acl: zookeeper_async::Acl::open_unsafe().clone(),
        }
    }

    /// The ACL of the election's directory (made on first use) and of each
    /// candidate's node: only the group's members may stand or step down.
    pub fn with_acl(mut self, acl: Vec<zookeeper_async::Acl>) -> Election {
        self.acl = acl;
        self
    }

    /// Joins the election and returns when we lead. An error means the
    /// session was lost while waiting: campaign again (on the new session).
    pub async fn campaign(&self) -> Result<Leadership, zookeeper_async::ZkError> {
        let never = CancellationToken::new();
        // Never stopped, so never `None`.
        self.campaign_until(|| {}, &never).await?.ok_or(zookeeper_async::ZkError::SystemError)
    }

    /// [`Election::campaign`] until `stop` (`Ok(None)` when the stop is
    /// asked before we lead), calling `joined` once our candidate node
    /// exists: from then on we are in line, and a leader that goes away
    /// hands over to us. Before it, "standing by" would be a promise the
    /// election cannot keep (a failover then would find nobody in line).
    ///
    /// Dropping a campaign future to stop it would be wrong: a step of it
    /// may have a request in flight, whose answer then comes back to
    /// nobody. So the stop is seen only where nothing is in flight (the
    /// wait on a watch, the wait for a reconnect), and a request already
    /// sent is read to its answer first. Then our candidate node is
    /// deleted, if the connection is up.
    pub async fn campaign_until(
        &self,
        joined: impl FnOnce(),
        stop: &CancellationToken,
    ) -> Result<Option<Leadership>, zookeeper_async::ZkError> {
        let me = queue::enter(&self.client, &self.dir, "n_", self.id.as_bytes(), &self.acl).await?;
        joined();
        let mut took_over_at = None;
        let give_up = queue::GiveUp { deadline: None, stop: Some(stop) };
        match queue::wait_first_noting(&self.client, &self.dir, &me, give_up, &mut took_over_at).await {
            Ok(true) => {
                Ok(Some(Leadership { client: self.client.clone(), lost: queue::lost(&self.client), me, took_over_at }))
            }
            Ok(false) => {
                // Out of line at once: a worker started next must not queue
                // behind a node of ours until our session ends. One try, and
                // only on a live connection: a stop does not wait for a
                // reconnect (the session's end removes the node then).
                if self.client.is_live() {
                    let _ = self.client.zk.delete(&me.path, None).await;
                }
                Ok(None)
            }
            Err(e) => {
                queue::leave(&self.client, &me.path).await;
                Err(e)
            }
        }
    }
}

/// The id of the current leader of the election at `dir`, if any.
pub async fn leader(client: &Client, dir: &str) -> Result<Option<String>, zookeeper_async::ZkError> {
    for name in queue::ordered(client, dir).await? {
        match client.zk.get_data(&crate::join(dir, &name), false).await {
            Ok((data, _)) => return Ok(Some(String::from_utf8_lossy(&data).into_owned())),
            Err(zookeeper_async::ZkError::NoNode) => continue, // left just now
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// One term of leadership.
pub struct Leadership {
    client: Client,
    me: Candidate,
    lost: watch::Receiver<bool>,
    took_over_at: Option<tokio::time::Instant>,
}

impl Leadership {
    /// This term's fencing token.
    pub fn token(&self) -> i64 {
        self.me.czxid
    }

    /// When this term took over from another: the moment we learned that
    /// the candidate ahead of us had left (the watch on its node fired).
    /// `None` when nobody was ahead of us as we joined: a term that
    /// followed no other.
    pub fn took_over_at(&self) -> Option<tokio::time::Instant> {
        self.took_over_at
    }

    /// Turns `true` when we may no longer be leader: stop at once.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Whether we still lead, asked of the server with a write to our own
    /// node (see [`crate::fencing`]).
    pub async fn confirm(&self) -> Result<bool, zookeeper_async::ZkError> {
        queue::confirm(&self.client, &self.me).await
    }

    /// Hands leadership over now by deleting our node.
    pub async fn resign(self) {
        queue::leave(&self.client, &self.me.path).await;
    }
}
