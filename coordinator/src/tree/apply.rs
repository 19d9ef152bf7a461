//! Applying transactions: the only way the tree changes after it is built
//! or read from a snapshot, and what the write-ahead log replays.
//!
//! Every change to a node's content goes through
//! [`Arena::edit`](super::arena::Arena::edit) or
//! [`Arena::remove`](super::arena::Arena::remove), which keep a snapshot in
//! progress exact; the tree's own indexes (ephemerals by owner, containers,
//! TTL nodes, the data size, the ACL table's counts) are kept here.

use std::sync::Arc;

use zk_wire::records::{Acl, Stat};
use zk_wire::ErrorCode;

use super::node::{Node, StatPersisted};
use super::{DataTree, Trigger, TxnResult};
use crate::path;
use crate::txn::{NodeKind, Txn, TxnHeader};

/// Orders a closing session's ephemerals the way ZooKeeper 3.8 deletes
/// them, so watchers see NodeDeleted / NodeChildrenChanged in the same order.
/// ZooKeeper keeps a session's ephemeral paths in a `HashSet` (insertion
/// order: creation, i.e. czxid), and closes the session by deleting the
/// paths of a `clone()` of it, in that clone's iteration order. A Java
/// `HashMap` iterates by bucket (`(h ^ h >>> 16) & (capacity - 1)`, with `h`
/// the path's `String.hashCode()`) and in insertion order within a bucket;
/// the clone is filled in the original's order but sized for its count, so
/// its buckets differ. Sorting twice, stably, by the two bucket numbers
/// reproduces it.
fn order_like_zookeeper_close(paths: &mut [String], created: impl Fn(&String) -> i64) {
    let bucket = |p: &str, capacity: usize| {
        let h = p.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c))) as u32;
        (h ^ (h >> 16)) as usize & (capacity - 1)
    };
    // The session's set: 16 slots, doubled whenever more than 3/4 full.
    let mut original = 16usize;
    while paths.len() > original - original / 4 {
        original *= 2;
    }
    // `HashMap.clone()` sizes its table by tableSizeFor(count / 0.75 + 1).
    let clone = ((paths.len() as f64 / 0.75 + 1.0) as usize).max(1).next_power_of_two();
    paths.sort_by_key(|p| (bucket(p, original), created(p)));
    paths.sort_by_key(|p| bucket(p, clone));
}

impl DataTree {
    /// Applies a validated transaction. Never fails: a txn that does not fit
    /// the tree (which validation rules out, and replay of our own log never
    /// produces) yields an error result and leaves the tree unchanged.
    pub fn apply(&mut self, hdr: &TxnHeader, txn: &Txn, triggers: &mut Vec<Trigger>) -> TxnResult {
        if hdr.zxid > self.last_zxid {
            self.last_zxid = hdr.zxid;
        }
        self.apply_inner(hdr, txn, triggers)
    }

