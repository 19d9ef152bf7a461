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
//! - Nodes live in an arena (`Vec<Option<Node>>`) and refer to each other
//!   by `u32` slot: parent, first child, next and previous sibling. A
//!   child list is intrusive, so adding or removing a child is O(1) and
//!   costs the parent nothing.
//! - A node's name and data share one allocation (`blob`). The full path
//!   is never stored: it is the chain of names up to the root.
//! - The path index is a table of `(slot, hash)` pairs, 8 bytes each,
//!   keyed by *(parent slot, name)*. A lookup walks the path one segment
//!   at a time. Because the hash is kept in the table, growing the table
//!   never touches a node or re-hashes a name, so the pause of a resize
//!   under the write lock stays small as the tree grows. The hasher is
//!   std's keyed SipHash: clients choose names, so a guessable hash would
//!   let one of them degrade every lookup.
//! - ACLs are interned and reference-counted; a node holds a `u32` id.
//!
//! A node is 112 bytes plus its blob. The stat is kept whole (60 bytes):
//! it is what clients read back, and squeezing it would cost clarity for
//! little.
//!
//! # Snapshots without stopping writers
//!
//! A snapshot must be the tree as of one zxid, yet encoding a large tree
//! takes long enough that holding the lock for it would stall every write.
//! [`DataTree::begin_snapshot`] fixes the zxid; [`DataTree::snapshot_chunk`]
//! then encodes the arena a slice at a time, each under a short hold of the
//! lock, while writes go on between slices. The first time a write touches
//! a node the cursor has not reached yet, the node's state as of the
//! snapshot's zxid is encoded and set aside ([`DataTree::preserve`]); the
//! cursor emits that record instead of the live node when it gets there.
//! Nodes created after the snapshot began (`czxid` above its zxid) are
//! skipped. The result is exact, not fuzzy: recovery loads it and replays
//! the log from the next zxid, with no need for idempotent replay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::ops::Deref;
use std::sync::Arc;

use hashbrown::HashTable;
use zk_wire::records::{Acl, Stat};
use zk_wire::ErrorCode;

use crate::acl;
use crate::path;
use crate::txn::{NodeKind, Txn, TxnHeader};

/// The stat a node persists. `cversion` here counts creates of children, as
/// ZooKeeper stores it; clients see creates plus deletes (see [`Node::stat`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatPersisted {
    pub czxid: i64,
    pub mzxid: i64,
    pub ctime: i64,
    pub mtime: i64,
    pub version: i32,
    pub cversion: i32,
    pub aversion: i32,
    pub ephemeral_owner: i64,
    pub pzxid: i64,
}

/// "No node" in a slot link.
const NIL: u32 = u32::MAX;
/// The root is created first and never deleted.
const ROOT: u32 = 0;

#[derive(Debug, Clone)]
pub struct Node {
    pub stat: StatPersisted,
    /// The node's name, then its data: one allocation per node.
    blob: Box<[u8]>,
    name_len: u32,
    /// Null data is distinct from empty: a node created with null data
    /// reads back as null.
    null_data: bool,
    acl: u32,
    parent: u32,
    first_child: u32,
    next_sibling: u32,
    prev_sibling: u32,
    num_children: u32,
}

impl Node {
    fn new(name: &str, data: Option<&[u8]>, acl: u32, stat: StatPersisted, parent: u32) -> Self {
        Node {
            stat,
            blob: Self::blob(name.as_bytes(), data),
            name_len: name.len() as u32,
            null_data: data.is_none(),
            acl,
            parent,
            first_child: NIL,
            next_sibling: NIL,
            prev_sibling: NIL,
            num_children: 0,
        }
    }

    fn blob(name: &[u8], data: Option<&[u8]>) -> Box<[u8]> {
        let data = data.unwrap_or_default();
        let mut blob = Vec::with_capacity(name.len() + data.len());
        blob.extend_from_slice(name);
        blob.extend_from_slice(data);
        blob.into_boxed_slice()
    }

    fn name_bytes(&self) -> &[u8] {
        &self.blob[..self.name_len as usize]
    }

    /// The last component of the node's path ("" for the root).
    pub fn name(&self) -> &str {
        // Names enter only as `&str`, so this never falls back.
        std::str::from_utf8(self.name_bytes()).unwrap_or_default()
    }

    pub fn data(&self) -> Option<&[u8]> {
        (!self.null_data).then(|| &self.blob[self.name_len as usize..])
    }

    fn data_len(&self) -> usize {
        self.blob.len() - self.name_len as usize
    }

    fn set_data(&mut self, data: Option<&[u8]>) {
        self.blob = Self::blob(self.name_bytes(), data);
        self.null_data = data.is_none();
    }

    pub fn num_children(&self) -> usize {
        self.num_children as usize
    }

    pub fn kind(&self) -> NodeKind {
        NodeKind::from_owner(self.stat.ephemeral_owner)
    }

