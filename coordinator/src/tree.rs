//! The data tree: znodes, their stats and ACLs, and the indexes the server
//! needs (ephemerals by session, containers, TTL nodes).
//!
//! Pure and synchronous: no sockets, no clocks, no locks. Changes enter only
//! through [`DataTree::apply`], which is what the write-ahead log replays.
//! Watches are not kept here; `apply` reports what fired as [`Trigger`]s and
//! the caller delivers them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
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

#[derive(Debug, Clone)]
pub struct Node {
    /// `None` is distinct from empty: a node created with null data reads
    /// back as null.
    pub data: Option<Bytes>,
    /// Shared between nodes with the same ACL (most share one).
    pub acl: Arc<Vec<Acl>>,
    pub stat: StatPersisted,
    /// Sorted, so listings are deterministic.
    pub children: BTreeSet<Box<str>>,
}

impl Node {
    fn new(data: Option<Bytes>, acl: Arc<Vec<Acl>>, stat: StatPersisted) -> Self {
        Node { data, acl, stat, children: BTreeSet::new() }
    }

    pub fn kind(&self) -> NodeKind {
        NodeKind::from_owner(self.stat.ephemeral_owner)
    }

    /// The stat as clients see it.
    pub fn stat(&self) -> Stat {
        let num_children = self.children.len() as i32;
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
            data_length: self.data.as_ref().map_or(0, |d| d.len() as i32),
            num_children,
            pzxid: self.stat.pzxid,
        }
    }
}

/// A watch trigger produced by a change, for the watch manager to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Created(String),
    Deleted(String),
    DataChanged(String),
    ChildrenChanged(String),
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

