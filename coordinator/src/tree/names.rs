//! One parent's children's names, in one block, and the view of them a
//! listing is written from.
//!
//! getChildren of a node with 100,000 children is answered by copying this
//! block, not by visiting 100,000 nodes. Each name is stored as jute writes
//! a string (a 4-byte big-endian length, then its UTF-8 bytes), in the
//! order the children were added, so a listing is the count followed by
//! the block, whatever the size of the rest of the tree. A node holds no
//! name of its own: it holds the offset of its entry here (see
//! [`Links`](super::node::Links)), and the name is stored once.
//!
//! A removed child's entry is cut off when it is the last one; any other
//! is marked dead (the top bit of its length) rather than closed up, since
//! closing it up would move every later name and renumber their nodes.
//! Once the dead bytes outnumber the live ones the arena rewrites the block
//! ([`Names::compacted`]) and renumbers the nodes it moved, so a block is
//! never much more than twice its names, and each delete pays for the
//! rewrite a constant share.
//!
//! Like `node`, this file is the tree's bottom layer: it names no other
//! part of the tree.

/// Marks a dead entry in its length field. A live length never has it:
/// a whole block is at most [`MAX_BYTES`].
const DEAD: u32 = 1 << 31;

/// The most bytes a block holds: offsets into it are `u32`, and every
/// length field must leave [`DEAD`] clear. A parent whose names would pass
/// it takes no more children (validation refuses the create).
pub const MAX_BYTES: usize = (DEAD - 1) as usize;

/// Whether a block of `len` bytes has room for `names` more entries of
/// `bytes` name bytes in all.
pub fn fits(len: usize, names: usize, bytes: usize) -> bool {
    len.saturating_add(names.saturating_mul(4)).saturating_add(bytes) <= MAX_BYTES
}

#[derive(Debug, Clone, Default)]
pub(super) struct Names {
    bytes: Vec<u8>,
    /// Bytes of dead entries, length fields included.
    dead: usize,
}

impl Names {
    /// Appends `name`, returning its entry's offset; `None` if the block
    /// has no room for it (it is then unchanged).
    pub(super) fn push(&mut self, name: &[u8]) -> Option<u32> {
        if !fits(self.bytes.len(), 1, name.len()) {
            return None;
        }
        let at = self.bytes.len() as u32;
        self.bytes.extend_from_slice(&(name.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(name);
        Some(at)
    }

    /// The entry at `at`: its name, and whether it is live. An offset that
    /// is not an entry's reads as an empty, dead one.
    fn entry(&self, at: u32) -> (&[u8], bool) {
        let at = at as usize;
        let Some(field) = self.bytes.get(at..at + 4) else { return (&[], false) };
        let field = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
        let len = (field & !DEAD) as usize;
        let name = self.bytes.get(at + 4..at + 4 + len).unwrap_or_default();
        (name, field & DEAD == 0)
    }

    /// The name of the entry at `at`.
    pub(super) fn get(&self, at: u32) -> &[u8] {
        self.entry(at).0
    }

    /// Removes the entry at `at`: cut off if it is the last, else marked
    /// dead.
    pub(super) fn remove(&mut self, at: u32) {
        let (name, live) = self.entry(at);
        if !live {
            return;
        }
        let end = at as usize + 4 + name.len();
        if end == self.bytes.len() {
            self.bytes.truncate(at as usize);
        } else {
            let len = name.len();
            let field = (len as u32 | DEAD).to_be_bytes();
            self.bytes[at as usize..at as usize + 4].copy_from_slice(&field);
            self.dead += 4 + len;
        }
    }

    /// Whether dead entries take more room than live ones, so that a
    /// rewrite is due.
    pub(super) fn needs_compaction(&self) -> bool {
        self.dead > self.bytes.len() - self.dead
    }

    /// The block's length, dead entries included: what validation counts
    /// against [`MAX_BYTES`].
    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The live entries, in order: each one's offset and name.
    pub(super) fn live(&self) -> impl Iterator<Item = (u32, &[u8])> + '_ {
        let mut at = 0usize;
        std::iter::from_fn(move || loop {
            if at + 4 > self.bytes.len() {
                return None;
            }
            let (name, live) = self.entry(at as u32);
            let here = at as u32;
            at += 4 + name.len();
            if live {
                return Some((here, name));
            }
        })
    }

    /// The live entries alone, in the same order, in a block sized to
    /// them, and the new offset of each (in the order of [`live`]).
    ///
    /// [`live`]: Self::live
    pub(super) fn compacted(&self) -> (Names, Vec<u32>) {
        let mut bytes = Vec::with_capacity(self.bytes.len() - self.dead);
        let mut offsets = Vec::new();
        for (_, name) in self.live() {
            offsets.push(bytes.len() as u32);
            bytes.extend_from_slice(&(name.len() as u32).to_be_bytes());
            bytes.extend_from_slice(name);
        }
        (Names { bytes, dead: 0 }, offsets)
    }

    /// The live entries, as jute writes a vector's strings: the whole block
    /// when none is dead, else each run of live entries.
    fn write_live(&self, out: &mut Vec<u8>) {
        if self.dead == 0 {
            out.extend_from_slice(&self.bytes);
            return;
        }
        let mut run: Option<(usize, usize)> = None;
        for (at, name) in self.live() {
            let (at, end) = (at as usize, at as usize + 4 + name.len());
            run = match run {
                Some((start, stop)) if stop == at => Some((start, end)),
                Some((start, stop)) => {
                    out.extend_from_slice(&self.bytes[start..stop]);
                    Some((at, end))
                }
                None => Some((at, end)),
            };
        }
        if let Some((start, stop)) = run {
            out.extend_from_slice(&self.bytes[start..stop]);
        }
    }
}

/// A node's children's names, as readers see them: in no promised order
/// (the order they were added, until a snapshot is read back), as
/// ZooKeeper, which keeps them in a hash set, promises none.
#[derive(Clone, Copy)]
pub struct Children<'t> {
    names: Option<&'t Names>,
    count: usize,
}