    fn apply_inner(&mut self, hdr: &TxnHeader, txn: &Txn, triggers: &mut Vec<Trigger>) -> TxnResult {
        match txn {
            Txn::CreateSession { timeout_ms } => {
                self.sessions.insert(hdr.session_id, *timeout_ms);
                TxnResult::SessionCreated
            }
            Txn::CloseSession => {
                self.sessions.remove(&hdr.session_id);
                let mut paths: Vec<String> =
                    self.ephemerals.remove(&hdr.session_id).map(|s| s.into_iter().collect()).unwrap_or_default();
                let created = |p: &String| self.get(p).map_or(0, |n| n.stat.czxid);
                order_like_zookeeper_close(&mut paths, created);
                for p in paths {
                    self.delete_node(&p, hdr.zxid, triggers);
                }
                TxnResult::SessionClosed
            }
            Txn::Create { path, data, acl, kind, parent_cversion } => {
                match self.create_node(path, data.as_deref(), acl, *kind, *parent_cversion, hdr, triggers) {
                    Ok(stat) => TxnResult::Created { path: path.clone(), stat },
                    Err(e) => TxnResult::Error(e),
                }
            }
            Txn::Delete { path } => {
                if self.delete_node(path, hdr.zxid, triggers) {
                    TxnResult::Deleted
                } else {
                    TxnResult::Error(ErrorCode::NoNode)
                }
            }
            Txn::SetData { path, data, version } => {
                let Some(slot) = self.arena.find(path) else {
                    return TxnResult::Error(ErrorCode::NoNode);
                };
                let Some(node) = self.arena.edit(slot) else {
                    return TxnResult::Error(ErrorCode::NoNode);
                };
                let old = node.data_len() as i64;
                node.set_data(data.as_deref());
                node.stat.mtime = hdr.time;
                node.stat.mzxid = hdr.zxid;
                node.stat.version = *version;
                let stat = node.stat();
                let acl = node.acl;
                self.data_size += data.as_ref().map_or(0, |d| d.len() as i64) - old;
                triggers.push(Trigger::DataChanged(path.clone(), self.acls.get(acl).clone()));
                TxnResult::Stat(stat)
            }
            Txn::SetAcl { path, acl, version } => {
                let Some(slot) = self.arena.find(path) else {
                    return TxnResult::Error(ErrorCode::NoNode);
                };
                let id = self.acls.intern(acl);
                let Some(node) = self.arena.edit(slot) else {
                    return TxnResult::Error(ErrorCode::NoNode);
                };
                let old = std::mem::replace(&mut node.acl, id);
                node.stat.aversion = *version;
                let stat = node.stat();
                self.acls.release(old);
                TxnResult::Stat(stat)
            }
            Txn::Check { .. } => TxnResult::Checked,
            Txn::Multi(txns) => TxnResult::Multi(txns.iter().map(|t| self.apply_inner(hdr, t, triggers)).collect()),
            Txn::MultiError(codes) => TxnResult::MultiError(codes.clone()),
            Txn::Error(code) => TxnResult::Error(*code),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create_node(
        &mut self,
        path: &str,
        data: Option<&[u8]>,
        acl: &Arc<Vec<Acl>>,
        kind: NodeKind,
        parent_cversion: i32,
        hdr: &TxnHeader,
        triggers: &mut Vec<Trigger>,
    ) -> Result<Stat, ErrorCode> {
        let (Some(parent_path), name) = (path::parent(path), path::name(path)) else {
            return Err(ErrorCode::BadArguments);
        };
        let parent_path = path::canonical(parent_path);
        let parent = self.arena.find(parent_path).ok_or(ErrorCode::NoNode)?;
        if self.arena.child(parent, name).is_some() {
            return Err(ErrorCode::NodeExists);
        }
        // Validation refuses a name the parent's block has no room for;
        // checked again here, before the parent changes, so that a log
        // that holds one anyway fails the same way on every replay.
        if !self.arena.has_room(parent, name) {
            return Err(ErrorCode::BadArguments);
        }
        if let Some(p) = self.arena.edit(parent) {
            if parent_cversion > p.stat.cversion {
                p.stat.cversion = parent_cversion;
                p.stat.pzxid = hdr.zxid;
            }
        }
        let stat = StatPersisted {
            czxid: hdr.zxid,
            mzxid: hdr.zxid,
            ctime: hdr.time,
            mtime: hdr.time,
            version: 0,
            cversion: 0,
            aversion: 0,
            ephemeral_owner: kind.ephemeral_owner(),
            pzxid: hdr.zxid,
        };
        let acl = self.acls.intern(acl);
        let Some(slot) = self.add_node(parent, path, data, acl, stat) else {
            self.acls.release(acl);
            return Err(ErrorCode::BadArguments);
        };
        let client_stat = self.arena.node(slot).map(Node::stat).unwrap_or_default();
        let parent_acl = self.arena.node(parent).map_or(acl, |p| p.acl);
        triggers.push(Trigger::Created(path.to_string(), self.acls.get(acl).clone()));
        triggers.push(Trigger::ChildrenChanged(parent_path.to_string(), self.acls.get(parent_acl).clone()));
        Ok(client_stat)
    }

    fn delete_node(&mut self, path: &str, zxid: i64, triggers: &mut Vec<Trigger>) -> bool {
        let Some(parent_path) = path::parent(path).map(path::canonical) else {
            return false;
        };
        let Some(slot) = self.arena.find(path) else {
            return false;
        };
        // The ACL outlives the node in the trigger: the table may drop it
        // once the last node using it is gone.
        let acl = self.arena.node(slot).map(|n| self.acls.get(n.acl).clone());
        // Validation rules out deleting the root or a node with children;
        // the arena refuses both too, since unlinking either would orphan
        // nodes.
        let Some(node) = self.arena.remove(slot) else {
            return false;
        };
        self.acls.release(node.acl);
        let parent = node.links.parent();
        let parent_acl = parent.and_then(|p| self.arena.node(p)).map(|p| self.acls.get(p.acl).clone());
        if let Some(parent) = parent.and_then(|p| self.arena.edit(p)) {
            if zxid > parent.stat.pzxid {
                parent.stat.pzxid = zxid;
            }
        }
        self.data_size -= path.len() as i64 + node.data_len() as i64;
        match node.kind() {
            NodeKind::Ephemeral(session) => {
                if let Some(set) = self.ephemerals.get_mut(&session) {
                    set.remove(path);
                    if set.is_empty() {
                        self.ephemerals.remove(&session);
                    }
                }
            }
            NodeKind::Container => {
                self.containers.remove(path);
            }
            NodeKind::Ttl(_) => {
                self.ttls.remove(path);
            }
            NodeKind::Persistent => {}
        }
        let none = || Arc::new(Vec::new());
        triggers.push(Trigger::Deleted(path.to_string(), acl.unwrap_or_else(none)));
        triggers.push(Trigger::ChildrenChanged(parent_path.to_string(), parent_acl.unwrap_or_else(none)));
        true
    }

    /// Adds the node at `path` under `parent` (a create, or a node read
    /// from a snapshot): into the arena, and into the size count and the
    /// index of its kind (ephemerals by owner, containers, TTL nodes).
    /// `None`, with nothing changed, when the parent's block of names has
    /// no room for it.
    pub(super) fn add_node(
        &mut self,
        parent: u32,
        path: &str,
        data: Option<&[u8]>,
        acl: u32,
        stat: StatPersisted,
    ) -> Option<u32> {
        let slot = self.arena.insert(parent, path::name(path), data, acl, stat)?;
        self.data_size += path.len() as i64 + data.map_or(0, |d| d.len() as i64);
        match NodeKind::from_owner(stat.ephemeral_owner) {
            NodeKind::Ephemeral(owner) => {
                self.ephemerals.entry(owner).or_default().insert(path.to_string());
            }
            NodeKind::Container => {
                self.containers.insert(path.to_string());
            }
            NodeKind::Ttl(_) => {
                self.ttls.insert(path.to_string());
            }
            NodeKind::Persistent => {}
        }
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{create, hdr};
    use super::*;
    use crate::acl;

    #[test]
    fn cversion_counts_creates_and_deletes_as_clients_see_it() {
        let mut t = DataTree::new();
        let mut tr = Vec::new();
        t.apply(&hdr(1), &create("/a", NodeKind::Persistent, 1), &mut tr);
        t.apply(&hdr(2), &create("/a/b", NodeKind::Persistent, 1), &mut tr);
        t.apply(&hdr(3), &create("/a/c", NodeKind::Persistent, 2), &mut tr);
        t.apply(&hdr(4), &Txn::Delete { path: "/a/b".into() }, &mut tr);
        let s = t.get("/a").unwrap().stat();
        assert_eq!((s.cversion, s.num_children, s.pzxid), (3, 1, 4));
        assert_eq!(t.get("/a").unwrap().stat.cversion, 2, "stored as creates");
    }

    #[test]
    fn close_session_deletes_its_ephemerals_and_fires() {
        let mut t = DataTree::new();
        let mut tr = Vec::new();
        t.apply(&hdr(1), &create("/e", NodeKind::Ephemeral(7), 1), &mut tr);
        assert_eq!(t.get("/e").unwrap().stat().ephemeral_owner, 7);
        tr.clear();
        t.apply(&hdr(2), &Txn::CloseSession, &mut tr);
        assert!(t.get("/e").is_none());
        let root_acl = t.get("/").unwrap().acl().clone();
        let e_acl = Arc::new(acl::open_acl_unsafe());
        assert_eq!(tr, vec![Trigger::Deleted("/e".into(), e_acl), Trigger::ChildrenChanged("/".into(), root_acl)]);
        assert_eq!(t.ephemeral_count(), 0);
    }

    #[test]
    fn containers_and_ttls_show_owner_zero() {
        let mut t = DataTree::new();
        let mut tr = Vec::new();
        t.apply(&hdr(1), &create("/c", NodeKind::Container, 1), &mut tr);
        t.apply(&hdr(2), &create("/t", NodeKind::Ttl(500), 2), &mut tr);
        assert_eq!(t.get("/c").unwrap().stat().ephemeral_owner, 0);
        assert_eq!(t.get("/t").unwrap().kind(), NodeKind::Ttl(500));
        assert_eq!(t.containers().count(), 1);
        assert_eq!(t.ttls().count(), 1);
    }
}
