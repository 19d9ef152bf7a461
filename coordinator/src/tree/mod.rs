//! The data tree: znodes, their stats and ACLs, and the indexes the server
//! needs (ephemerals by session, containers, TTL nodes).
//!
//! Pure and synchronous: no sockets, no clocks, no locks. Changes enter only
//! through [`DataTree::apply`], which is what the write-ahead log replays.
//! Watches are not kept here; `apply` reports what fired as [`Trigger`]s and
//! the caller delivers them.
//!
//! # Layout: why a million znodes fit in a quarter of ZooKeeper's memory
//!
//! A server holds every znode in memory, so bytes per znode are what the
//! operator pays for. The obvious layout (a hash map from full path to a
//! node that owns its data, its ACL and a set of its children's names)
//! spends ~800 bytes on a 100-byte znode: the path is stored twice (as the
//! key and as a name in the parent's set), the map's slots are sized for
//! the next power of two, and every piece is its own allocation. Here:
//!
//! - Nodes live in an arena (`Vec<Option<Node>>`) and refer to their
//!   parent by `u32` slot.
//! - A node's name is stored once, in its parent's block of children's
//!   names (`names`): each name as jute writes a string, one after the
//!   other, so getChildren is a copy of one block, not a visit to every
//!   child (100,000 children cost a cache miss or two each once the tree
//!   outgrew the cache; the listing's cost grew with the tree). A node
//!   holds the offset of its entry there, and its data alone, so a node
//!   with empty data makes no allocation of its own. The full path is
//!   never stored: it is the chain of names up to the root.
//! - The path index is a table of `(slot, hash)` pairs, 8 bytes each,
//!   keyed by *(parent slot, name)*. A lookup walks the path one segment
//!   at a time. Because the hash is kept in the table, growing the table
//!   never touches a node or re-hashes a name, so the pause of a resize
//!   under the write lock stays small as the tree grows. The hasher is
//!   std's keyed SipHash: clients choose names, so a guessable hash would
//!   let one of them degrade every lookup.
//! - ACLs are interned and reference-counted; a node holds a `u32` id.
//!
//! A node is 104 bytes plus its data and its name's entry (4 bytes more
//! than the name). The stat is kept whole (60 bytes): it is what clients
//! read back, and squeezing it would cost clarity for little.
//!
//! # Snapshots without stopping writers
//!
//! A snapshot must be the tree as of one zxid, yet encoding a large tree
//! takes long enough that holding the lock for it would stall every write.
//! [`DataTree::begin_snapshot`] fixes the zxid; [`DataTree::snapshot_chunk`]
//! then encodes the arena a slice at a time, each under a short hold of the
//! lock, while writes go on between slices. The first time a write touches
//! a node the cursor has not reached yet, the node's state as of the
//! snapshot's zxid is encoded and set aside; the cursor emits that record
//! instead of the live node when it gets there. Nodes created after the
//! snapshot began (`czxid` above its zxid) are skipped. The result is
//! exact, not fuzzy: recovery loads it and replays the log from the next
//! zxid, with no need for idempotent replay.
//!
//! Setting a node aside must happen before every change, so it is not left
//! to each change to remember: the arena hands out a node to change only
//! through `Arena::edit`, which sets it aside first (see `arena`).
//!
//! # Map, bottom layer first
//!
//! Each file names only files above it in this list, and this file, which
//! holds [`DataTree`], names only those that come before `apply`
//! (`tests/layers.rs` fails on a cycle among them):
//!
//! - `zxid`: where an in-memory server's zxids start.
//! - `acls`: the interned, counted ACL table.
//! - `names`: one parent's block of children's names, and the view a
//!   listing is written from ([`Children`]).
//! - `node`: one znode's layout ([`Node`], [`StatPersisted`], its links).
//! - `arena`: the slots, the links between them, the blocks of names, the
//!   path index, and the
//!   copy-on-write cursor of a snapshot in progress ([`Progress`],
//!   [`SnapshotError`]), which encodes nodes with the codec it is handed.
//! - This file: [`DataTree`] itself, its read API and the view readers get
//!   ([`NodeRef`]), and what `apply` reports ([`Trigger`], [`TxnResult`]).
//! - `apply`: applying a txn ([`DataTree::apply`]), and the indexes of
//!   ephemerals, containers and TTL nodes it keeps.
//! - `snapshot`: the snapshot format, its chunked writing and reading.
//!
//! `apply` and `snapshot` add methods to [`DataTree`], so they sit above
//! it; this file's `pub use` lines hand their types on to the rest of the
//! server and do not count as a use.

mod acls;
mod apply;
mod arena;
mod names;
mod node;
mod snapshot;
mod zxid;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Deref;
use std::sync::Arc;

