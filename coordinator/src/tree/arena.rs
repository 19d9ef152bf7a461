//! The arena: every node in a slot of one `Vec`, linked to its parent by
//! slot number; each parent's block of children's names; the path index
//! over them; and the copy-on-write that keeps a snapshot in progress
//! exact.
//!
//! # Copy-on-write by construction
//!
//! While a snapshot is being encoded (see the tree's module notes), a node
//! the cursor has not reached yet must be encoded as it was when the
//! snapshot began, before its first change. Were that a call each change
//! had to remember, the one change that forgot it would make snapshots
//! silently wrong: the tree would read fine, and only a recovery from that
//! snapshot would show a node with a later zxid's data, or no node at all.
//!
//! So the arena is the only owner of nodes, and it hands out a node to
//! change in one place: [`Arena::edit`], which preserves the node first.
//! [`Arena::remove`] preserves too. Everything else the arena does to a
//! node only moves its [`Links`] (a child added or removed changes the
//! parent's count and block of names, and rewriting a block renumbers its
//! children's offsets into it), which a snapshot does not record: it writes paths, not links, and a node's path
//! is the same for its whole life (nodes are never renamed, and a parent
//! outlives its children), so a record encoded early or late names the
//! same node. The slots, the raw `node_mut` and the snapshot's state are
//! private to this module, so code elsewhere in the tree cannot reach a
//! node to change it without going through `edit`: the compiler, not a
//! reviewer, keeps snapshots right.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use super::names::Names;
use super::node::{Links, Node, StatPersisted, NIL};
use crate::path;

/// The root is created first and never removed.
pub(super) const ROOT: u32 = 0;

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

#[derive(Debug, Clone)]
pub(super) struct Arena {
    /// A `None` slot is free and listed in `free`.
    slots: Vec<Option<Node>>,
    free: Vec<u32>,
    /// The blocks of children's names, one per node that has children, by
    /// the id in its `Links::names`. A block is freed (emptied and listed
    /// in `free_names`) when its last child goes.
    names: Vec<Names>,
    free_names: Vec<u32>,
    /// (parent slot, name) → slot.
    index: HashTable<IndexEntry>,
    hasher: RandomState,
    count: usize,
    /// The snapshot being encoded, if any. It lives here, beside the
    /// slots, so that `edit` and `remove` can see it.
    snapshot: Option<Frozen>,
}

/// How a snapshot writes one node's record: its path, data, ACL id and
/// stat into `out`.
///
/// The format is the snapshot codec's (`snapshot::encode_node`); the arena
/// is handed it when a snapshot begins instead of naming it, so the codec
/// sits above the arena and the arena knows only *when* a node must be
/// encoded (before its first change, or when the cursor reaches it), never
/// how.
pub(super) type EncodeNode = fn(path: &str, node: &Node, out: &mut Vec<u8>);

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

/// A snapshot in progress: the zxid it describes, how far its cursor is,
/// and the nodes changed ahead of the cursor, encoded as they were at that
/// zxid.
#[derive(Debug, Clone)]
struct Frozen {
    zxid: i64,
    encode: EncodeNode,
    /// The next slot the cursor encodes.
    next: u32,
    /// Slots at or past this one were empty when the snapshot began.
    end: u32,
    saved: HashMap<u32, Vec<u8>>,
    /// Nodes the arena held when the snapshot began, and nodes encoded so
    /// far: equal at the end, or the snapshot is wrong.
    expected: usize,
    emitted: usize,
}

impl Arena {
    /// An arena with just the root, with empty data and `root_acl`.
    pub(super) fn new(root_acl: u32) -> Self {
        let root = Node::new(Some(b""), root_acl, StatPersisted::default(), Links::under(NIL, 0));
        Arena {
            slots: vec![Some(root)],
            free: Vec::new(),
            names: Vec::new(),
            free_names: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            count: 1,
            snapshot: None,
        }
    }

    pub(super) fn node(&self, slot: u32) -> Option<&Node> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// A node to change, with no regard for a snapshot in progress: for
    /// links only. Content changes go through [`edit`](Self::edit).
    fn node_mut(&mut self, slot: u32) -> Option<&mut Node> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// The node in `slot`, to change its content (data, stat, ACL id).
    /// A snapshot in progress keeps the node as it was first: this is the
    /// one way to a `&mut Node` outside the arena.
    pub(super) fn edit(&mut self, slot: u32) -> Option<&mut Node> {
        self.preserve(slot);
        self.node_mut(slot)
    }