impl<'t> Children<'t> {
    pub(super) fn new(names: Option<&'t Names>, count: usize) -> Self {
        Children { names, count }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The names. Each entered the tree as a `&str`, so none falls back to
    /// "".
    pub fn iter(&self) -> impl Iterator<Item = &'t str> + 't {
        self.names.into_iter().flat_map(Names::live).map(|(_, n)| std::str::from_utf8(n).unwrap_or_default())
    }

    /// The bytes [`write`](Self::write) writes.
    pub fn encoded_len(&self) -> usize {
        4 + self.names.map_or(0, |n| n.bytes.len() - n.dead)
    }

    /// The names as jute writes a vector of strings (getChildren's reply
    /// body): the count, then each name. A copy of the block, not a walk of
    /// the nodes.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.count as i32).to_be_bytes());
        if let Some(names) = self.names {
            names.write_live(out);
        }
    }

    /// The length of the block behind the listing, dead entries included:
    /// see [`fits`].
    pub fn block_len(&self) -> usize {
        self.names.map_or(0, Names::len)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use zk_wire::codec::Jute;
    use zk_wire::records::ChildrenResponse;

    use super::*;

    proptest! {
        /// Whatever is pushed and removed, the block lists exactly the
        /// names still in, in the order they were pushed, writes them as
        /// jute writes the same list, stays within twice its names once
        /// compacted when due, and keeps every live offset pointing at its
        /// name.
        #[test]
        fn a_block_lists_what_is_in_it(ops in prop::collection::vec((any::<bool>(), "[a-z]{0,12}", any::<prop::sample::Index>()), 0..200)) {
            let mut block = Names::default();
            let mut model: Vec<(u32, String)> = Vec::new();
            for (add, name, which) in ops {
                if add || model.is_empty() {
                    let at = block.push(name.as_bytes()).expect("room");
                    model.push((at, name));
                } else {
                    let (at, _) = model.remove(which.index(model.len()));
                    block.remove(at);
                    if block.needs_compaction() {
                        let (fresh, offsets) = block.compacted();
                        prop_assert_eq!(offsets.len(), model.len());
                        for ((at, _), new) in model.iter_mut().zip(offsets) {
                            *at = new;
                        }
                        block = fresh;
                    }
                }
                for (at, name) in &model {
                    prop_assert_eq!(block.get(*at), name.as_bytes());
                }
                let listed: Vec<(u32, &[u8])> = block.live().collect();
                let expected: Vec<(u32, &[u8])> = model.iter().map(|(at, n)| (*at, n.as_bytes())).collect();
                prop_assert_eq!(listed, expected);
                let live: usize = model.iter().map(|(_, n)| 4 + n.len()).sum();
                prop_assert!(block.len() - block.dead == live);
                prop_assert!(!block.needs_compaction(), "compacted when due: at most twice its names");
                let view = Children::new(Some(&block), model.len());
                let mut ours = Vec::new();
                view.write(&mut ours);
                let mut jute = Vec::new();
                ChildrenResponse { children: model.iter().map(|(_, n)| n.clone()).collect() }.write(&mut jute);
                prop_assert_eq!(ours.len(), view.encoded_len());
                prop_assert_eq!(ours, jute);
            }
        }
    }

    #[test]
    fn a_block_knows_its_limit_and_reads_no_offset_out_of_it() {
        assert!(fits(MAX_BYTES - 5, 1, 1));
        assert!(!fits(MAX_BYTES - 4, 1, 1));
        assert!(!fits(usize::MAX, usize::MAX, usize::MAX), "no overflow");
        let mut block = Names::default();
        assert_eq!(block.push(b"a"), Some(0));
        assert_eq!(block.get(0), b"a");
        assert_eq!(block.get(1), b"", "not an entry's offset");
        assert_eq!(block.get(u32::MAX), b"");
    }
}