    /// The stat as clients see it.
    pub fn stat(&self) -> Stat {
        let num_children = self.num_children as i32;
        Stat {
            czxid: self.stat.czxid,
            mzxid: self.stat.mzxid,
            ctime: self.stat.ctime,
            mtime: self.stat.mtime,
            version: self.stat.version,
            // Stored as the count of creates; every child not present any
            // more was deleted, so creates + deletes = 2 * creates - present.
            cversion: self.stat.cversion.wrapping_mul(2).wrapping_sub(num_children),
            aversion: self.stat.aversion,
            // Containers and TTL nodes keep their type in the owner field;
            // clients see 0 for them, as for any non-ephemeral node.
            ephemeral_owner: match self.kind() {
                NodeKind::Ephemeral(owner) => owner,
                _ => 0,
            },
            data_length: self.data().map_or(0, |d| d.len() as i32),
            num_children,
            pzxid: self.stat.pzxid,
        }
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
    pub fn acl(&self) -> &'t Arc<Vec<Acl>> {
        self.tree.acls.get(self.node.acl)
    }

    /// The children's names, sorted, so listings are deterministic.
    pub fn children(&self) -> Vec<&'t str> {
        let mut names: Vec<&str> = self.tree.children_of(self.slot).map(|(_, n)| n.name()).collect();
        names.sort_unstable();
        names
    }
}

/// Interned ACLs, counted by the nodes that use them. Most trees use a
/// handful of distinct ACLs; a node stores an id instead of a list.
#[derive(Debug, Clone)]
struct AclTable {
    entries: Vec<Option<(Arc<Vec<Acl>>, u32)>>,
    ids: HashMap<Arc<Vec<Acl>>, u32>,
    free: Vec<u32>,
    /// Answered for an id that is not in the table, which no node holds:
    /// an empty ACL grants nothing, so a bug here fails closed.
    none: Arc<Vec<Acl>>,
}

impl AclTable {
    fn new() -> Self {
        AclTable { entries: Vec::new(), ids: HashMap::new(), free: Vec::new(), none: Arc::new(Vec::new()) }
    }

    /// The id of `acl`, counting one more user of it.
    fn intern(&mut self, acl: &Arc<Vec<Acl>>) -> u32 {
        if let Some(&id) = self.ids.get(acl) {
            self.retain(id);
            return id;
        }
        let entry = Some((acl.clone(), 1));
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        self.ids.insert(acl.clone(), id);
        id
    }

    fn retain(&mut self, id: u32) {
        if let Some(Some((_, refs))) = self.entries.get_mut(id as usize) {
            *refs += 1;
        }
    }

    fn release(&mut self, id: u32) {
        let Some(slot) = self.entries.get_mut(id as usize) else { return };
        if let Some((acl, refs)) = slot {
            *refs -= 1;
            if *refs == 0 {
                self.ids.remove(acl);
                *slot = None;
                self.free.push(id);
            }
        }
    }

    fn get(&self, id: u32) -> &Arc<Vec<Acl>> {
        match self.entries.get(id as usize) {
            Some(Some((acl, _))) => acl,
            _ => &self.none,
        }
    }

    /// Every id's ACL (an empty list for a free id), as a snapshot's table.
    fn table(&self) -> Vec<Arc<Vec<Acl>>> {
        self.entries.iter().map(|e| e.as_ref().map_or_else(|| self.none.clone(), |(acl, _)| acl.clone())).collect()
    }
}

/// One entry of the path index: a node's slot and the hash of its
/// (parent, name), kept so that growing the table never re-hashes names.
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    slot: u32,
    hash: u32,
}

/// hashbrown takes the bucket from the low bits of the hash and a tag
/// from the top seven; a 32-bit hash copied into both halves serves both.
fn widen(hash: u32) -> u64 {
    (u64::from(hash) << 32) | u64::from(hash)
}

/// 2020-01-01T00:00:00Z in Unix ms: the origin of in-memory zxids.
const ZXID_CLOCK_ORIGIN_MS: i64 = 1_577_836_800_000;

/// Where an in-memory server's zxids start: the wall clock's milliseconds
/// since 2020, times 2^22.
///
/// Without a data dir nothing survives a restart, yet clients and the
/// stores they feed do: a lock holder's fencing token is its node's czxid,
/// and a client refuses a server whose zxid is below one it has seen.
/// Starting from 0 on each run would hand out tokens below the last run's.
/// ZooKeeper starts each leader's zxids at a new epoch in the high 32 bits;
/// here the high 32 bits are the clock in units of 1.024 s, and the low
/// 32 leave 2^22 txns per millisecond: a run would have to sustain four
/// billion writes a second to reach the zxids of a run started after it.
/// So zxids only grow across restarts as long as the wall clock does not
/// step back further than the previous run's own writes moved it on; a
/// data dir removes even that assumption. Good until 2089.
pub fn in_memory_first_zxid(now_ms: i64) -> i64 {
    (now_ms.saturating_sub(ZXID_CLOCK_ORIGIN_MS).clamp(0, (1 << 41) - 1)) << 22
}

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

