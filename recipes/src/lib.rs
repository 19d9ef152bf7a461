//! ZooKeeper recipes on zookeeper-async, written once and used by every
//! service; they behave the same against the coordinator and against Apache
//! ZooKeeper.
//!
//! # Layout
//! - [`session`]: the connection state as a `watch` channel, because every
//!   recipe must react to SUSPENDED (connection lost) and LOST (expired).
//! - `queue` (private): ephemeral-sequential candidates with protected
//!   names, each waiting on its predecessor only. Lock and election are both
//!   "be first in this queue".
//! - [`lock`]: a fenced distributed lock.
//! - [`election`]: leader election with a per-term fencing token.
//! - [`fencing`]: tokens as (epoch, zxid), and the epoch that keeps them
//!   growing when the server's history is reset, restored or moved.
//! - [`task`]: wait for a task's status, watch armed before publishing.
//! - [`config`]: a live value that always converges on the latest data.
//! - [`registry`]: ephemeral service registration and live membership;
//!   a registration can carry live data (an instance's status).
//! - [`retry`]: repeat what is safe to repeat through a lost connection,
//!   with backoff, until the caller's deadline.
//!
//! # zookeeper-async's connection states, as these recipes read them
//! - `Connected`: the session is live.
//! - `Connecting`: the connection dropped; the session may still be alive
//!   on the server, but we cannot know: Curator's SUSPENDED. A lock holder
//!   or leader must stop acting now, because the server may expire the
//!   session before we hear from it again.
//! - `NotConnected` (after a handshake answered with timeout 0) or
//!   `Closed`: the session is gone, with its ephemerals: Curator's LOST.
//!   zookeeper-async then opens a *new* session by itself; ephemerals
//!   (registrations) must be created again, and watches re-armed, since the
//!   client re-registers none.

pub mod config;
pub mod election;
pub mod fencing;
pub mod lock;
mod queue;
pub mod registry;
pub mod retry;
pub mod session;
pub mod task;

pub use queue::watch_events as queue_watch_events;
pub use zookeeper_async::ZkError;
// Node ACLs, for callers that create through these recipes.
pub use zookeeper_async::Acl;

/// Creates `path`'s missing ancestors and `path` itself as empty persistent
/// nodes open to anyone (`world:anyone:cdrwa`); existing ones are left
/// alone. For tests and scratch trees: services use [`ensure_path_with_acl`].
pub async fn ensure_path(zk: &zookeeper_async::ZooKeeper, path: &str) -> Result<(), ZkError> {
    ensure_path_with_acl(zk, path, zookeeper_async::Acl::open_unsafe()).await
}

/// Creates `path`'s missing ancestors and `path` itself as empty persistent
/// nodes with `acl`; existing ones are left alone, whatever their ACL.
///
/// Each level is looked up before it is created: a server checks CREATE on
/// the parent before it looks for the child, so a client that may not
/// create under an existing ancestor (say `/locks`, made by the operator)
/// would get NOAUTH instead of NODEEXISTS from a blind create.
pub async fn ensure_path_with_acl(
    zk: &zookeeper_async::ZooKeeper,
    path: &str,
    acl: &[zookeeper_async::Acl],
) -> Result<(), ZkError> {
    let mut at = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        if zk.exists(&at, false).await?.is_some() {
            continue;
        }
        match zk.create(&at, vec![], acl.to_vec(), zookeeper_async::CreateMode::Persistent).await {
            Ok(_) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `parent/child`, with `/` as the root's own name.
pub use zk_wire::path::join;