    /// The number of nodes.
    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// Makes room for `additional` more nodes.
    pub(super) fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
    }

    /// Every node with its slot, in slot order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Node)> {
        self.slots.iter().enumerate().filter_map(|(s, n)| Some((s as u32, n.as_ref()?)))
    }

    fn hash(&self, parent: u32, name: &[u8]) -> u32 {
        self.hasher.hash_one((parent, name)) as u32
    }

    /// The block of `slot`'s children's names, if it has children.
    pub(super) fn names_of(&self, slot: u32) -> Option<&Names> {
        self.names.get(self.node(slot)?.links.names as usize)
    }

    /// The last component of the node's path ("" for the root): its entry
    /// in its parent's block.
    pub(super) fn name_of(&self, slot: u32) -> &[u8] {
        let Some(links) = self.node(slot).map(|n| &n.links) else { return b"" };
        self.names_of(links.parent).map_or(b"", |names| names.get(links.name_at))
    }

    pub(super) fn child(&self, parent: u32, name: &str) -> Option<u32> {
        let names = self.names_of(parent)?;
        let hash = self.hash(parent, name.as_bytes());
        let matches = |e: &IndexEntry| {
            e.hash == hash
                && self
                    .node(e.slot)
                    .is_some_and(|n| n.links.parent == parent && names.get(n.links.name_at) == name.as_bytes())
        };
        self.index.find(widen(hash), matches).map(|e| e.slot)
    }

    /// The slot of the node at `path`; "" is the root's alias.
    pub(super) fn find(&self, path: &str) -> Option<u32> {
        let path = path::canonical(path);
        if path == "/" {
            return Some(ROOT);
        }
        path.strip_prefix('/')?.split('/').try_fold(ROOT, |at, name| self.child(at, name))
    }

    /// The slots of `slot`'s children, each found through the index by its
    /// name: for walks of a subtree, which are rare, and which a listing
    /// (names only) never needs.
    pub(super) fn children_of(&self, slot: u32) -> impl Iterator<Item = u32> + '_ {
        let names = self.names_of(slot);
        names.into_iter().flat_map(Names::live).filter_map(move |(at, name)| self.child_at(slot, at, name))
    }

    /// The child of `parent` whose entry is at `at` in its block, found by
    /// its `name` without comparing names: the offset names one child.
    fn child_at(&self, parent: u32, at: u32, name: &[u8]) -> Option<u32> {
        let hash = self.hash(parent, name);
        let matches = |e: &IndexEntry| {
            e.hash == hash && self.node(e.slot).is_some_and(|n| n.links.parent == parent && n.links.name_at == at)
        };
        self.index.find(widen(hash), matches).map(|e| e.slot)
    }

    /// The full path of the node in `slot`: its names up to the root.
    pub(super) fn path_of(&self, slot: u32) -> String {
        let mut names = Vec::new();
        let mut at = slot;
        while let Some(n) = self.node(at) {
            if n.links.parent == NIL {
                break;
            }
            names.push(self.name_of(at));
            at = n.links.parent;
        }
        if names.is_empty() {
            return "/".to_string();
        }
        let mut path = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for name in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(name);
        }
        // Names enter only as `&str`, so this never falls back.
        String::from_utf8(path).unwrap_or_default()
    }

    /// Whether `parent`'s block of names has room for `name` (see
    /// `names::MAX_BYTES`).
    pub(super) fn has_room(&self, parent: u32, name: &str) -> bool {
        super::names::fits(self.names_of(parent).map_or(0, Names::len), 1, name.len())
    }

    /// Puts a node into the arena, names it in its parent's block, and
    /// indexes it; `None`, with nothing changed, when the parent is missing
    /// or its block has no room for the name ([`has_room`](Self::has_room)).
    /// Only links of other nodes change, so nothing is preserved: a node
    /// the snapshot must not see has a `czxid` above the snapshot's zxid,
    /// and a reused slot's old node was preserved when it was removed.
    pub(super) fn insert(
        &mut self,
        parent: u32,
        name: &str,
        data: Option<&[u8]>,
        acl: u32,
        stat: StatPersisted,
    ) -> Option<u32> {
        if !self.has_room(parent, name) {
            return None;
        }
        let block = match self.node(parent)?.links.names {
            NIL => {
                let id = match self.free_names.pop() {
                    Some(id) => id,
                    None => {
                        self.names.push(Names::default());
                        (self.names.len() - 1) as u32
                    }
                };
                if let Some(p) = self.node_mut(parent) {
                    p.links.names = id;
                }
                id
            }
            id => id,
        };
        let name_at = self.names.get_mut(block as usize)?.push(name.as_bytes())?;
        let node = Node::new(data, acl, stat, Links::under(parent, name_at));
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
        if let Some(p) = self.node_mut(parent) {
            p.links.num_children += 1;
        }
        let hash = self.hash(parent, name.as_bytes());
        self.index.insert_unique(widen(hash), IndexEntry { slot, hash }, |e| widen(e.hash));
        self.count += 1;
        Some(slot)
    }

    /// Takes out a node that is neither the root nor a parent (removing
    /// either would orphan nodes): unindexes it, drops its name from its
    /// parent's block and frees its slot. A snapshot in progress keeps the
    /// node first. The caller releases what the node refers to (its ACL
    /// id).
    pub(super) fn remove(&mut self, slot: u32) -> Option<Node> {
        if slot == ROOT || self.node(slot)?.links.num_children > 0 {
            return None;
        }
        self.preserve(slot);
        let hash = self.hash(self.node(slot)?.links.parent, self.name_of(slot));
        let node = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        self.count -= 1;
        if let Ok(entry) = self.index.find_entry(widen(hash), |e| e.slot == slot) {
            entry.remove();
        }
        let parent = node.links.parent;
        let Some(p) = self.node_mut(parent) else { return Some(node) };
        p.links.num_children -= 1;
        let (block, empty) = (p.links.names, p.links.num_children == 0);
        if empty {
            p.links.names = NIL;
        }
        let Some(names) = self.names.get_mut(block as usize) else { return Some(node) };
        if empty {
            // Its memory goes back now: a queue's parent, emptied, holds none.
            *names = Names::default();
            self.free_names.push(block);
        } else {
            names.remove(node.links.name_at);
            if names.needs_compaction() {
                self.compact(parent);
            }
        }
        Some(node)
    }

    /// Rewrites `parent`'s block without its dead entries and points each
    /// child at its entry's new offset. Each child is found by its old
    /// offset before any is moved; if one were missing (the index and the
    /// block out of step, a bug) the block is left as it is, still right
    /// for every child, rather than renumber children wrongly.
    fn compact(&mut self, parent: u32) {
        let Some(names) = self.names_of(parent) else { return };
        let slots: Option<Vec<u32>> = names.live().map(|(at, name)| self.child_at(parent, at, name)).collect();
        let Some(slots) = slots else {
            debug_assert!(false, "a live name with no node under {parent}");
            return;
        };
        let (fresh, offsets) = names.compacted();
        for (slot, at) in slots.into_iter().zip(offsets) {
            if let Some(n) = self.node_mut(slot) {
                n.links.name_at = at;
            }
        }
        let block = self.node(parent).map_or(NIL, |p| p.links.names);
        if let Some(names) = self.names.get_mut(block as usize) {
            *names = fresh;
        }
    }

    // ---- the snapshot in progress ------------------------------------------

    /// Starts a snapshot of the arena as it is now, described as of `zxid`,
    /// whose records `encode` writes, abandoning one in progress.
    pub(super) fn freeze(&mut self, zxid: i64, encode: EncodeNode) {
        self.snapshot = Some(Frozen {
            zxid,
            encode,
            next: 0,
            end: self.slots.len() as u32,
            saved: HashMap::new(),
            expected: self.count,
            emitted: 0,
        });
    }

    /// Drops the snapshot in progress.
    pub(super) fn thaw(&mut self) {
        self.snapshot = None;
    }

    #[cfg(test)]
    pub(super) fn is_frozen(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Encodes the next nodes of the snapshot in progress into `out`,
    /// stopping once `out` holds `budget` bytes or more. For each slot the
    /// record saved by an edit wins over the live node; a live node created
    /// after the snapshot began is not part of it.
    pub(super) fn encode_frozen(&mut self, out: &mut Vec<u8>, budget: usize) -> Result<Progress, SnapshotError> {
        let mut snap = self.snapshot.take().ok_or(SnapshotError::NotStarted)?;
        while snap.next < snap.end && out.len() < budget {
            let slot = snap.next;
            snap.next += 1;
            if let Some(record) = snap.saved.remove(&slot) {
                out.extend_from_slice(&record);
                snap.emitted += 1;
            } else if let Some(node) = self.node(slot).filter(|n| n.stat.czxid <= snap.zxid) {
                (snap.encode)(&self.path_of(slot), node, out);
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
    /// began, the node is encoded now, as the snapshot must see it. Only
    /// the first change saves: later ones find the record already there.
    fn preserve(&mut self, slot: u32) {
        let Some(snap) = &self.snapshot else { return };
        if slot < snap.next || slot >= snap.end || snap.saved.contains_key(&slot) {
            return;
        }
        let Some(node) = self.node(slot).filter(|n| n.stat.czxid <= snap.zxid) else { return };
        let mut record = Vec::with_capacity(96 + node.data_len());
        (snap.encode)(&self.path_of(slot), node, &mut record);
        if let Some(snap) = &mut self.snapshot {
            snap.saved.insert(slot, record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout is the memory budget (see the tree's module notes): a
    /// slot is 104 bytes, and a free slot costs no more than a full one.
    #[test]
    fn a_slot_stays_within_its_budget() {
        assert!(std::mem::size_of::<Option<Node>>() <= 104, "{}", std::mem::size_of::<Option<Node>>());
        assert_eq!(std::mem::size_of::<IndexEntry>(), 8);
    }
}