#[derive(Debug, Clone)]
pub struct DataTree {
    /// The arena; a `None` slot is free and listed in `free`.
    slots: Vec<Option<Node>>,
    free: Vec<u32>,
    /// (parent slot, name) → slot.
    index: HashTable<IndexEntry>,
    hasher: RandomState,
    node_count: usize,
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
    /// The snapshot being encoded, if any (see the module's notes).
    snapshot: Option<SnapshotCursor>,
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
        let proc_node = tree.insert(ROOT, "zookeeper", empty, id, stat);
        let id = tree.acls.intern(&open);
        tree.insert(proc_node, "quota", empty, id, stat);
        let id = tree.acls.intern(&read);
        tree.insert(proc_node, "config", empty, id, StatPersisted { aversion: -1, ..stat });
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
        let root = Node::new("", Some(b""), open, StatPersisted::default(), NIL);
        DataTree {
            slots: vec![Some(root)],
            free: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            node_count: 1,
            acls,
            ephemerals: HashMap::new(),
            containers: BTreeSet::new(),
            ttls: BTreeSet::new(),
            sessions: BTreeMap::new(),
            last_zxid: 0,
            data_size: 1,
            snapshot: None,
        }
    }

    // ---- the arena and the index ---------------------------------------

    fn node(&self, slot: u32) -> Option<&Node> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, slot: u32) -> Option<&mut Node> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn hash(&self, parent: u32, name: &[u8]) -> u32 {
        self.hasher.hash_one((parent, name)) as u32
    }

    fn child(&self, parent: u32, name: &str) -> Option<u32> {
        let hash = self.hash(parent, name.as_bytes());
        let matches = |e: &IndexEntry| {
            e.hash == hash && self.node(e.slot).is_some_and(|n| n.parent == parent && n.name_bytes() == name.as_bytes())
        };
        self.index.find(widen(hash), matches).map(|e| e.slot)
    }

    /// The slot of the node at `path`; "" is the root's alias.
    fn find(&self, path: &str) -> Option<u32> {
        let path = path::canonical(path);
        if path == "/" {
            return Some(ROOT);
        }
        path.strip_prefix('/')?.split('/').try_fold(ROOT, |at, name| self.child(at, name))
    }

    fn children_of(&self, slot: u32) -> impl Iterator<Item = (u32, &Node)> {
        let first = self.node(slot).map_or(NIL, |n| n.first_child);
        std::iter::successors(self.node(first).map(|n| (first, n)), |(_, n)| {
            self.node(n.next_sibling).map(|next| (n.next_sibling, next))
        })
    }

    /// The full path of the node in `slot`: its names up to the root.
    fn path_of(&self, slot: u32) -> String {
        let mut names = Vec::new();
        let mut at = slot;
        while let Some(n) = self.node(at) {
            if n.parent == NIL {
                break;
            }
            names.push(n.name());
            at = n.parent;
        }
        if names.is_empty() {
            return "/".to_string();
        }
        let mut path = String::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for name in names.iter().rev() {
            path.push('/');
            path.push_str(name);
        }
        path
    }

    /// Puts a node into the arena, links it under `parent` and indexes it.
    fn insert(&mut self, parent: u32, name: &str, data: Option<&[u8]>, acl: u32, stat: StatPersisted) -> u32 {
        let mut node = Node::new(name, data, acl, stat, parent);
        let first = self.node(parent).map_or(NIL, |p| p.first_child);
        node.next_sibling = first;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(node);
                slot
            }
            None => {
                self.slots.push(Some(node));
                (self.slots.len() - 1) as u32
            }
        };
        if let Some(next) = self.node_mut(first) {
            next.prev_sibling = slot;
        }
        if let Some(p) = self.node_mut(parent) {
            p.first_child = slot;
            p.num_children += 1;
        }
        let hash = self.hash(parent, name.as_bytes());
        self.index.insert_unique(widen(hash), IndexEntry { slot, hash }, |e| widen(e.hash));
        self.node_count += 1;
        slot
    }

    /// Adds the node at `path` under `parent` (a create, or a node read
    /// from a snapshot): into the arena, and into the size count and the
    /// index of its kind (ephemerals by owner, containers, TTL nodes).
    fn add_node(&mut self, parent: u32, path: &str, data: Option<&[u8]>, acl: u32, stat: StatPersisted) -> u32 {
        let slot = self.insert(parent, path::name(path), data, acl, stat);
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
        slot
    }

    /// Unlinks and unindexes a childless node and frees its slot.
    fn remove(&mut self, slot: u32) -> Option<Node> {
        let node = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        self.node_count -= 1;
        let hash = self.hash(node.parent, node.name_bytes());
        if let Ok(entry) = self.index.find_entry(widen(hash), |e| e.slot == slot) {
            entry.remove();
        }
        if let Some(next) = self.node_mut(node.next_sibling) {
            next.prev_sibling = node.prev_sibling;
        }
        match self.node_mut(node.prev_sibling) {
            Some(prev) => prev.next_sibling = node.next_sibling,
            None => {
                if let Some(p) = self.node_mut(node.parent) {
                    p.first_child = node.next_sibling;
                }
            }
        }
        if let Some(p) = self.node_mut(node.parent) {
            p.num_children -= 1;
        }
        self.acls.release(node.acl);
        Some(node)
    }

    // ---- reads ---------------------------------------------------------

    /// The node at `path`; "" is the root's alias, as in ZooKeeper.
    pub fn get(&self, path: &str) -> Option<NodeRef<'_>> {
        let slot = self.find(path)?;
        self.node(slot).map(|node| NodeRef { tree: self, slot, node })
    }

    pub fn last_zxid(&self) -> i64 {
        self.last_zxid
    }

    pub fn node_count(&self) -> usize {
        self.node_count
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
        (0..self.slots.len() as u32).filter(|s| self.node(*s).is_some()).map(|s| self.path_of(s))
    }

    /// The number of descendants of `path` (getAllChildrenNumber). ZooKeeper
    /// counts the keys that start with `path + "/"`; for the root that
    /// includes the root's own "/" key, and we answer the same.
    pub fn descendant_count(&self, path: &str) -> i32 {
        let Some(slot) = self.find(path) else { return 0 };
        let mut count = 0i32;
        let mut stack = vec![slot];
        while let Some(at) = stack.pop() {
            for (child, _) in self.children_of(at) {
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

    // ---- changes ---------------------------------------------------------

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
                let Some(slot) = self.find(path) else {
                    return TxnResult::Error(ErrorCode::NoNode);
                };
                self.preserve(slot);
                let Some(node) = self.node_mut(slot) else {
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
                let Some(slot) = self.find(path) else {
                    return TxnResult::Error(ErrorCode::NoNode);
                };
                self.preserve(slot);
                let id = self.acls.intern(acl);
                let Some(node) = self.node_mut(slot) else {
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
        let parent = self.find(parent_path).ok_or(ErrorCode::NoNode)?;
        if self.child(parent, name).is_some() {
            return Err(ErrorCode::NodeExists);
        }
        self.preserve(parent);
        if let Some(p) = self.node_mut(parent) {
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
        let slot = self.add_node(parent, path, data, acl, stat);
        let client_stat = self.node(slot).map(Node::stat).unwrap_or_default();
        let parent_acl = self.node(parent).map_or(acl, |p| p.acl);
        triggers.push(Trigger::Created(path.to_string(), self.acls.get(acl).clone()));
        triggers.push(Trigger::ChildrenChanged(parent_path.to_string(), self.acls.get(parent_acl).clone()));
        Ok(client_stat)
    }

    fn delete_node(&mut self, path: &str, zxid: i64, triggers: &mut Vec<Trigger>) -> bool {
        let Some(parent_path) = path::parent(path).map(path::canonical) else {
            return false;
        };
        // Validation rules out deleting the root or a node with children;
        // the tree holds to it too, since unlinking either would orphan nodes.
        let Some(slot) = self.find(path).filter(|s| *s != ROOT) else {
            return false;
        };
        if self.node(slot).is_none_or(|n| n.num_children > 0) {
            return false;
        }
        self.preserve(slot);
        // The ACL outlives the node in the trigger: the table may drop it
        // once the last node using it is gone.
        let acl = self.node(slot).map(|n| self.acls.get(n.acl).clone());
        let Some(node) = self.remove(slot) else {
            return false;
        };
        let parent_acl = self.node(node.parent).map(|p| self.acls.get(p.acl).clone());
        self.preserve(node.parent);
        if let Some(parent) = self.node_mut(node.parent) {
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
}

// ---- snapshots ---------------------------------------------------------------
//
// A snapshot is the whole tree in jute: last zxid, sessions, the ACL table,
// the node count, then every node (path, data, ACL as an index into the
// table, stat) in no particular order. Parents and children are not written:
// they follow from the paths.

use zk_wire::codec::{DecodeError, Jute, Reader};

/// A snapshot in progress: how far the cursor is, and the nodes that were
/// changed ahead of it, encoded as they were at the snapshot's zxid.
#[derive(Debug, Clone)]
struct SnapshotCursor {
    zxid: i64,
    next: u32,
    /// Slots at or past this one were empty when the snapshot began.
    end: u32,
    saved: HashMap<u32, Vec<u8>>,
    expected: usize,
    emitted: usize,
}

/// What a snapshot holds besides its nodes, fixed when it begins.
pub struct SnapshotHeader {
    zxid: i64,
    sessions: Vec<(i64, i32)>,
    acls: Vec<Arc<Vec<Acl>>>,
    nodes: usize,
}

impl SnapshotHeader {
    pub fn zxid(&self) -> i64 {
        self.zxid
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        self.zxid.write(out);
        (self.sessions.len() as i32).write(out);
        for (id, timeout) in &self.sessions {
            id.write(out);
            timeout.write(out);
        }
        (self.acls.len() as i32).write(out);
        for acl in &self.acls {
            acl.as_ref().write(out);
        }
        (self.nodes as i32).write(out);
    }
}

/// Where a snapshot stands after a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    More,
    Done,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("no snapshot is in progress (another one replaced it)")]
    NotStarted,
    /// A self-check: the encoded nodes must be exactly those the tree held
    /// when the snapshot began.
    #[error("the snapshot encoded {emitted} nodes where the tree held {expected}")]
    Inconsistent { emitted: usize, expected: usize },
}

impl DataTree {
    /// Fixes the zxid a snapshot will describe and returns its header; the
    /// nodes follow from [`snapshot_chunk`](Self::snapshot_chunk). Writes
    /// may be applied between the calls. A snapshot already in progress is
    /// abandoned.
    pub fn begin_snapshot(&mut self) -> SnapshotHeader {
        self.snapshot = Some(SnapshotCursor {
            zxid: self.last_zxid,
            next: 0,
            end: self.slots.len() as u32,
            saved: HashMap::new(),
            expected: self.node_count,
            emitted: 0,
        });
        SnapshotHeader {
            zxid: self.last_zxid,
            sessions: self.sessions().collect(),
            acls: self.acls.table(),
            nodes: self.node_count,
        }
    }

    /// Roughly the bytes a snapshot of the tree takes: paths and data, and
    /// per node its ACL index, stat and length fields.
    pub fn snapshot_size_estimate(&self) -> u64 {
        self.data_size.max(0) as u64 + 72 * self.node_count as u64
    }

    /// Drops the snapshot in progress (its writer failed).
    pub fn abort_snapshot(&mut self) {
        self.snapshot = None;
    }

    /// Encodes the next nodes of the snapshot in progress into `out`,
    /// stopping once `out` holds `budget` bytes or more.
    pub fn snapshot_chunk(&mut self, out: &mut Vec<u8>, budget: usize) -> Result<Progress, SnapshotError> {
        let mut snap = self.snapshot.take().ok_or(SnapshotError::NotStarted)?;
        while snap.next < snap.end && out.len() < budget {
            let slot = snap.next;
            snap.next += 1;
            if let Some(record) = snap.saved.remove(&slot) {
                out.extend_from_slice(&record);
                snap.emitted += 1;
            } else if let Some(node) = self.node(slot).filter(|n| n.stat.czxid <= snap.zxid) {
                self.encode_node(slot, node, out);
                snap.emitted += 1;
            }
        }
        if snap.next < snap.end {
            self.snapshot = Some(snap);
            return Ok(Progress::More);
        }
        if snap.emitted != snap.expected || !snap.saved.is_empty() {
            return Err(SnapshotError::Inconsistent { emitted: snap.emitted, expected: snap.expected });
        }
        Ok(Progress::Done)
    }

    /// Called before a change to the node in `slot`: if a snapshot is in
    /// progress and has yet to reach the node, and the node existed when it
    /// began, the node is encoded now, as the snapshot must see it.
    fn preserve(&mut self, slot: u32) {
        let Some(snap) = &self.snapshot else { return };
        if slot < snap.next || slot >= snap.end || snap.saved.contains_key(&slot) {
            return;
        }
        let Some(node) = self.node(slot).filter(|n| n.stat.czxid <= snap.zxid) else { return };
        let mut record = Vec::with_capacity(96 + node.blob.len());
        self.encode_node(slot, node, &mut record);
        if let Some(snap) = &mut self.snapshot {
            snap.saved.insert(slot, record);
        }
    }

    fn encode_node(&self, slot: u32, node: &Node, out: &mut Vec<u8>) {
        let path = self.path_of(slot);
        (path.len() as i32).write(out);
        out.extend_from_slice(path.as_bytes());
        match node.data() {
            None => (-1i32).write(out),
            Some(d) => {
                (d.len() as i32).write(out);
                out.extend_from_slice(d);
            }
        }
        (node.acl as i32).write(out);
        let s = &node.stat;
        for v in [s.czxid, s.mzxid, s.ctime, s.mtime] {
            v.write(out);
        }
        for v in [s.version, s.cversion, s.aversion] {
            v.write(out);
        }
        s.ephemeral_owner.write(out);
        s.pzxid.write(out);
    }

    /// The whole snapshot at once (tests, tools).
    pub fn write_snapshot(&mut self, out: &mut Vec<u8>) -> Result<(), SnapshotError> {
        self.begin_snapshot().write(out);
        while self.snapshot_chunk(out, usize::MAX)? == Progress::More {}
        Ok(())
    }

    pub fn read_snapshot(bytes: &[u8]) -> Result<DataTree, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut tree = DataTree::with_root();
        tree.last_zxid = r.i64()?;
        for _ in 0..r.count()? {
            let id = r.i64()?;
            tree.sessions.insert(id, r.i32()?);
        }
        let mut acl_table = Vec::new();
        for _ in 0..r.count()? {
            acl_table.push(Arc::new(Vec::<Acl>::read(&mut r)?));
        }
        // The file's ACL index → our id, interned on first use.
        let mut acl_ids: Vec<Option<u32>> = vec![None; acl_table.len()];
        let n = r.count()?;
        // A node record is at least 72 bytes; trust the count only as far
        // as the bytes left can back it.
        tree.slots.reserve(n.min(r.remaining() / 72));
        // Nodes come in the order of the arena they were taken from, where
        // a child can sit in an earlier slot than its parent. Those wait
        // until every parent is in.
        let mut waiting = Vec::new();
        for _ in 0..n {
            let offset = r.position();
            let path = String::read(&mut r)?;
            let data = r.nullable_bytes()?;
            let acl_at = r.i32()?;
            let bad_acl = DecodeError::BadLength { offset, len: acl_at };
            let acl = match acl_ids.get(acl_at as usize).ok_or(bad_acl)? {
                Some(id) => {
                    tree.acls.retain(*id);
                    *id
                }
                None => {
                    let id = tree.acls.intern(&acl_table[acl_at as usize]);
                    acl_ids[acl_at as usize] = Some(id);
                    id
                }
            };
            let stat = StatPersisted {
                czxid: r.i64()?,
                mzxid: r.i64()?,
                ctime: r.i64()?,
                mtime: r.i64()?,
                version: r.i32()?,
                cversion: r.i32()?,
                aversion: r.i32()?,
                ephemeral_owner: r.i64()?,
                pzxid: r.i64()?,
            };
            // A snapshot holds the nodes created up to its zxid and no
            // later one; a tree with a node from after it could not be
            // snapshotted again (that self-check would fail every time).
            if stat.czxid > tree.last_zxid {
                return Err(DecodeError::BadLength { offset, len: path.len() as i32 });
            }
            if !tree.load_node(&path, data, acl, stat) {
                waiting.push((offset, path, data.map(<[u8]>::to_vec), acl, stat));
            }
        }
        r.finish()?;
        waiting.sort_by_key(|(_, path, ..)| path.matches('/').count());
        for (offset, path, data, acl, stat) in waiting {
            if !tree.load_node(&path, data.as_deref(), acl, stat) {
                return Err(DecodeError::BadLength { offset, len: path.len() as i32 });
            }
        }
        if tree.node_count != n {
            // A path twice, or no root: the file does not describe a tree.
            return Err(DecodeError::BadLength { offset: bytes.len(), len: n as i32 });
        }
        Ok(tree)
    }

    /// Adds one node read from a snapshot; false when its parent is not
    /// in yet. The root replaces the placeholder `with_root` made.
    fn load_node(&mut self, path: &str, data: Option<&[u8]>, acl: u32, stat: StatPersisted) -> bool {
        if path == "/" {
            if let Some(root) = self.slots[ROOT as usize].as_mut() {
                let old = std::mem::replace(&mut root.acl, acl);
                self.data_size += data.map_or(0, |d| d.len() as i64) - root.data_len() as i64;
                root.set_data(data);
                root.stat = stat;
                self.acls.release(old);
            }
            return true;
        }
        let (Some(parent), name) = (path::parent(path), path::name(path)) else { return true };
        let Some(parent) = self.find(parent) else { return false };
        if self.child(parent, name).is_some() {
            // A duplicate: keep the first, count it against the file below.
            self.acls.release(acl);
            return true;
        }
        self.add_node(parent, path, data, acl, stat);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn hdr(zxid: i64) -> TxnHeader {
        TxnHeader { session_id: 7, cxid: 1, zxid, time: 1000 + zxid }
    }

    fn create(path: &str, kind: NodeKind, pcv: i32) -> Txn {
        Txn::Create {
            path: path.into(),
            data: Some(Bytes::from_static(b"x")),
            acl: Arc::new(acl::open_acl_unsafe()),
            kind,
            parent_cversion: pcv,
        }
    }

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

    /// Found by fuzzing the snapshot reader: a snapshot whose node was
    /// created after the snapshot's own zxid read fine, and the tree it
    /// gave could never be snapshotted again.
    #[test]
    fn a_snapshot_with_a_node_from_after_it_is_refused() {
        let mut t = DataTree::new();
        t.apply(&hdr(5), &create("/late", NodeKind::Persistent, 1), &mut Vec::new());
        let mut bytes = Vec::new();
        t.write_snapshot(&mut bytes).unwrap();
        assert!(DataTree::read_snapshot(&bytes).is_ok());
        bytes[..8].copy_from_slice(&4i64.to_be_bytes());
        assert!(DataTree::read_snapshot(&bytes).is_err(), "a node created at zxid 5 in a snapshot of zxid 4");
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
    fn snapshot_round_trips() {
        let mut t = DataTree::new();
        let mut tr = Vec::new();
        t.apply(&hdr(1), &Txn::CreateSession { timeout_ms: 3000 }, &mut tr);
        t.apply(&hdr(2), &create("/a", NodeKind::Persistent, 1), &mut tr);
        t.apply(&hdr(3), &create("/a/e", NodeKind::Ephemeral(7), 1), &mut tr);
        t.apply(&hdr(4), &create("/c", NodeKind::Container, 2), &mut tr);
        let mut bytes = Vec::new();
        t.write_snapshot(&mut bytes).unwrap();
        let u = DataTree::read_snapshot(&bytes).unwrap();
        assert_eq!(u.last_zxid(), 4);
        assert_eq!(u.sessions().collect::<Vec<_>>(), vec![(7, 3000)]);
        let mut paths: Vec<String> = u.paths().collect();
        paths.sort();
        assert_eq!(paths, ["/", "/a", "/a/e", "/c", "/zookeeper", "/zookeeper/config", "/zookeeper/quota"]);
        for p in &paths {
            assert_eq!(u.get(p).unwrap().stat(), t.get(p).unwrap().stat(), "{p}");
        }
        assert_eq!(u.ephemerals_of(7).collect::<Vec<_>>(), vec!["/a/e"]);
        assert_eq!(u.containers().count(), 1);
        assert_eq!(u.approximate_data_size(), t.approximate_data_size());
        assert!(DataTree::read_snapshot(&bytes[..bytes.len() - 3]).is_err());
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

    /// A node's data, ACL, stat and children's names.
    type Contents = (Option<Vec<u8>>, Vec<Acl>, StatPersisted, Vec<String>);

    /// Everything a snapshot records of a tree, keyed by path.
    fn contents(t: &DataTree) -> BTreeMap<String, Contents> {
        t.paths()
            .map(|p| {
                let n = t.get(&p).unwrap();
                let children = n.children().into_iter().map(str::to_string).collect();
                (p.clone(), (n.data().map(<[u8]>::to_vec), n.acl().as_ref().clone(), n.stat, children))
            })
            .collect()
    }

    /// The layout is the memory budget (see the module's notes): a slot is
    /// 112 bytes, and a free slot costs no more than a full one.
    #[test]
    fn a_slot_stays_within_its_budget() {
        assert!(std::mem::size_of::<Option<Node>>() <= 112, "{}", std::mem::size_of::<Option<Node>>());
        assert_eq!(std::mem::size_of::<IndexEntry>(), 8);
    }

    #[test]
    fn children_are_listed_sorted_and_counted() {
        let mut t = DataTree::new();
        let mut tr = Vec::new();
        for (z, name) in ["b", "a", "c"].iter().enumerate() {
            t.apply(&hdr(z as i64 + 1), &create(&format!("/{name}"), NodeKind::Persistent, z as i32 + 1), &mut tr);
        }
        t.apply(&hdr(4), &Txn::Delete { path: "/a".into() }, &mut tr);
        let root = t.get("/").unwrap();
        assert_eq!(root.children(), ["b", "c", "zookeeper"]);
        assert_eq!(root.num_children(), 3);
        assert_eq!(t.descendant_count("/"), 6, "b, c, zookeeper and its two, and the root's own key");
        assert!(t.get("/a").is_none());
        assert!(t.get("/b/").is_none() && t.get("//b").is_none() && t.get("b").is_none());
        assert_eq!(t.get("").unwrap().stat(), t.get("/").unwrap().stat());
    }

    #[test]
    fn acls_are_shared_and_freed_with_their_last_node() {
        let mut t = DataTree::new();
        let mut tr = Vec::new();
        let digest =
            Arc::new(vec![Acl { perms: 31, id: zk_wire::records::Id { scheme: "digest".into(), id: "u:h".into() } }]);
        let with_acl = |path: &str, pcv| Txn::Create {
            path: path.into(),
            data: None,
            acl: digest.clone(),
            kind: NodeKind::Persistent,
            parent_cversion: pcv,
        };
        t.apply(&hdr(1), &with_acl("/x", 1), &mut tr);
        t.apply(&hdr(2), &with_acl("/y", 2), &mut tr);
        let distinct = t.acls.ids.len();
        assert_eq!(t.get("/x").unwrap().acl(), &digest);
        assert_eq!(t.get("/x").unwrap().data(), None, "null data stays null");
        t.apply(&hdr(3), &Txn::Delete { path: "/x".into() }, &mut tr);
        assert_eq!(t.acls.ids.len(), distinct, "still used by /y");
        t.apply(&hdr(4), &Txn::Delete { path: "/y".into() }, &mut tr);
        assert_eq!(t.acls.ids.len(), distinct - 1, "freed with its last node");
    }

    /// One change to make to a tree of paths drawn from a small set, so
    /// that creates, deletes and rewrites of the same nodes interleave.
    #[derive(Debug, Clone)]
    enum Op {
        Create(usize, u8, bool),
        Delete(usize),
        SetData(usize, u8),
        SetAcl(usize),
        CloseSession,
        /// Encode this many more bytes of the snapshot in progress.
        Chunk(usize),
    }

    const PATHS: [&str; 9] = ["/a", "/a/b", "/a/c", "/a/b/d", "/e", "/e/f", "/g", "/g/h", "/g/h/i"];

    fn op() -> impl Strategy<Value = Op> {
        let at = 0..PATHS.len();
        prop_oneof![
            (at.clone(), any::<u8>(), any::<bool>()).prop_map(|(p, d, e)| Op::Create(p, d, e)),
            at.clone().prop_map(Op::Delete),
            (at.clone(), any::<u8>()).prop_map(|(p, d)| Op::SetData(p, d)),
            at.prop_map(Op::SetAcl),
            Just(Op::CloseSession),
            (1usize..400).prop_map(Op::Chunk),
        ]
    }

    fn txn_for(t: &DataTree, op: &Op) -> Option<Txn> {
        let node = |i: usize| t.get(PATHS[i]);
        Some(match *op {
            Op::Create(i, d, ephemeral) => {
                let parent = t.get(path::canonical(path::parent(PATHS[i])?))?;
                if node(i).is_some() || parent.stat.ephemeral_owner != 0 {
                    return None;
                }
                Txn::Create {
                    path: PATHS[i].into(),
                    data: Some(Bytes::from(vec![d; usize::from(d % 5)])),
                    acl: Arc::new(acl::open_acl_unsafe()),
                    kind: if ephemeral { NodeKind::Ephemeral(7) } else { NodeKind::Persistent },
                    parent_cversion: parent.stat.cversion + 1,
                }
            }
            Op::Delete(i) => {
                node(i).filter(|n| n.num_children() == 0)?;
                Txn::Delete { path: PATHS[i].into() }
            }
            Op::SetData(i, d) => {
                let version = node(i)?.stat.version + 1;
                Txn::SetData { path: PATHS[i].into(), data: (d % 3 != 0).then(|| Bytes::from(vec![d; 3])), version }
            }
            Op::SetAcl(i) => {
                let version = node(i)?.stat.aversion + 1;
                let acl = if version % 2 == 1 { acl::read_acl_unsafe() } else { acl::open_acl_unsafe() };
                Txn::SetAcl { path: PATHS[i].into(), acl: Arc::new(acl), version }
            }
            Op::CloseSession => Txn::CloseSession,
            Op::Chunk(_) => return None,
        })
    }

    proptest! {
        /// A snapshot file is checksummed before it is decoded, but the
        /// decoder must still refuse bad bytes with an error, never panic.
        #[test]
        fn arbitrary_bytes_never_panic_the_snapshot_reader(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = DataTree::read_snapshot(&bytes);
        }

        /// Flipping any byte of a real snapshot is refused or read as some
        /// tree, never a panic.
        #[test]
        fn damaged_snapshots_never_panic_the_reader(at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut t = DataTree::new();
            let mut tr = Vec::new();
            t.apply(&hdr(1), &create("/a", NodeKind::Persistent, 1), &mut tr);
            t.apply(&hdr(2), &create("/a/b", NodeKind::Ephemeral(7), 1), &mut tr);
            let mut bytes = Vec::new();
            t.write_snapshot(&mut bytes).unwrap();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let _ = DataTree::read_snapshot(&bytes);
        }

        /// Writes applied between a snapshot's chunks never leak into it:
        /// the snapshot reads back as exactly the tree at its zxid.
        #[test]
        fn a_snapshot_is_the_tree_as_of_its_zxid_whatever_is_written_during_it(
            before in prop::collection::vec(op(), 0..40),
            during in prop::collection::vec(op(), 0..60),
        ) {
            let mut t = DataTree::new();
            let mut zxid = 0;
            let mut apply = |t: &mut DataTree, op: &Op| {
                if let Some(txn) = txn_for(t, op) {
                    zxid += 1;
                    t.apply(&hdr(zxid), &txn, &mut Vec::new());
                }
            };
            for op in &before {
                apply(&mut t, op);
            }
            let expected = contents(&t);
            let mut bytes = Vec::new();
            t.begin_snapshot().write(&mut bytes);
            let mut done = false;
            for op in &during {
                match op {
                    Op::Chunk(n) if !done => {
                        let budget = bytes.len() + n;
                        done = t.snapshot_chunk(&mut bytes, budget).unwrap() == Progress::Done;
                    }
                    op => apply(&mut t, op),
                }
            }
            while !done {
                done = t.snapshot_chunk(&mut bytes, usize::MAX).unwrap() == Progress::Done;
            }
            let loaded = DataTree::read_snapshot(&bytes).unwrap();
            prop_assert_eq!(contents(&loaded), expected);
            prop_assert!(t.snapshot.is_none());
        }
    }
}
