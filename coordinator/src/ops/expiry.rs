//! What the server ends on its own, by the clock: sessions silent past
//! their deadline, empty containers, and TTL nodes past their TTL. Each
//! pass is a function of [`Core`]; the server's background tasks
//! (`server`) call them on their timers and stop them at shutdown.
//!
//! They share a home because they are the same kind of thing: nobody asked
//! for the change, so the server orders it as a txn of its own, checked
//! again under the tree's write lock, and clients see it as they would see
//! a client's closeSession or delete (watches fire, ephemerals go). An
//! expired session ends the way every session ends, through
//! [`close_session`].
//!
//! ZooKeeper's counterparts: `SessionTrackerImpl`'s expirer calling
//! `ZooKeeperServer.expire`, and `ContainerManager`.

use std::time::Duration;

use zk_wire::ErrorCode;

use super::session::close_session;
use crate::committer::Proposal;
use crate::core::Core;
use crate::session::SessionId;
use crate::tree::TxnResult;
use crate::txn::{NodeKind, Txn};

/// Expires every session whose deadline has passed. Returns how many.
pub fn expire_sessions(core: &Core) -> usize {
    let expired = core.sessions.lock().expired();
    for id in &expired {
        tracing::info!(session = %SessionId(*id), "session expired");
        close_session(core, *id, None);
    }
    expired.len()
}

/// How long until the next expiry step.
pub fn until_next_step(core: &Core) -> Duration {
    core.sessions.lock().until_next_step()
}

/// Deletes empty containers that have had children, and TTL nodes that are
/// childless and unmodified for longer than their TTL. Each deletion is a
/// txn like a client's, checked again under the write lock (a child may
/// have arrived since the candidates were listed). Returns how many went.
pub fn reap_once(core: &Core) -> usize {
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