#[derive(Debug)]
pub struct DataTree {
    nodes: HashMap<Box<str>, Node>,
    ephemerals: HashMap<i64, BTreeSet<String>>,
    containers: BTreeSet<String>,
    ttls: BTreeSet<String>,
    /// Open sessions and their timeouts (ms), as the log has them: kept in
    /// the tree so a snapshot of the tree is a consistent snapshot of both.
    sessions: BTreeMap<i64, i32>,
    /// Distinct ACLs, shared by every node that has one (most nodes share
    /// a handful), which keeps a large tree small.
    acls: HashMap<Vec<Acl>, Arc<Vec<Acl>>>,
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
        let open = Arc::new(acl::open_acl_unsafe());
        let empty = || Some(Bytes::new());
        let mut nodes = HashMap::new();
        let mut root = Node::new(empty(), open.clone(), StatPersisted::default());
        root.children.insert("zookeeper".into());
        let mut proc_node = Node::new(empty(), open.clone(), StatPersisted::default());
        proc_node.children.insert("quota".into());
        proc_node.children.insert("config".into());
        let quota = Node::new(empty(), open, StatPersisted::default());
        let config = Node::new(
            empty(),
            Arc::new(acl::read_acl_unsafe()),
            StatPersisted { aversion: -1, ..StatPersisted::default() },
        );
        nodes.insert("/".into(), root);
        nodes.insert("/zookeeper".into(), proc_node);
        nodes.insert("/zookeeper/quota".into(), quota);
        nodes.insert("/zookeeper/config".into(), config);
        let mut tree = DataTree {
            nodes,
            ephemerals: HashMap::new(),
            containers: BTreeSet::new(),
            ttls: BTreeSet::new(),
            sessions: BTreeMap::new(),
            acls: HashMap::new(),
            last_zxid: 0,
            data_size: 0,
        };
        tree.data_size = tree.nodes.keys().map(|k| k.len() as i64).sum();
        tree
    }

    /// The node at `path`; "" is the root's alias, as in ZooKeeper.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path::canonical(path))
    }

    pub fn last_zxid(&self) -> i64 {
        self.last_zxid
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
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

    /// Every path, in no particular order (for `dump`, snapshots, the admin API).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(|k| &**k)
    }

    /// The number of descendants of `path` (getAllChildrenNumber). ZooKeeper
    /// counts the keys that start with `path + "/"`; for the root that
    /// includes the root's own "/" key, and we answer the same.
    pub fn descendant_count(&self, path: &str) -> i32 {
        let Some(node) = self.get(path) else { return 0 };
        let mut count = 0i32;
        let mut stack: Vec<(String, &Node)> = vec![(path::canonical(path).to_string(), node)];
        while let Some((p, n)) = stack.pop() {
            for child in &n.children {
                let cp = path::join(&p, child);
                if let Some(cn) = self.nodes.get(cp.as_str()) {
                    count += 1;
                    stack.push((cp, cn));
                }
            }
        }
        if path::canonical(path) == "/" {
            count += 1;
        }
        count
    }

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
                let created = |p: &String| self.nodes.get(p.as_str()).map_or(0, |n| n.stat.czxid);
                order_like_zookeeper_close(&mut paths, created);
                for p in paths {
                    self.delete_node(&p, hdr.zxid, triggers);
                }
                TxnResult::SessionClosed
            }
            Txn::Create { path, data, acl, kind, parent_cversion } => {
                match self.create_node(path, data.clone(), acl.clone(), *kind, *parent_cversion, hdr, triggers) {
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
                let Some(node) = self.nodes.get_mut(path.as_str()) else {
                    return TxnResult::Error(ErrorCode::NoNode);
                };
                let old = node.data.as_ref().map_or(0, |d| d.len() as i64);
                node.data = data.clone();
                node.stat.mtime = hdr.time;
                node.stat.mzxid = hdr.zxid;
                node.stat.version = *version;
                let stat = node.stat();
                self.data_size += data.as_ref().map_or(0, |d| d.len() as i64) - old;
                triggers.push(Trigger::DataChanged(path.clone()));
                TxnResult::Stat(stat)
            }
            Txn::SetAcl { path, acl, version } => {
                let acl = self.intern(acl);
                let Some(node) = self.nodes.get_mut(path.as_str()) else {
                    return TxnResult::Error(ErrorCode::NoNode);
                };
                node.acl = acl;
                node.stat.aversion = *version;
                TxnResult::Stat(node.stat())
            }
            Txn::Check { .. } => TxnResult::Checked,
            Txn::Multi(txns) => TxnResult::Multi(txns.iter().map(|t| self.apply_inner(hdr, t, triggers)).collect()),
            Txn::MultiError(codes) => TxnResult::MultiError(codes.clone()),
            Txn::Error(code) => TxnResult::Error(*code),
        }
    }

    fn intern(&mut self, acl: &Arc<Vec<Acl>>) -> Arc<Vec<Acl>> {
        if let Some(shared) = self.acls.get(acl.as_ref()) {
            return shared.clone();
        }
        self.acls.insert(acl.as_ref().clone(), acl.clone());
        acl.clone()
    }

    /// Open sessions (id, timeout ms) as of the last applied txn.
    pub fn sessions(&self) -> impl Iterator<Item = (i64, i32)> + '_ {
        self.sessions.iter().map(|(k, v)| (*k, *v))
    }

    #[allow(clippy::too_many_arguments)]
    fn create_node(
        &mut self,
        path: &str,
        data: Option<Bytes>,
        acl: Arc<Vec<Acl>>,
        kind: NodeKind,
        parent_cversion: i32,
        hdr: &TxnHeader,
        triggers: &mut Vec<Trigger>,
    ) -> Result<Stat, ErrorCode> {
        let (Some(parent_path), name) = (path::parent(path), path::name(path)) else {
            return Err(ErrorCode::BadArguments);
        };
        let parent_path = path::canonical(parent_path);
        let parent = self.nodes.get_mut(parent_path).ok_or(ErrorCode::NoNode)?;
        if parent.children.contains(name) {
            return Err(ErrorCode::NodeExists);
        }
        if parent_cversion > parent.stat.cversion {
            parent.stat.cversion = parent_cversion;
            parent.stat.pzxid = hdr.zxid;
        }
        parent.children.insert(name.into());
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
        self.data_size += path.len() as i64 + data.as_ref().map_or(0, |d| d.len() as i64);
        let node = Node::new(data, acl, stat);
        let client_stat = node.stat();
        self.nodes.insert(path.into(), node);
        match kind {
            NodeKind::Ephemeral(session) => {
                self.ephemerals.entry(session).or_default().insert(path.to_string());
            }
            NodeKind::Container => {
                self.containers.insert(path.to_string());
            }
            NodeKind::Ttl(_) => {
                self.ttls.insert(path.to_string());
            }
            NodeKind::Persistent => {}
        }
        triggers.push(Trigger::Created(path.to_string()));
        triggers.push(Trigger::ChildrenChanged(parent_path.to_string()));
        Ok(client_stat)
    }

    fn delete_node(&mut self, path: &str, zxid: i64, triggers: &mut Vec<Trigger>) -> bool {
        let Some(parent_path) = path::parent(path).map(path::canonical) else {
            return false;
        };
        let Some(node) = self.nodes.remove(path) else {
            return false;
        };
        if let Some(parent) = self.nodes.get_mut(parent_path) {
            parent.children.remove(path::name(path));
            if zxid > parent.stat.pzxid {
                parent.stat.pzxid = zxid;
            }
        }
        self.data_size -= path.len() as i64 + node.data.as_ref().map_or(0, |d| d.len() as i64);
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
        triggers.push(Trigger::Deleted(path.to_string()));
        triggers.push(Trigger::ChildrenChanged(parent_path.to_string()));
        true
    }
}