use zk_wire::records::{Acl, Stat};
use zk_wire::ErrorCode;

use crate::acl;
use acls::AclTable;
use arena::{Arena, ROOT};

pub use arena::{Progress, SnapshotError};
pub use names::{fits as names_fit, Children};
pub use node::{Node, StatPersisted};
pub use snapshot::SnapshotHeader;
pub use zxid::in_memory_first_zxid;

/// A watch trigger produced by a change, for the watch manager to deliver.
/// Each carries the ACL of the node its event names (the parent's, for a
/// child change; the node's last, for a delete): a watcher is told only of
/// nodes it may read, checked as the event is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Created(String, Arc<Vec<Acl>>),
    Deleted(String, Arc<Vec<Acl>>),
    DataChanged(String, Arc<Vec<Acl>>),
    ChildrenChanged(String, Arc<Vec<Acl>>),
}

/// What applying a transaction produced, for the reply.
#[derive(Debug, Clone, PartialEq)]
pub enum TxnResult {
    Created { path: String, stat: Stat },
    Deleted,
    Stat(Stat),
    Checked,
    Multi(Vec<TxnResult>),
    MultiError(Vec<i32>),
    Error(ErrorCode),
    SessionCreated,
    SessionClosed,
}

#[derive(Debug, Clone)]
pub struct DataTree {
    /// The nodes, and the snapshot in progress that changes to them keep.
    arena: Arena,
    acls: AclTable,
    ephemerals: HashMap<i64, BTreeSet<String>>,
    containers: BTreeSet<String>,
    ttls: BTreeSet<String>,
    /// Open sessions and their timeouts (ms), as the log has them: kept in
    /// the tree so a snapshot of the tree is a consistent snapshot of both.
    sessions: BTreeMap<i64, i32>,
    last_zxid: i64,
    /// Bytes of path + data held, for `mntr`'s approximate_data_size.
    data_size: i64,
}

impl Default for DataTree {
    fn default() -> Self {
        Self::new()
    }
}

impl DataTree {
    /// A tree with the nodes every ZooKeeper server starts with: `/`,
    /// `/zookeeper`, `/zookeeper/quota` and `/zookeeper/config` (read-only
    /// to the world, with the aversion of -1 that ZooKeeper's own setup
    /// leaves on it).
    pub fn new() -> Self {
        let mut tree = Self::with_root();
        let open = Arc::new(acl::open_acl_unsafe());
        let read = Arc::new(acl::read_acl_unsafe());
        let empty = Some(&b""[..]);
        let stat = StatPersisted::default();
        let id = tree.acls.intern(&open);
        // Short names into an empty tree: every insert finds room.
        if let Some(proc_node) = tree.arena.insert(ROOT, "zookeeper", empty, id, stat) {
            let id = tree.acls.intern(&open);
            tree.arena.insert(proc_node, "quota", empty, id, stat);
            let id = tree.acls.intern(&read);
            tree.arena.insert(proc_node, "config", empty, id, StatPersisted { aversion: -1, ..stat });
        }
        tree.data_size = tree.paths().map(|p| p.len() as i64).sum();
        tree
    }

    /// A fresh tree for a server without a data dir, whose zxids start at
    /// [`in_memory_first_zxid`] instead of 0 (see there why).
    pub fn in_memory(now_ms: i64) -> Self {
        let mut tree = Self::new();
        tree.last_zxid = in_memory_first_zxid(now_ms);
        tree
    }

    /// Just the root, with the open ACL, as a snapshot is loaded into.
    fn with_root() -> Self {
        let mut acls = AclTable::new();
        let open = acls.intern(&Arc::new(acl::open_acl_unsafe()));
        DataTree {
            arena: Arena::new(open),
            acls,
            ephemerals: HashMap::new(),
            containers: BTreeSet::new(),
            ttls: BTreeSet::new(),
            sessions: BTreeMap::new(),
            last_zxid: 0,
            data_size: 1,
        }
    }

    // ---- reads ---------------------------------------------------------

