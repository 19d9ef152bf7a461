//! Snapshots: the format, the header fixed when one begins, the chunked
//! encoding while writes go on, and reading one back into a tree.
//!
//! A snapshot is the whole tree in jute: last zxid, sessions, the ACL table,
//! the node count, then every node (path, data, ACL as an index into the
//! table, stat) in no particular order. Parents and children are not
//! written: they follow from the paths.
//!
//! The cursor that walks the arena and the records it keeps for nodes
//! changed ahead of it live in [the arena](super::arena), next to the one
//! way to change a node, so that no change can skip them. The arena does
//! not know the format: a snapshot hands it [`encode_node`] when it begins,
//! so this codec sits above the arena and the arena names nothing above it.

use std::sync::Arc;

use zk_wire::codec::{DecodeError, Jute, Reader};
use zk_wire::records::Acl;

use super::arena::{Progress, SnapshotError, ROOT};
use super::node::{Node, StatPersisted};
use super::DataTree;
use crate::path;

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

/// One node's record: path, data, ACL id (the index into the header's
/// table, which is the ACL table as it stood), stat.
fn encode_node(path: &str, node: &Node, out: &mut Vec<u8>) {
    zk_wire::codec::write_str(out, path);
    zk_wire::codec::write_nullable_bytes(out, node.data());
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

impl DataTree {
    /// Fixes the zxid a snapshot will describe and returns its header; the
    /// nodes follow from [`snapshot_chunk`](Self::snapshot_chunk). Writes
    /// may be applied between the calls. A snapshot already in progress is
    /// abandoned.
    pub fn begin_snapshot(&mut self) -> SnapshotHeader {
        self.arena.freeze(self.last_zxid, encode_node);
        SnapshotHeader {
            zxid: self.last_zxid,
            sessions: self.sessions().collect(),
            acls: self.acls.table(),
            nodes: self.arena.count(),
        }
    }

    /// Roughly the bytes a snapshot of the tree takes: paths and data, and
    /// per node its ACL index, stat and length fields.
    pub fn snapshot_size_estimate(&self) -> u64 {
        self.data_size.max(0) as u64 + 72 * self.arena.count() as u64
    }

    /// Drops the snapshot in progress (its writer failed).
    pub fn abort_snapshot(&mut self) {
        self.arena.thaw();
    }

    /// Encodes the next nodes of the snapshot in progress into `out`,
    /// stopping once `out` holds `budget` bytes or more.
    pub fn snapshot_chunk(&mut self, out: &mut Vec<u8>, budget: usize) -> Result<Progress, SnapshotError> {
        self.arena.encode_frozen(out, budget)
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
        // No transaction has a negative zxid; a tree "as of" one would hold
        // a root created after it, and could never be snapshotted again.
        if tree.last_zxid < 0 {
            return Err(DecodeError::BadLength { offset: 0, len: -1 });
        }
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
        tree.arena.reserve(n.min(r.remaining() / 72));
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
        if tree.arena.count() != n {
            // A path twice, or no root: the file does not describe a tree.
            return Err(DecodeError::BadLength { offset: bytes.len(), len: n as i32 });
        }
        Ok(tree)
    }

    /// Adds one node read from a snapshot; false when its parent is not
    /// in yet. The root replaces the placeholder `with_root` made.
    fn load_node(&mut self, path: &str, data: Option<&[u8]>, acl: u32, stat: StatPersisted) -> bool {
        if path == "/" {
            // No snapshot is in progress in a tree being read, so the edit
            // preserves nothing; it is still the way to change a node.
            if let Some(root) = self.arena.edit(ROOT) {
                let old = std::mem::replace(&mut root.acl, acl);
                self.data_size += data.map_or(0, |d| d.len() as i64) - root.data_len() as i64;
                root.set_data(data);
                root.stat = stat;
                self.acls.release(old);
            }
            return true;
        }
        let (Some(parent), name) = (path::parent(path), path::name(path)) else { return true };
        let Some(parent) = self.arena.find(parent) else { return false };
        if self.arena.child(parent, name).is_some() {
            // A duplicate: keep the first, count it against the file below.
            self.acls.release(acl);
            return true;
        }
        // A name its parent's block has no room for stays out, and the
        // count check in `read_snapshot` refuses the file.
        if self.add_node(parent, path, data, acl, stat).is_none() {
            self.acls.release(acl);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::super::testing::{create, hdr};
    use super::*;
    use crate::acl;
    use crate::tree::TxnResult;
    use crate::txn::{NodeKind, Txn};

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

    /// Found by fuzzing too: a snapshot of a negative zxid whose root
    /// record was from "before" it read fine, and snapshotting that tree
    /// again emitted no node ("Inconsistent { emitted: 0, expected: 1 }").
    /// The fuzzer's input, as the tree reader sees it.
    #[test]
    fn a_snapshot_of_a_negative_zxid_is_refused() {
        #[rustfmt::skip]
        const FOUND: &[u8] = &[255, 255, 255, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 248, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 252, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 127, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 45, 0, 140, 0, 0, 105];
        assert!(i64::from_be_bytes(FOUND[..8].try_into().unwrap()) < 0);
        assert!(DataTree::read_snapshot(FOUND).is_err(), "a snapshot as of a negative zxid");
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

    /// A node's data, ACL, stat and children's names.
    type Contents = (Option<Vec<u8>>, Vec<Acl>, StatPersisted, Vec<String>);

    /// Everything a snapshot records of a tree, keyed by path.
    fn contents(t: &DataTree) -> BTreeMap<String, Contents> {
        t.paths()
            .map(|p| {
                let n = t.get(&p).unwrap();
                // In no promised order: a tree read back lists them in the
                // order the snapshot held them.
                let mut children: Vec<String> = n.children().iter().map(str::to_string).collect();
                children.sort_unstable();
                (p.clone(), (n.data().map(<[u8]>::to_vec), n.acl().as_ref().clone(), n.stat, children))
            })
            .collect()
    }

    /// Applies `txn` as the next zxid and fails the test if any part of it
    /// did not apply: a change that silently did nothing would prove
    /// nothing about the snapshot.
    fn apply_ok(t: &mut DataTree, txn: Txn) {
        fn failed(r: &TxnResult) -> bool {
            match r {
                TxnResult::Error(_) | TxnResult::MultiError(_) => true,
                TxnResult::Multi(rs) => rs.iter().any(failed),
                _ => false,
            }
        }
        let r = t.apply(&hdr(t.last_zxid() + 1), &txn, &mut Vec::new());
        assert!(!failed(&r), "{txn:?} gave {r:?}");
    }

    /// Creates `path` with data "x", as the next child of its parent.
    fn create_ok(t: &mut DataTree, path: &str, kind: NodeKind) {
        let parent = path::parent(path).map(path::canonical).and_then(|p| t.get(p)).expect("parent");
        let txn = create(path, kind, parent.stat.cversion + 1);
        apply_ok(t, txn);
    }

    /// Every kind of txn that changes nodes, applied between chunks to
    /// nodes the cursor has yet to reach: each must leave the snapshot as
    /// the tree was when it began. This is what `Arena::edit` and
    /// `Arena::remove` preserving first guarantees; take that out of either
    /// and this fails.
    #[test]
    fn every_kind_of_txn_between_chunks_leaves_the_snapshot_as_it_began() {
        let mut t = DataTree::new();
        apply_ok(&mut t, Txn::CreateSession { timeout_ms: 3000 });
        for (path, kind) in [
            ("/p", NodeKind::Persistent),
            ("/p/e1", NodeKind::Ephemeral(7)),
            ("/p/e2", NodeKind::Ephemeral(7)),
            ("/q", NodeKind::Persistent),
            ("/q/old", NodeKind::Persistent),
            ("/r", NodeKind::Persistent),
            ("/s", NodeKind::Container),
            ("/s/u", NodeKind::Persistent),
            ("/locked", NodeKind::Persistent),
        ] {
            create_ok(&mut t, path, kind);
        }
        let expected = contents(&t);
        let sessions: Vec<_> = t.sessions().collect();

        let mut bytes = Vec::new();
        t.begin_snapshot().write(&mut bytes);
        // One node per chunk: a budget one byte past what is written
        // stops after the next record. The cursor is now past the root
        // only, so every node changed below is ahead of it.
        let step = |t: &mut DataTree, bytes: &mut Vec<u8>| t.snapshot_chunk(bytes, bytes.len() + 1).unwrap();
        assert_eq!(step(&mut t, &mut bytes), Progress::More);

        // A create under a parent ahead of the cursor (its cversion and
        // pzxid change), a delete, and a create that takes the freed slot.
        create_ok(&mut t, "/q/new", NodeKind::Persistent);
        let old = t.arena.find("/q/old");
        apply_ok(&mut t, Txn::Delete { path: "/q/old".into() });
        create_ok(&mut t, "/q/reused", NodeKind::Ephemeral(7));
        assert_eq!(t.arena.find("/q/reused"), old, "a new node in the slot the snapshot still owes");
        apply_ok(&mut t, Txn::SetData { path: "/r".into(), data: Some(Bytes::from_static(b"later")), version: 1 });
        let read_only = Arc::new(acl::read_acl_unsafe());
        apply_ok(&mut t, Txn::SetAcl { path: "/locked".into(), acl: read_only, version: 1 });
        assert_eq!(step(&mut t, &mut bytes), Progress::More);
        // Deletes /p/e1, /p/e2 and /q/reused, and changes /p's pzxid.
        apply_ok(&mut t, Txn::CloseSession);
        let s = t.get("/s").expect("/s").stat;
        apply_ok(
            &mut t,
            Txn::Multi(vec![
                Txn::Check { path: "/s".into() },
                Txn::SetData { path: "/s".into(), data: None, version: s.version + 1 },
                create("/s/t", NodeKind::Persistent, s.cversion + 1),
                Txn::Delete { path: "/s/u".into() },
            ]),
        );
        apply_ok(&mut t, Txn::CreateSession { timeout_ms: 5000 });
        // The root is behind the cursor: the snapshot has it already, and
        // changing it now must not add a second record.
        let root = t.get("/").expect("root").stat;
        apply_ok(
            &mut t,
            Txn::SetData { path: "/".into(), data: Some(Bytes::from_static(b"r")), version: root.version + 1 },
        );

        assert_ne!(contents(&t), expected, "the changes reached the live tree");
        while t.snapshot_chunk(&mut bytes, usize::MAX).unwrap() == Progress::More {}
        let loaded = DataTree::read_snapshot(&bytes).unwrap();
        assert_eq!(contents(&loaded), expected);
        assert_eq!(loaded.sessions().collect::<Vec<_>>(), sessions);
    }

    /// One change to make to a tree of paths drawn from a small set, so
    /// that creates, deletes and rewrites of the same nodes interleave.
    #[derive(Debug, Clone)]
    enum Op {
        Create(usize, u8, bool),
        Delete(usize),
        SetData(usize, u8),
        SetAcl(usize),
        CreateSession,
        CloseSession,
        /// Several of the changes above as one txn, each made to the tree
        /// as the ones before it in the multi left it.
        Multi(Vec<Op>),
        /// Encode this many more bytes of the snapshot in progress.
        Chunk(usize),
    }

    const PATHS: [&str; 9] = ["/a", "/a/b", "/a/c", "/a/b/d", "/e", "/e/f", "/g", "/g/h", "/g/h/i"];

    /// A change to one node, as a multi may hold.
    fn node_op() -> impl Strategy<Value = Op> {
        let at = 0..PATHS.len();
        prop_oneof![
            (at.clone(), any::<u8>(), any::<bool>()).prop_map(|(p, d, e)| Op::Create(p, d, e)),
            at.clone().prop_map(Op::Delete),
            (at.clone(), any::<u8>()).prop_map(|(p, d)| Op::SetData(p, d)),
            at.prop_map(Op::SetAcl),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => node_op(),
            1 => Just(Op::CreateSession),
            1 => Just(Op::CloseSession),
            1 => prop::collection::vec(node_op(), 1..5).prop_map(Op::Multi),
            2 => (1usize..400).prop_map(Op::Chunk),
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
            Op::CreateSession => Txn::CreateSession { timeout_ms: 3000 },
            Op::CloseSession => Txn::CloseSession,
            Op::Multi(ref ops) => {
                // Each txn of a multi is prepared against the tree as the
                // earlier ones leave it: a scratch copy they are applied to.
                let mut scratch = t.clone();
                let mut txns = Vec::new();
                for op in ops {
                    if let Some(txn) = txn_for(&scratch, op) {
                        scratch.apply(&hdr(scratch.last_zxid() + 1), &txn, &mut Vec::new());
                        txns.push(txn);
                    }
                }
                if txns.is_empty() {
                    return None;
                }
                Txn::Multi(txns)
            }
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
            let sessions: Vec<_> = t.sessions().collect();
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
            prop_assert_eq!(loaded.sessions().collect::<Vec<_>>(), sessions);
            prop_assert!(!t.arena.is_frozen());
        }
    }
}
