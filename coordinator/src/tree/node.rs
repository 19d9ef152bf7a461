//! One znode as the arena stores it: its content and its links.
//!
//! A node holds its content (stat, ACL id, data) and its [`Links`] to
//! other slots and to its name, which its parent's block of children's
//! names holds (see `names`). The content is changed through
//! [`Arena::edit`](super::arena::Arena::edit), which keeps a snapshot in
//! progress right; the links are the arena's to change.
//!
//! This is the tree's bottom layer (with `names`): it names no other part
//! of the tree, so
//! the arena (which owns nodes) and the snapshot codec (which encodes
//! them) can both build on it. The view readers get, which resolves a
//! node's ACL and children through the tree, is
//! [`NodeRef`](super::NodeRef), beside the tree.

use zk_wire::records::Stat;

use crate::txn::NodeKind;

/// "No node" in a slot link.
pub(super) const NIL: u32 = u32::MAX;

/// Where a node sits: its parent, where its name is in the parent's block
/// of names, its own block of children's names, and how many children it
/// has. Adding a child appends its name to the parent's block; removing
/// one marks its entry dead (see `names`). The children themselves are
/// found through the path index by (parent, name), never by walking
/// nodes: a listing reads the block alone.
///
/// Only the arena writes these (in `Arena::insert`, `Arena::remove` and
/// the compaction of a block, which keep the blocks and the path index in
/// step); the rest of the tree reads a node's parent and child count
/// through the methods. The type lives here, not in the arena, because a
/// node embeds it: were it the arena's, the arena and the node would each
/// need the other.
#[derive(Debug, Clone)]
pub(super) struct Links {
    pub(super) parent: u32,
    /// The offset of the node's entry in its parent's block of names.
    pub(super) name_at: u32,
    /// The arena's id of the block of this node's children's names; `NIL`
    /// while it has none.
    pub(super) names: u32,
    pub(super) num_children: u32,
}

impl Links {
    /// The links of a node just added under `parent`, its name at
    /// `name_at` in the parent's block: no children yet.
    pub(super) fn under(parent: u32, name_at: u32) -> Self {
        Links { parent, name_at, names: NIL, num_children: 0 }
    }

    /// The parent's slot; `None` for the root.
    pub(super) fn parent(&self) -> Option<u32> {
        (self.parent != NIL).then_some(self.parent)
    }

    pub(super) fn num_children(&self) -> u32 {
        self.num_children
    }
}

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
    pub stat: StatPersisted,
    /// Empty data takes no allocation. The name is not here but in the
    /// parent's block: a listing reads names without touching nodes.
    data: Box<[u8]>,
    /// Null data is distinct from empty: a node created with null data
    /// reads back as null.
    null_data: bool,
    /// An id in the tree's ACL table, which counts its users: whoever
    /// replaces it releases the old id.
    pub(super) acl: u32,
    /// Parent, name and children, changed only by the arena (see
    /// [`Links`]).
    pub(super) links: Links,
}

impl Node {
    pub(super) fn new(data: Option<&[u8]>, acl: u32, stat: StatPersisted, links: Links) -> Self {
        Node { stat, data: data.unwrap_or_default().into(), null_data: data.is_none(), acl, links }
    }

    pub fn data(&self) -> Option<&[u8]> {
        (!self.null_data).then_some(&*self.data)
    }

    pub(super) fn data_len(&self) -> usize {
        self.data.len()
    }

    pub(super) fn set_data(&mut self, data: Option<&[u8]>) {
        self.data = data.unwrap_or_default().into();
        self.null_data = data.is_none();
    }

    pub fn num_children(&self) -> usize {
        self.links.num_children() as usize
    }

    pub fn kind(&self) -> NodeKind {
        NodeKind::from_owner(self.stat.ephemeral_owner)
    }

    /// The stat as clients see it.
    pub fn stat(&self) -> Stat {
        let num_children = self.links.num_children() as i32;
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