// ---- snapshots ---------------------------------------------------------------
//
// A snapshot is the whole tree in jute: last zxid, sessions, the distinct
// ACLs, then every node with its ACL as an index into that table. Parents
// and children are not written: they follow from the paths.

use zk_wire::codec::{DecodeError, Jute, Reader};

/// A consistent copy of the tree's index as of one zxid (see
/// [`DataTree::snapshot_view`]), to be encoded off the lock.
pub struct SnapshotView {
    last_zxid: i64,
    sessions: Vec<(i64, i32)>,
    nodes: Vec<SnapshotNode>,
    data_size: u64,
}

/// One node as a snapshot holds it: path, data, ACL, stat (children
/// follow from the paths).
type SnapshotNode = (Box<str>, Option<Bytes>, Arc<Vec<Acl>>, StatPersisted);

impl SnapshotView {
    pub fn last_zxid(&self) -> i64 {
        self.last_zxid
    }

    /// Roughly the encoded size, to allocate once.
    pub fn approximate_size(&self) -> usize {
        self.data_size as usize + 96 * self.nodes.len()
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        self.last_zxid.write(out);
        (self.sessions.len() as i32).write(out);
        for (id, timeout) in &self.sessions {
            id.write(out);
            timeout.write(out);
        }
        let mut acl_index: HashMap<*const Vec<Acl>, i32> = HashMap::new();
        let mut acl_table: Vec<&Arc<Vec<Acl>>> = Vec::new();
        for (_, _, acl, _) in &self.nodes {
            acl_index.entry(Arc::as_ptr(acl)).or_insert_with(|| {
                acl_table.push(acl);
                (acl_table.len() - 1) as i32
            });
        }
        (acl_table.len() as i32).write(out);
        for acl in &acl_table {
            acl.as_ref().write(out);
        }
        (self.nodes.len() as i32).write(out);
        for (path, data, acl, s) in &self.nodes {
            path.to_string().write(out);
            match data {
                None => (-1i32).write(out),
                Some(d) => {
                    (d.len() as i32).write(out);
                    out.extend_from_slice(d);
                }
            }
            acl_index.get(&Arc::as_ptr(acl)).copied().unwrap_or(0).write(out);
            for v in [s.czxid, s.mzxid, s.ctime, s.mtime] {
                v.write(out);
            }
            for v in [s.version, s.cversion, s.aversion] {
                v.write(out);
            }
            s.ephemeral_owner.write(out);
            s.pzxid.write(out);
        }
    }
}

impl DataTree {
    pub fn write_snapshot(&self, out: &mut Vec<u8>) {
        self.snapshot_view().write(out);
    }