    /// The node at `path`; "" is the root's alias, as in ZooKeeper.
    pub fn get(&self, path: &str) -> Option<NodeRef<'_>> {
        let slot = self.arena.find(path)?;
        self.arena.node(slot).map(|node| NodeRef::new(self, slot, node))
    }

    pub fn last_zxid(&self) -> i64 {
        self.last_zxid
    }

    pub fn node_count(&self) -> usize {
        self.arena.count()
    }

    pub fn approximate_data_size(&self) -> i64 {
        self.data_size
    }

    pub fn ephemerals_of(&self, session: i64) -> impl Iterator<Item = &String> {
        self.ephemerals.get(&session).into_iter().flatten()
    }

    pub fn ephemeral_count(&self) -> usize {
        self.ephemerals.values().map(BTreeSet::len).sum()
    }

    pub fn sessions_with_ephemerals(&self) -> impl Iterator<Item = (&i64, &BTreeSet<String>)> {
        self.ephemerals.iter()
    }

    pub fn containers(&self) -> impl Iterator<Item = &String> {
        self.containers.iter()
    }

    pub fn ttls(&self) -> impl Iterator<Item = &String> {
        self.ttls.iter()
    }

    /// Every path, in no particular order (for `dump`, the admin API, tests).
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.arena.iter().map(|(slot, _)| self.arena.path_of(slot))
    }

    /// The number of descendants of `path` (getAllChildrenNumber). ZooKeeper
    /// counts the keys that start with `path + "/"`; for the root that
    /// includes the root's own "/" key, and we answer the same.
    pub fn descendant_count(&self, path: &str) -> i32 {
        let Some(slot) = self.arena.find(path) else { return 0 };
        let mut count = 0i32;
        let mut stack = vec![slot];
        while let Some(at) = stack.pop() {
            for child in self.arena.children_of(at) {
                count += 1;
                stack.push(child);
            }
        }
        if slot == ROOT {
            count += 1;
        }
        count
    }

    /// Open sessions (id, timeout ms) as of the last applied txn.
    pub fn sessions(&self) -> impl Iterator<Item = (i64, i32)> + '_ {
        self.sessions.iter().map(|(k, v)| (*k, *v))
    }
}

/// A node found in the tree, with what it refers to by id (its ACL, its
/// children) resolved through the tree.
#[derive(Clone, Copy)]
pub struct NodeRef<'t> {
    tree: &'t DataTree,
    slot: u32,
    node: &'t Node,
}

impl<'t> Deref for NodeRef<'t> {
    type Target = Node;
    fn deref(&self) -> &Node {
        self.node
    }
}

impl<'t> NodeRef<'t> {
    fn new(tree: &'t DataTree, slot: u32, node: &'t Node) -> Self {
        NodeRef { tree, slot, node }
    }

    pub fn acl(&self) -> &'t Arc<Vec<Acl>> {
        self.tree.acls.get(self.node.acl)
    }

    /// The children's names, in no promised order: ZooKeeper keeps them
    /// in a hash set and promises none, and clients that need an order
    /// (the lock recipes, by sequence number) sort them themselves.
    /// Sorting 100,000 names here took longer than listing them.
    pub fn children(&self) -> Children<'t> {
        Children::new(self.tree.arena.names_of(self.slot), self.node.num_children())
    }
}

/// Txns for the tree's tests.
#[cfg(test)]
mod testing {
    use std::sync::Arc;

    use bytes::Bytes;

    use crate::acl;
    use crate::txn::{NodeKind, Txn, TxnHeader};

    pub(super) fn hdr(zxid: i64) -> TxnHeader {
        TxnHeader { session_id: 7, cxid: 1, zxid, time: 1000 + zxid }
    }

    /// A create of `path` with data "x" and the open ACL, `pcv` being the
    /// parent's cversion after it.
    pub(super) fn create(path: &str, kind: NodeKind, pcv: i32) -> Txn {
        Txn::Create {
            path: path.into(),
            data: Some(Bytes::from_static(b"x")),
            acl: Arc::new(acl::open_acl_unsafe()),
            kind,
            parent_cversion: pcv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{create, hdr};
    use super::*;
    use crate::txn::{NodeKind, Txn};

    #[test]
    fn children_are_listed_and_counted() {
        let mut t = DataTree::new();
        let mut tr = Vec::new();
        for (z, name) in ["b", "a", "c"].iter().enumerate() {
            t.apply(&hdr(z as i64 + 1), &create(&format!("/{name}"), NodeKind::Persistent, z as i32 + 1), &mut tr);
        }
        t.apply(&hdr(4), &Txn::Delete { path: "/a".into() }, &mut tr);
        let root = t.get("/").unwrap();
        let mut names: Vec<&str> = root.children().iter().collect();
        names.sort_unstable();
        assert_eq!(names, ["b", "c", "zookeeper"]);
        assert_eq!(root.num_children(), 3);
        assert_eq!(t.descendant_count("/"), 6, "b, c, zookeeper and its two, and the root's own key");
        assert!(t.get("/a").is_none());
        assert!(t.get("/b/").is_none() && t.get("//b").is_none() && t.get("b").is_none());
        assert_eq!(t.get("").unwrap().stat(), t.get("/").unwrap().stat());
    }
}