    /// What a snapshot needs, copied out of the tree. Node data is
    /// reference-counted, so this copies the index (paths, stats, pointers),
    /// not the data: the caller holds the tree's lock for the copy only,
    /// and encodes the snapshot after releasing it. Encoding a large tree
    /// under the lock would stall every writer for as long as it takes.
    pub fn snapshot_view(&self) -> SnapshotView {
        SnapshotView {
            last_zxid: self.last_zxid,
            sessions: self.sessions.iter().map(|(id, t)| (*id, *t)).collect(),
            nodes: self.nodes.iter().map(|(p, n)| (p.clone(), n.data.clone(), n.acl.clone(), n.stat)).collect(),
            data_size: self.data_size.max(0) as u64,
        }
    }

    pub fn read_snapshot(bytes: &[u8]) -> Result<DataTree, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut tree = DataTree {
            nodes: HashMap::new(),
            ephemerals: HashMap::new(),
            containers: BTreeSet::new(),
            ttls: BTreeSet::new(),
            sessions: BTreeMap::new(),
            acls: HashMap::new(),
            last_zxid: r.i64()?,
            data_size: 0,
        };
        for _ in 0..r.count()? {
            let id = r.i64()?;
            tree.sessions.insert(id, r.i32()?);
        }
        let mut acl_table = Vec::new();
        for _ in 0..r.count()? {
            let acl = Arc::new(Vec::<Acl>::read(&mut r)?);
            tree.acls.insert(acl.as_ref().clone(), acl.clone());
            acl_table.push(acl);
        }
        let n = r.count()?;
        tree.nodes.reserve(n);
        for _ in 0..n {
            let offset = r.position();
            let path = String::read(&mut r)?;
            let data = r.nullable_bytes()?.map(Bytes::copy_from_slice);
            let acl_at = r.i32()?;
            let acl = acl_table.get(acl_at as usize).cloned().ok_or(DecodeError::BadLength { offset, len: acl_at })?;
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
            tree.data_size += path.len() as i64 + data.as_ref().map_or(0, |d| d.len() as i64);
            let node = Node::new(data, acl, stat);
            match node.kind() {
                NodeKind::Ephemeral(owner) => {
                    tree.ephemerals.entry(owner).or_default().insert(path.clone());
                }
                NodeKind::Container => {
                    tree.containers.insert(path.clone());
                }
                NodeKind::Ttl(_) => {
                    tree.ttls.insert(path.clone());
                }
                NodeKind::Persistent => {}
            }
            tree.nodes.insert(path.into(), node);
        }
        r.finish()?;
        // Children follow from the paths.
        let paths: Vec<Box<str>> = tree.nodes.keys().filter(|p| &***p != "/").cloned().collect();
        for p in paths {
            if let Some(parent) = path::parent(&p).map(path::canonical) {
                if let Some(parent) = tree.nodes.get_mut(parent) {
                    parent.children.insert(path::name(&p).into());
                }
            }
        }
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn close_session_deletes_its_ephemerals_and_fires() {
        let mut t = DataTree::new();
        let mut tr = Vec::new();
        t.apply(&hdr(1), &create("/e", NodeKind::Ephemeral(7), 1), &mut tr);
        assert_eq!(t.get("/e").unwrap().stat().ephemeral_owner, 7);
        tr.clear();
        t.apply(&hdr(2), &Txn::CloseSession, &mut tr);
        assert!(t.get("/e").is_none());
        assert_eq!(tr, vec![Trigger::Deleted("/e".into()), Trigger::ChildrenChanged("/".into())]);
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
        t.write_snapshot(&mut bytes);
        let u = DataTree::read_snapshot(&bytes).unwrap();
        assert_eq!(u.last_zxid(), 4);
        assert_eq!(u.sessions().collect::<Vec<_>>(), vec![(7, 3000)]);
        let mut paths: Vec<&str> = u.paths().collect();
        paths.sort();
        assert_eq!(paths, ["/", "/a", "/a/e", "/c", "/zookeeper", "/zookeeper/config", "/zookeeper/quota"]);
        for p in paths {
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
}
